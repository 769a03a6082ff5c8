"""``hotpod check``'s diagnosis, against a fake backend and fake pod answers."""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from hotpod import diagnose, services
from hotpod.backends.base import Backend, Plan, PodInfo, ServiceInfo
from hotpod.loglines import LogFilter, LogLine, parse


class FakeBackend(Backend):
    name = "fake"

    def __init__(self, pods: list[PodInfo], replicas: int | None = None) -> None:
        self.info = ServiceInfo("svc", "token", replicas or len(pods), tuple(pods), created_at=0.0)

    def store(self) -> Any:
        raise NotImplementedError

    def check(self, plan: Plan) -> None: ...

    def apply(self, plan: Plan) -> ServiceInfo:
        raise NotImplementedError

    def get(self, name: str) -> ServiceInfo:
        return self.info

    def list(self) -> builtins.list[ServiceInfo]:
        return [self.info]

    def teardown(self, name: str, volumes: bool = False) -> bool:
        return False

    def teardown_all(self) -> builtins.list[str]:
        return []

    def logs(
        self,
        name: str,
        pod: str | None = None,
        follow: bool = False,
        tail: int | None = None,
        keep: LogFilter | None = None,
    ) -> Iterator[LogLine]:
        return iter([parse(pod or "svc-0", f"last words of {pod}")])


def pod(rank: int, status: str = "running", restarts: int = 0, last_exit: int | None = None):
    return PodInfo(
        f"svc-{rank}", rank, f"http://127.0.0.1:{9000 + rank}", status, restarts, 1, last_exit
    )


def run(monkeypatch: pytest.MonkeyPatch, backend: FakeBackend, answers: list[dict[str, Any]]):
    monkeypatch.setattr(services, "pod_info", lambda info: answers)
    return diagnose.check("svc", backend)


def test_healthy(monkeypatch: pytest.MonkeyPatch) -> None:
    ok = {"ready": True, "launch_id": "l1", "launch_error": None}
    c = run(monkeypatch, FakeBackend([pod(0), pod(1)]), [ok, ok])
    assert c.healthy and c.ready == 2
    assert all(p.problem is None for p in c.pods)


def test_failed_setup_step_names_the_step_and_keeps_its_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    error = {
        "launch_id": "l2",
        "phase": "setup",
        "step": "run_bash echo boom-output; exit 3",
        "reason": "exit code 3",
        "message": "setup step 1/1 (run_bash echo boom-output; exit 3) failed: exit code 3",
        "tail": "boom-output",
    }
    c = run(
        monkeypatch,
        FakeBackend([pod(0)]),
        [{"ready": False, "launch_id": None, "launch_error": error}],
    )
    (p,) = c.pods
    assert not c.healthy
    assert p.problem == (
        "launch l2 failed at setup step 'run_bash echo boom-output; exit 3': exit code 3"
    )
    assert p.detail == "boom-output"
    assert "fix that step of the Image" in (p.fix or "")
    assert p.log_tail == ["pod=svc-0 | last words of svc-0"]


def test_failed_redeploy_while_the_old_launch_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    error = {"launch_id": "l2", "phase": "import", "message": "boom", "traceback": "Traceback"}
    c = run(
        monkeypatch,
        FakeBackend([pod(0)]),
        [{"ready": True, "launch_id": "l1", "launch_error": error}],
    )
    (p,) = c.pods
    assert p.problem == "launch l2 failed importing the code: boom"
    assert p.detail == "Traceback" and "meanwhile the pod serves launch l1" in (p.fix or "")


def test_crash_looping_silent_and_empty_pods(monkeypatch: pytest.MonkeyPatch) -> None:
    pods = [pod(0, "restarting", restarts=4, last_exit=1), pod(1), pod(2)]
    answers: list[dict[str, Any]] = [{}, {}, {"ready": False, "launch_id": None}]
    c = run(monkeypatch, FakeBackend(pods, replicas=4), answers)
    crash, silent, empty = c.pods
    assert crash.problem == "the pod is restarting (4 restarts, last exit code 1)"
    assert "keeps exiting" in (crash.fix or "")
    assert silent.problem is not None and "does not answer" in silent.problem
    assert empty.problem == "the pod serves no code yet"
    assert c.problems == ["3 of 4 pods exist"]


def test_pods_on_different_launches(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [{"ready": True, "launch_id": "l1"}, {"ready": True, "launch_id": "l2"}]
    c = run(monkeypatch, FakeBackend([pod(0), pod(1)]), answers)
    assert not c.healthy
    assert c.problems == ["the pods serve different launches (l1, l2)"]


def test_wait_ready_returns_the_pods_as_the_backend_sees_them_once_they_answer() -> None:
    """A Kubernetes pod answers through the API server's proxy before apply() has read its IP
    back: the peers of a distributed pool come from what wait_ready returns, so it must be the
    backend's view after the pods answered, addresses included (the Ray head's address was the
    API server's when every pod answered within the first second)."""
    from hotpod import deploy
    from hotpod.compute import Compute

    proxied = [pod(0), pod(1)]  # (url through a proxy; no address known yet)
    backend = FakeBackend(
        [dataclasses.replace(p, address=f"10.0.0.{p.rank + 2}:32300") for p in proxied]
    )
    applied = dataclasses.replace(backend.info, pods=tuple(proxied), rollout="created")

    class Answering:
        def health(self, p: PodInfo) -> dict[str, Any]:
            return {"ok": True}

    service = deploy.wait_ready(backend, Answering(), applied, timeout=5)  # type: ignore[arg-type]
    assert [p.address for p in service.pods] == ["10.0.0.2:32300", "10.0.0.3:32300"]
    compute = Compute(cpus="0.1").distribute("ray", workers=2)
    peers = deploy.distribution_spec(compute, service)["peers"]
    assert peers == ["10.0.0.2:32300", "10.0.0.3:32300"]


def test_a_ray_pool_with_num_proc_fails_on_every_backend_before_anything_is_made() -> None:
    from hotpod import deploy
    from hotpod.compute import Compute
    from hotpod.errors import DeployError

    pool = Compute(cpus="0.1").distribute("ray", workers=2, num_proc=2)
    with pytest.raises(DeployError, match=r"num_proc=2\): a Ray pool runs one Ray node"):
        deploy.deploy(print, "fn", "svc", pool, backend=FakeBackend([]))  # (its apply raises)
