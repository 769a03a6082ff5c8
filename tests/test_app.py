"""``kt.app``: an arbitrary process on the pods, reached through the pods' servers."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

import hotpod as kt
from hotpod.module import app_name
from hotpod.runtime.apps import AppError, AppRunner, app_env, argv_of, check_app_spec
from hotpod.runtime.launches import _check_spec

HALF = kt.Compute(cpus="0.5")
APP_SOURCE = (Path(__file__).parent / "app_code.py").read_text()


# -- pure pieces --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "name"),
    [
        ("python -m uvicorn main:app --port $PORT", "uvicorn"),
        (["python3", "train.py", "--epochs", "3"], "train"),
        ("/usr/bin/env FOO=1 my_server", "env"),
        ("Serve_Model", "serve-model"),
        (["python"], "app"),
    ],
)
def test_app_name_is_the_first_real_word_as_a_dns_label(command, name):
    assert app_name(command) == name


def test_argv_and_env():
    assert argv_of("echo $PORT", "/py") == ["/bin/sh", "-c", "echo $PORT"]
    assert argv_of(["python", "-m", "x"], "/venv/bin/python") == ["/venv/bin/python", "-m", "x"]
    assert argv_of(["./serve", "python"], "/py") == ["./serve", "python"]
    env = app_env({"PATH": "/usr/bin", "HOTPOD_TOKEN": "t", "A": "1"}, {"B": 2}, 8123, "/v", "/c")
    assert env["HOTPOD_APP_PORT"] == env["PORT"] == "8123"
    assert env["PATH"] == "/v" + os.pathsep + "/usr/bin"
    assert env["PYTHONPATH"] == "/c" and env["B"] == "2" and "HOTPOD_TOKEN" not in env


def test_launch_specs_of_kind_app_are_checked():
    good = {"kind": "app", "code": {"manifest": None}, "app": {"command": ["x"]}, "timeout": 5}
    _check_spec(good)
    for bad, match in [
        ({"command": []}, "non-empty"),
        ({"command": "  "}, "empty"),
        ({"command": "x", "port": 70000}, "port"),
        ({"command": "x", "health": "health"}, "health"),
    ]:
        with pytest.raises(ValueError, match=match):
            check_app_spec(bad)
    with pytest.raises(ValueError, match="timeout"):
        _check_spec({**good, "timeout": -1})
    with pytest.raises(ValueError, match="'app' object"):
        _check_spec({"kind": "app", "code": {}})


def test_app_arguments_are_checked():
    with pytest.raises(kt.SpecError, match="command="):
        kt.app([])
    with pytest.raises(kt.SpecError, match="port="):
        kt.app("x", port=0)
    with pytest.raises(kt.SpecError, match="health="):
        kt.app("x", health="ok")
    with pytest.raises(kt.SpecError, match="name="):
        kt.app("x", name="Bad_Name")
    with pytest.raises(kt.SpecError, match=r"HOTPOD_APP_PORT"):
        kt.app("x", port=8000).to(kt.Compute(cpus="0.5", replicas=2))


def test_runner_reports_an_app_that_exits_with_its_output(tmp_path):
    log = io.StringIO()
    runner = AppRunner(tmp_path, "p-0", 0, log)
    command = ["python", "-c", "print('missing config'); raise SystemExit(3)"]

    async def go() -> None:
        with pytest.raises(AppError, match="exited with code 3") as info:
            await runner.replace(
                {"command": command}, tmp_path, dict(os.environ), sys.executable, 10
            )
        assert "missing config" in info.value.tail
        assert runner.current is None

    asyncio.run(go())
    assert "rank=0 pod=p-0 | missing config" in log.getvalue()
    assert not (tmp_path / ".hotpod" / "app.pids").exists()


# -- end to end ---------------------------------------------------------------------------------


def _project(tmp_path: Path, greeting: str) -> Path:
    project = tmp_path / "appproj"
    project.mkdir(exist_ok=True)
    (project / "pyproject.toml").write_text("[project]\nname='appproj'\n")
    (project / "hp_app_mod.py").write_text(APP_SOURCE.replace("hello v1", greeting))
    (project / "hp_app_driver.py").write_text(
        "import hotpod as kt\n\n\n"
        "def deploy():\n"
        "    command = 'python -m uvicorn hp_app_mod:app --port $HOTPOD_APP_PORT'\n"
        "    app = kt.app(command, name='hello-app', health='/health')\n"
        "    return app.to(kt.Compute(cpus='0.5', launch_timeout=60))\n"
    )
    return project


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_app_answers_logs_redeploys_and_tears_down(hotpod_home, tmp_path, monkeypatch):
    project = _project(tmp_path, "hello v1")
    monkeypatch.syspath_prepend(str(project))
    import hp_app_driver

    handle = hp_app_driver.deploy()
    assert isinstance(handle, kt.RemoteApp)
    assert handle.get("/hello").text == "hello v1"
    found = kt.lookup(handle.name)  # a handle to the running app, from its name
    assert isinstance(found, kt.RemoteApp) and found.get("/hello").text == "hello v1"
    echoed = handle.post("/echo", json={"x": [1, 2]}, params={"q": "a b"}).json()
    assert echoed["body"] == {"x": [1, 2]} and echoed["query"] == {"q": "a b"}
    assert echoed["has_auth"] is False  # the service token stops at the pod's server
    pid = echoed["pid"]
    assert httpx.get(f"{handle.url}/hello", headers=handle.headers).text == "hello v1"
    assert httpx.get(f"{handle.url}/hello").status_code == 401
    assert handle.get("/nope").status_code == 404  # the app's own answer

    logs = subprocess.run(
        [sys.executable, "-m", "hotpod.cli", "logs", "hello-app"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "app_code starting on port" in logs and "app_code: serving /hello" in logs

    again = hp_app_driver.deploy()  # nothing changed: the same process keeps serving
    assert again.post("/echo", json={}).json()["pid"] == pid

    _project(tmp_path, "hello v2")
    again = hp_app_driver.deploy()
    assert again.get("/hello").text == "hello v2"
    new_pid = again.post("/echo", json=1).json()["pid"]
    assert new_pid != pid and _gone(pid)

    (project / "hp_app_mod.py").write_text("raise RuntimeError('broken app module')\n")
    with pytest.raises(kt.DeployError, match="broken app module"):
        hp_app_driver.deploy()
    assert again.get("/hello").text == "hello v2"  # the previous process still serves

    assert again.teardown() is True
    assert _gone(new_pid)


@pytest.mark.slow
def test_an_app_that_exits_at_once_fails_the_deploy_with_its_output(hotpod_home):
    command = ["python", "-c", "print('boom: no config file'); raise SystemExit(3)"]
    with pytest.raises(kt.DeployError, match="exited with code 3") as info:
        kt.app(command, name="quitter").to(kt.Compute(cpus="0.5", launch_timeout=30))
    assert "boom: no config file" in str(info.value)
    kt.teardown("quitter")
