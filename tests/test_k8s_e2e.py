"""End to end on the Kubernetes backend: a fake API server, pods as local processes
(``tests/k8sfake``), and the backend's real code path: apply, watch, ship code, launch, call,
broadcast, redeploy, list/describe/logs, teardown, in both reach modes (pod IPs, API proxy)."""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import CliRunner

import hotpod as kt
from hotpod.backends import get_backend
from hotpod.config import reload_settings

pytestmark = pytest.mark.slow

SMALL = {"cpus": "0.1", "memory": "256Mi", "launch_timeout": 60}
APP_V1 = """
import os

def hello(x):
    print(f"hello {x} from {os.environ.get('HOTPOD_POD_NAME')}")
    return {"v": 1, "x": x, "pod": os.environ.get("HOTPOD_POD_NAME")}

class Counter:
    def __init__(self, start):
        self.n = start

    def incr(self):
        self.n += 1
        return self.n
"""


@pytest.fixture(params=["direct", "proxy"])
def cluster(
    request: pytest.FixtureRequest,
    fake_cluster: Any,
    hotpod_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Any]:
    monkeypatch.setenv("HOTPOD_BACKEND", "kubernetes")
    monkeypatch.setenv("HOTPOD_K8S_REACH", request.param)
    monkeypatch.delenv("HOTPOD_NAMESPACE", raising=False)
    reload_settings()
    try:
        yield fake_cluster
    finally:
        backend = get_backend()
        try:
            backend.teardown_all()
        finally:
            backend.close()  # type: ignore[attr-defined]
            monkeypatch.undo()
            reload_settings()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, ModuleType]]:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "pyproject.toml").write_text("[project]\nname='proj'\n")
    name = f"k8s_app_{tmp_path.name.replace('-', '_')}"
    (root / f"{name}.py").write_text(APP_V1)
    monkeypatch.syspath_prepend(str(root))
    module = importlib.import_module(name)
    yield root / f"{name}.py", module
    sys.modules.pop(name, None)


def _done(name: str) -> None:
    backend = get_backend()
    try:
        backend.teardown(name)
    finally:
        backend.close()  # type: ignore[attr-defined]


def _gone(cluster: Any, service: str, timeout: float = 10.0) -> bool:
    """No pod of ``service`` left, and no container process (the test's only service)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = cluster.pods(cluster.namespace, {"hotpod.dev/service": service})
        if not pods and not cluster.processes():
            return True
        time.sleep(0.1)
    return False


def test_deploy_broadcast_redeploy_and_teardown(
    cluster: Any, project: tuple[Path, ModuleType]
) -> None:
    path, module = project
    remote = kt.fn(module.hello, name="hello").to(kt.Compute(replicas=2, **SMALL))
    results = remote(7)
    pods = remote.pods
    assert len(pods) == 2 and len(set(pods)) == 2
    assert [r["pod"] for r in results] == pods  # one result per pod, in rank order
    assert {r["v"] for r in results} == {1} and {r["x"] for r in results} == {7}

    path.write_text(APP_V1.replace('"v": 1', '"v": 2'))
    importlib.reload(module)
    again = kt.fn(module.hello, name="hello").to(kt.Compute(replicas=2, **SMALL))
    assert again.pods == pods  # the code changed, the pods stayed
    assert [r["v"] for r in again(8)] == [2, 2]

    assert kt.teardown("hello") == ["hello"]
    assert _gone(cluster, "hello")
    with pytest.raises(kt.ServiceNotFoundError):
        kt.lookup("hello")


def test_a_class_keeps_its_state(cluster: Any, project: tuple[Path, ModuleType]) -> None:
    _, module = project
    counter = kt.cls(module.Counter, name="counter").to(
        kt.Compute(replicas=1, **SMALL), init_args={"start": 10}
    )
    assert counter.incr() == 11
    assert counter.incr() == 12
    same = kt.cls(module.Counter, name="counter").to(
        kt.Compute(replicas=1, **SMALL), init_args={"start": 10}
    )
    assert same.incr() == 13  # an unchanged redeploy keeps the instance


def test_list_describe_and_logs_through_the_api(
    cluster: Any, project: tuple[Path, ModuleType]
) -> None:
    from hotpod.cli import main

    _, module = project
    remote = kt.fn(module.hello, name="greeter").to(kt.Compute(replicas=1, **SMALL))
    remote("logged")
    runner = CliRunner()
    deadline = time.monotonic() + 5
    while True:  # (Ready is the readiness probe's word: it may lag the first answer a little)
        listed = runner.invoke(main, ["list"])
        if "1/1" in listed.output or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert listed.exit_code == 0 and "greeter" in listed.output and "1/1" in listed.output
    described = runner.invoke(main, ["describe", "greeter"])
    assert described.exit_code == 0, described.output
    assert "Backend:   kubernetes" in described.output and remote.pods[0] in described.output
    assert "ready" in described.output
    deadline = time.monotonic() + 5
    while True:
        logs = runner.invoke(main, ["logs", "greeter", "--tail", "50"])
        if "hello logged from" in logs.output or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert logs.exit_code == 0 and "hello logged from" in logs.output
    assert runner.invoke(main, ["teardown", "greeter"]).exit_code == 0
    assert "greeter" not in runner.invoke(main, ["list"]).output


def test_a_gpu_pod_left_pending_fails_the_deploy_promptly(
    fake_cluster: Any, hotpod_home: Path, monkeypatch: pytest.MonkeyPatch, project: Any
) -> None:
    monkeypatch.setenv("HOTPOD_BACKEND", "kubernetes")
    reload_settings()
    fake_cluster.set_node(gpus=0)
    _, module = project
    t0 = time.monotonic()
    try:
        with pytest.raises(kt.DeployError) as caught:
            kt.fn(module.hello, name="gpu-job").to(
                kt.Compute(gpus=1, cpus="0.1", launch_timeout=16)
            )
        message = str(caught.value)
        assert "gpu-job-" in message and "is Pending" in message
        assert "Insufficient nvidia.com/gpu" in message
        assert time.monotonic() - t0 < 12  # after the grace (16 s / 4), not at the timeout
    finally:
        _done("gpu-job")
        monkeypatch.undo()
        reload_settings()


def test_an_image_that_cannot_be_pulled_fails_the_deploy(
    fake_cluster: Any, hotpod_home: Path, monkeypatch: pytest.MonkeyPatch, project: Any
) -> None:
    monkeypatch.setenv("HOTPOD_BACKEND", "kubernetes")
    reload_settings()
    fake_cluster.missing_images.add("my-team/nope:1")
    _, module = project
    try:
        with pytest.raises(kt.DeployError, match=r"cannot pull its image 'my-team/nope:1'"):
            kt.fn(module.hello, name="no-image").to(
                kt.Compute(image=kt.Image("my-team/nope:1"), cpus="0.1", launch_timeout=30)
            )
    finally:
        _done("no-image")
        monkeypatch.undo()
        reload_settings()


def test_a_crash_loop_fails_the_deploy_with_the_last_log_lines(
    fake_cluster: Any, hotpod_home: Path, monkeypatch: pytest.MonkeyPatch, project: Any
) -> None:
    monkeypatch.setenv("HOTPOD_BACKEND", "kubernetes")
    reload_settings()
    _, module = project
    broken = {"PYTHONHOME": "/nonexistent"}  # the container's python cannot even start
    try:
        with pytest.raises(kt.DeployError) as caught:
            kt.fn(module.hello, name="crashy").to(
                kt.Compute(cpus="0.1", launch_timeout=30, env_vars=broken)
            )
        message = str(caught.value)
        assert "crashy-" in message and "keeps crashing" in message
        assert "encodings" in message  # the last lines of its log
    finally:
        _done("crashy")
        monkeypatch.undo()
        reload_settings()


def test_a_missing_secret_fails_the_deploy(
    fake_cluster: Any, hotpod_home: Path, monkeypatch: pytest.MonkeyPatch, project: Any
) -> None:
    monkeypatch.setenv("HOTPOD_BACKEND", "kubernetes")
    reload_settings()
    _, module = project
    secret = kt.Secret("not-in-the-cluster", values={"NOPE": "1"})
    try:
        with pytest.raises(kt.DeployError, match="CreateContainerConfigError"):
            kt.fn(module.hello, name="no-secret").to(
                kt.Compute(cpus="0.1", launch_timeout=30, secrets=[secret])
            )
    finally:
        _done("no-secret")
        monkeypatch.undo()
        reload_settings()
