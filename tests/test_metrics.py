"""The pod's /metrics endpoint, driven in process through httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import cloudpickle
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hotpod import wire
from hotpod.runtime.app import PodApp, PodState
from hotpod.runtime.metrics import PodMetrics
from hotpod.store import LocalStore

TOKEN = "metrics-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CALL = {**AUTH, "X-Hotpod-Protocol": wire.PROTOCOL_VERSION, "Content-Type": wire.CT_JSON}


def half(x: int) -> float:
    if x < 0:
        raise ValueError("negative")
    return x / 2


@pytest.fixture
def state(tmp_path: Path) -> PodState:
    return PodState(
        pod="svc-0",
        rank=0,
        service="svc",
        token=TOKEN,
        root=tmp_path / "pod",
        store=LocalStore(tmp_path / "store"),
        pod_log=io.StringIO(),
    )


def spec(state: PodState, fn: Any, steps: list[dict[str, Any]] | None = None, lid: str = "a"):
    digest = state.store.put_bytes(cloudpickle.dumps(fn))
    return {
        "launch_id": lid,
        "service": "svc",
        "kind": "fn",
        "code": {"manifest": None, "paths": [""], "module": None, "by_value": digest},
        "init": None,
        "env": {},
        "image": {"image_id": None, "steps": steps or []},
    }


def serve(state: PodState, go: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        transport = httpx.ASGITransport(app=PodApp(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://pod") as client:
            return await go(client)

    try:
        return asyncio.run(main())
    finally:
        if state.call_threads is not None:
            state.call_threads.shutdown()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


async def launch(client: httpx.AsyncClient, s: dict[str, Any]) -> httpx.Response:
    return await client.post("/_hotpod/launch", content=json.dumps(s), headers=CALL)


async def metrics(client: httpx.AsyncClient) -> str:
    r = await client.get("/metrics", headers=AUTH)  # no protocol header: Prometheus sends none
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


def test_metrics_need_the_token(state: PodState) -> None:
    async def go(c: httpx.AsyncClient) -> None:
        assert (await c.get("/metrics")).status_code == 401
        bad = await c.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 403
        assert (await c.post("/metrics", headers=AUTH)).status_code == 405

    serve(state, go)


def test_calls_are_counted_by_method_and_outcome(state: PodState) -> None:
    async def go(c: httpx.AsyncClient) -> str:
        assert (await launch(c, spec(state, half))).status_code == 200
        for x in (2, 4, 6):
            r = await c.post("/call", content=json.dumps({"args": [x]}), headers=CALL)
            assert r.status_code == 200
        for _ in range(2):
            stream = {**CALL, "X-Hotpod-Stream-Logs": "1"}
            await c.post("/call", content=b'{"args": [-1]}', headers=stream)
        assert (await c.post("/call", content=b"{", headers=CALL)).status_code == 400
        return await metrics(c)

    text = serve(state, go)
    assert value(text, "hotpod_calls_total", method="__call__", outcome="ok") == 3
    assert value(text, "hotpod_calls_total", method="__call__", outcome="error") == 2
    assert value(text, "hotpod_call_errors_total", method="__call__", exception="ValueError") == 2
    assert value(text, "hotpod_call_duration_seconds_count", method="__call__") == 5
    assert value(text, "hotpod_calls_in_flight") == 0
    assert value(text, "hotpod_requests_rejected_total", status="400") == 1
    assert value(text, "hotpod_launches_total", result="reloaded") == 1
    assert value(text, "hotpod_reloads_total") == 1
    assert value(text, "hotpod_ready") == 1
    info = dict(service="svc", pod="svc-0", rank="0", launch_id="a")
    assert value(text, "hotpod_info", **info) == 1
    assert any(name == "process_resident_memory_bytes" for name, _ in samples(text))


def test_calls_in_flight(state: PodState, tmp_path: Path) -> None:
    gate = tmp_path / "gate"

    def wait_for_gate() -> str:
        import time

        deadline = time.monotonic() + 10
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return "done"

    async def go(c: httpx.AsyncClient) -> None:
        await launch(c, spec(state, wait_for_gate))
        calls = [
            asyncio.create_task(c.post("/call", content=b"{}", headers=CALL)) for _ in range(2)
        ]
        for _ in range(500):
            if value(await metrics(c), "hotpod_calls_in_flight") == 2:
                break
            await asyncio.sleep(0.01)
        assert value(await metrics(c), "hotpod_calls_in_flight") == 2
        gate.touch()
        await asyncio.gather(*calls)
        assert value(await metrics(c), "hotpod_calls_in_flight") == 0

    serve(state, go)


def test_setup_steps_are_timed_and_a_failure_is_kept_for_check(state: PodState) -> None:
    good = [{"kind": "run_bash", "commands": ["true"]}]
    bad = [*good, {"kind": "run_bash", "commands": ["echo boom-output; exit 3"]}]

    async def go(c: httpx.AsyncClient) -> tuple[str, dict[str, Any], dict[str, Any]]:
        assert (await launch(c, spec(state, half, good))).status_code == 200
        failed = await launch(c, spec(state, half, bad, lid="b"))
        assert failed.status_code == 500
        health = (await c.get("/health")).json()
        info = (await c.get("/_hotpod/info", headers=CALL)).json()
        return await metrics(c), health, info

    text, health, info = serve(state, go)
    ok = dict(kind="run_bash", outcome="ok")
    assert value(text, "hotpod_setup_step_duration_seconds_count", **ok) == 1
    failed = dict(kind="run_bash", outcome="failed")
    assert value(text, "hotpod_setup_step_duration_seconds_count", **failed) == 1
    assert value(text, "hotpod_launches_total", result="failed") == 1
    error = health["launch_error"]
    assert error["launch_id"] == "b" and error["phase"] == "setup"
    assert error["step"] == "run_bash echo boom-output; exit 3"
    assert "boom-output" in error["tail"]
    assert health["ready"] is True and health["launch_id"] == "a"  # the old launch serves
    assert [s["step"] for s in info["steps"]] == ["run_bash true"]
    assert info["steps"][0]["applied"] is True and info["steps"][0]["seconds"] is not None


def test_a_successful_launch_clears_the_kept_failure(state: PodState) -> None:
    bad = [{"kind": "run_bash", "commands": ["exit 1"]}]

    async def go(c: httpx.AsyncClient) -> tuple[Any, Any]:
        await launch(c, spec(state, half, bad))
        first = (await c.get("/health")).json()["launch_error"]
        await launch(c, spec(state, half, lid="c"))
        return first, (await c.get("/health")).json()["launch_error"]

    first, after = serve(state, go)
    assert first["launch_id"] == "a" and after is None


def test_worker_and_pod_restarts(tmp_path: Path) -> None:
    m = PodMetrics("svc", "svc-0", 0)
    m.worker_started(tmp_path, 2)
    assert value(m.render().decode(), "hotpod_worker_restarts") == 0
    m.worker_started(tmp_path, 2)  # a second worker under the same supervisor
    text = m.render().decode()
    assert value(text, "hotpod_worker_restarts") == 1
    assert value(text, "hotpod_pod_restarts") == 2


def test_pod_metrics_unit() -> None:
    m = PodMetrics("svc", "svc-1", 1)
    m.set_launch("l1")
    m.set_launch("l2")  # the info series follows the launch, the old one goes
    m.call_done("predict", 0.0, None)
    m.call_done("predict", 0.0, "KeyError")
    text = m.render().decode()
    assert value(text, "hotpod_info", service="svc", pod="svc-1", rank="1", launch_id="l2") == 1
    assert (
        "hotpod_info",
        (("launch_id", "l1"), ("pod", "svc-1"), ("rank", "1"), ("service", "svc")),
    ) not in samples(text)
    assert value(text, "hotpod_calls_total", method="predict", outcome="error") == 1
    assert value(text, "hotpod_call_errors_total", method="predict", exception="KeyError") == 1
