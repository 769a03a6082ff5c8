"""``kt.app``: an arbitrary process on the pods, reached through the pods' servers."""

from __future__ import annotations

import asyncio
import io
import json
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


ONE_REQUEST_SERVER = """
import os, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["HOTPOD_APP_PORT"])))
s.listen()
print("one-request server up", flush=True)
while True:
    c, _ = s.accept()
    path = c.recv(65536).split(b" ")[1]
    c.sendall(b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\nconnection: close\\r\\n\\r\\nok")
    c.close()
    if path != b"/health":
        sys.exit(3)  # exits after its first real request
"""


async def _proxied(runner: AppRunner, path: str) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"method": "GET", "path": "/app" + path, "headers": [], "query_string": b""}
    await runner.proxy(scope, receive, send, 1 << 20)
    return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent)


def test_an_app_that_exits_is_started_again_after_a_back_off(tmp_path, monkeypatch):
    import hotpod.runtime.apps as apps

    monkeypatch.setattr(apps, "RESTART_MIN", 2.0)  # long enough to see the back-off under load
    monkeypatch.setenv("HOTPOD_SERVICE", "one-shot")
    log = io.StringIO()
    runner = AppRunner(tmp_path, "one-shot-0", 0, log)
    spec = {"command": ["python", "-c", ONE_REQUEST_SERVER], "health": "/health"}

    async def go() -> None:
        first = await runner.replace(spec, tmp_path, dict(os.environ), sys.executable, 10)
        old_pid = first.pid
        assert (await _proxied(runner, "/x"))[0] == 200  # its first request: then it exits
        await asyncio.wait_for(first.proc.wait(), 5)
        status, headers, body = await _proxied(runner, "/x")  # in the back-off: refused at once
        assert status == 503 and headers[b"x-hotpod-app-down"] == b"1"
        message = json.loads(body)["error"]
        assert "the app 'one-shot' on pod one-shot-0 is not running" in message
        assert "exited with code 3" in message
        state = runner.state()
        assert state is not None and (state["running"], state["last_exit"]) == (False, 3)
        deadline = time.monotonic() + 10
        while not (runner.state() or {}).get("ready"):  # started again, on the same port
            assert time.monotonic() < deadline, log.getvalue()
            await asyncio.sleep(0.05)
        assert runner.current is first and first.pid != old_pid and first.restarts == 1
        assert (await _proxied(runner, "/x"))[0] == 200
        await runner.stop()

    asyncio.run(go())
    text = log.getvalue()
    assert "the app exited with code 3; starting it again in 2.0 s (restart 1)" in text
    assert "the app is back" in text and text.count("one-request server up") == 2


def test_the_handle_raises_while_the_app_is_down():
    import http.server
    import threading

    from hotpod.backends import PodInfo, ServiceInfo
    from hotpod.client import PodClient

    class Down(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # what a pod answers while its app is down
            body = b'{"error": "the app \'x\' on pod x-0 is not running: it exited with code 3"}'
            self.send_response(503)
            self.send_header("x-hotpod-app-down", "1")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Down)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pod = PodInfo("x-0", 0, f"http://127.0.0.1:{server.server_address[1]}", "running")
        client = PodClient("x", "tok")
        handle = kt.RemoteApp(ServiceInfo("x", "tok", 1, (pod,), 0.0), client)
        with pytest.raises(kt.CallError, match=r"'x' on pod x-0 is not running.*code 3"):
            handle.get("/hello")
        client.close()
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_an_app_that_crashes_is_restarted_and_the_handle_says_so_meanwhile(
    hotpod_home, tmp_path, monkeypatch
):
    from click.testing import CliRunner

    from hotpod.cli import main

    project = _project(tmp_path, "hello v1")
    (project / "hp_crash_driver.py").write_text(
        "import hotpod as kt\n\n\n"
        "def deploy():\n"
        "    command = 'python -m uvicorn hp_app_mod:app --port $HOTPOD_APP_PORT'\n"
        "    app = kt.app(command, name='crash-app', health='/health')\n"
        "    return app.to(kt.Compute(cpus='0.5', launch_timeout=60))\n"
    )
    monkeypatch.syspath_prepend(str(project))
    import hp_crash_driver

    handle = hp_crash_driver.deploy()
    assert handle.get("/bye").text == "bye"  # the app exits with code 3 right after
    refused: list[str] = []
    deadline = time.monotonic() + 20
    while True:  # refused at once while it is down, then answered again
        assert time.monotonic() < deadline, refused
        try:
            if handle.get("/hello", timeout=5).text == "hello v1" and refused:
                break
        except kt.CallError as exc:
            refused.append(str(exc))
        time.sleep(0.02)
    assert "the app 'crash-app' on pod crash-app-0 is not running" in refused[0]
    assert "exited with code 3" in refused[0]

    shown = CliRunner().invoke(main, ["describe", "crash-app"])
    assert "App on crash-app-0: running (pid" in shown.output
    assert "1 restarts, last exit code 3" in shown.output
    logs = CliRunner().invoke(main, ["logs", "crash-app"]).output
    assert "the app exited with code 3; starting it again in 0.2 s (restart 1)" in logs
    assert logs.count("app_code starting on port") == 2
    assert handle.teardown() is True


def test_check_reports_an_app_that_exited():
    from hotpod.diagnose import PodCheck, _diagnose

    app = {"running": False, "ready": False, "restarts": 2, "last_exit": 3, "restart_in": 0.5}
    pc = PodCheck("a-0", "running", 0, None, True, True, "l1", None, [], app=app)
    _diagnose("a", "http://127.0.0.1:1", pc)
    assert pc.problem is not None and "the app exited with code 3 (2 restarts)" in pc.problem
    assert pc.fix is not None and "hotpod logs a --pod a-0" in pc.fix


FASTAPI_APP = """
from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()
print("fastapi app starting", flush=True)


class Item(BaseModel):
    name: str
    qty: int = 1


@app.get("/items/{item_id}")
def read_item(item_id: int, q: str | None = None):
    print(f"fastapi app: read item {item_id}", flush=True)
    return {"item_id": item_id, "q": q}


@app.post("/items")
def create_item(item: Item):
    return {"created": item.name, "qty": item.qty}
"""


@pytest.mark.slow
def test_a_fastapi_app_answers_through_its_handle_and_logs(hotpod_home, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from hotpod.cli import main

    project = tmp_path / "fastapiproj"
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\nname='fastapiproj'\n")
    (project / "hp_fastapi_app.py").write_text(FASTAPI_APP)
    (project / "hp_fastapi_driver.py").write_text(
        "import hotpod as kt\n\n\n"
        "def deploy():\n"
        "    command = 'python -m uvicorn hp_fastapi_app:app --port $HOTPOD_APP_PORT'\n"
        "    app = kt.app(command, name='fastapi-app', health='/docs')\n"
        "    return app.to(kt.Compute(cpus='0.5', launch_timeout=60))\n"
    )
    monkeypatch.syspath_prepend(str(project))
    import hp_fastapi_driver

    handle = hp_fastapi_driver.deploy()
    try:
        assert handle.get("/items/7", params={"q": "x"}).json() == {"item_id": 7, "q": "x"}
        assert handle.post("/items", json={"name": "gpu", "qty": 2}).json() == {
            "created": "gpu",
            "qty": 2,
        }
        invalid = handle.post("/items", json={"qty": "many"})  # FastAPI's own validation
        assert invalid.status_code == 422
        logs = CliRunner().invoke(main, ["logs", "fastapi-app"]).output
        assert "fastapi app starting" in logs and "fastapi app: read item 7" in logs
    finally:
        handle.teardown()
