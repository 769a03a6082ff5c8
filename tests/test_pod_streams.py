"""Streamed answers (generators) and cancellation on disconnect, in the pod's ASGI app."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from hotpod import wire
from hotpod.runtime import logs
from test_pod_app import JSON, Pod, frames, launch, spec
from test_pod_app import pod as pod  # the fixture

STREAM_MODULE = """
    import asyncio
    import time
    from pathlib import Path

    def gen(n):
        for i in range(n):
            print("making", i)
            yield i

    async def agen(n):
        for i in range(n):
            await asyncio.sleep(0)
            yield {"i": i}

    def fails(n):
        yield from range(n)
        raise KeyError("gone")

    def returns_gen(n):
        return ((i, i) for i in range(n))

    def pairs():
        yield (1, 2)

    async def waits(path):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            Path(path).write_text("cancelled")
            raise

    def endless(path):
        i = 0
        try:
            while True:
                yield i
                i += 1
                time.sleep(0.01)
        finally:
            Path(path).write_text(str(i))
"""


def stream_pod(pod: Pod) -> None:
    mod = f"{pod.prefix}_streams"
    mid = pod.project("streams", {f"{mod}.py": STREAM_MODULE})
    pod.state.loaded = None

    async def go(c: httpx.AsyncClient) -> None:
        r = await launch(c, spec(mid, mod, "gen"))
        assert r.status_code == 200, r.text

    pod.run(go)


def post(
    pod: Pod, target: str, *args: Any, stream_logs: bool = True, accept: str = "auto"
) -> bytes:
    """Call ``target`` (a function of the module, through a class-less launch) and return the
    raw response body."""
    loaded = pod.state.loaded
    assert loaded is not None
    module = sys.modules[loaded.spec["code"]["module"]]
    loaded.resolve = lambda method: (getattr(module, target), None)  # type: ignore[method-assign]
    extra = {"X-Hotpod-Accept": accept}
    if stream_logs:
        extra["X-Hotpod-Stream-Logs"] = "1"

    async def go(c: httpx.AsyncClient) -> bytes:
        body = json.dumps({"args": list(args), "kwargs": {}})
        r = await c.post("/call", content=body, headers={**JSON, **extra})
        assert r.status_code == 200, r.text
        return r.content

    return pod.run(go)  # type: ignore[no-any-return]


def item(value: Any) -> tuple[bytes, bytes]:
    return wire.FRAME_ITEM, wire.FRAME_JSON + json.dumps(value, separators=(",", ":")).encode()


START = (wire.FRAME_STREAM, b"")
END = (wire.FRAME_END, b"")


def test_items_and_end_frames(pod: Pod, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdout", logs.StreamRouter("stdout", sys.stdout))
    stream_pod(pod)
    assert frames(post(pod, "gen", 2)) == [
        START,
        (wire.FRAME_LOG, b"making 0"),
        item(0),
        (wire.FRAME_LOG, b"making 1"),
        item(1),
        END,
    ]
    assert frames(post(pod, "gen", 2, stream_logs=False)) == [START, item(0), item(1), END]
    assert frames(post(pod, "agen", 2, stream_logs=False)) == [
        START,
        item({"i": 0}),
        item({"i": 1}),
        END,
    ]


def test_a_plain_function_returning_a_generator_streams(pod: Pod) -> None:
    stream_pod(pod)
    for stream_logs in (True, False):
        fs = frames(post(pod, "returns_gen", 2, stream_logs=stream_logs))
        assert fs[0] == START and fs[-1] == END
        assert [wire.decode_item(p) for _, p in fs[1:-1]] == [(0, 0), (1, 1)]


def test_an_error_ends_the_stream_after_its_items(pod: Pod) -> None:
    stream_pod(pod)
    fs = frames(post(pod, "fails", 2))
    assert fs[:3] == [START, item(0), item(1)]
    assert fs[-1][0] == wire.FRAME_ERROR
    assert json.loads(fs[-1][1])["type"] == "builtins.KeyError"
    fs = frames(post(pod, "pairs", accept="json"))
    assert fs[0] == START and fs[-1][0] == wire.FRAME_ERROR
    assert "cannot be sent as JSON" in json.loads(fs[-1][1])["message"]


async def _call_then_leave(pod: Pod, target: str, *args: Any, leave_after: float) -> list[Any]:
    """Drive the ASGI app directly; the client disconnects after ``leave_after`` seconds."""
    loaded = pod.state.loaded
    assert loaded is not None
    module = sys.modules[loaded.spec["code"]["module"]]
    loaded.resolve = lambda method: (getattr(module, target), None)  # type: ignore[method-assign]
    body = json.dumps({"args": list(args), "kwargs": {}}).encode()
    headers = [(k.lower().encode(), v.encode()) for k, v in JSON.items()]
    scope = {"type": "http", "method": "POST", "path": "/call", "headers": headers}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.sleep(leave_after)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(pod.app(scope, receive, send), 10)
    return sent


def test_a_disconnect_cancels_async_code(pod: Pod, tmp_path: Path) -> None:
    stream_pod(pod)
    mark = tmp_path / "mark"
    sent = asyncio.run(_call_then_leave(pod, "waits", str(mark), leave_after=0.1))
    assert sent == []  # nobody to answer
    assert mark.read_text() == "cancelled"


def test_a_disconnect_stops_pulling_a_sync_generator(pod: Pod, tmp_path: Path) -> None:
    stream_pod(pod)
    mark = tmp_path / "mark"
    asyncio.run(_call_then_leave(pod, "endless", str(mark), leave_after=0.2))
    for _ in range(200):  # closed on its call thread once the item being made is done
        if mark.exists():
            break
        asyncio.run(asyncio.sleep(0.01))
    assert 0 < int(mark.read_text()) < 100
