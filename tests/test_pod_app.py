"""The pod's HTTP server (PodApp), driven in process through httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import io
import json
import os
import pickle
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from hotpod import codesync, wire
from hotpod.runtime import logs
from hotpod.runtime.app import PodApp, PodState
from hotpod.store import LocalStore

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Hotpod-Protocol": wire.PROTOCOL_VERSION}
JSON = {**AUTH, "Content-Type": wire.CT_JSON}


@dataclass
class Pod:
    app: PodApp
    state: PodState
    store: LocalStore
    log: io.StringIO
    tmp: Path
    prefix: str  # unique module-name prefix of this test

    def project(self, name: str, files: dict[str, str]) -> str:
        """Write a project, sync it into the store; returns its manifest id."""
        root = self.tmp / "projects" / name
        for rel, text in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
        return codesync.sync(root, self.store, cache_dir=self.tmp / "hash-cache").manifest_id

    def run(self, fn: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
        async def main() -> Any:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://pod") as client:
                return await fn(client)

        return asyncio.run(main())


@pytest.fixture
def pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pod]:
    monkeypatch.chdir(tmp_path)  # the loader chdirs into the snapshot; monkeypatch restores
    old_path = list(sys.path)
    old_modules = set(sys.modules)
    store = LocalStore(tmp_path / "store")
    log = io.StringIO()
    state = PodState(
        pod="pod-0",
        rank=0,
        service="svc",
        token=TOKEN,
        root=tmp_path / "pod",
        store=store,
        pod_log=log,
        max_body=1024,
    )
    p = Pod(PodApp(state), state, store, log, tmp_path, f"m_{uuid.uuid4().hex[:10]}")
    try:
        yield p
    finally:
        if state.call_threads is not None:
            state.call_threads.shutdown()
        sys.path[:] = old_path
        for name in set(sys.modules) - old_modules:
            f = getattr(sys.modules[name], "__file__", None) or ""
            if name.startswith(p.prefix) or f.startswith(str(tmp_path)):
                del sys.modules[name]


def spec(
    manifest: str,
    module: str,
    qualname: str,
    *,
    kind: str = "fn",
    init: str | None = None,
    launch_id: str = "a",
) -> dict[str, Any]:
    return {
        "launch_id": launch_id,
        "service": "s",
        "kind": kind,
        "code": {
            "manifest": manifest,
            "paths": [""],
            "module": module,
            "script": None,
            "qualname": qualname,
            "by_value": None,
        },
        "init": init,
        "env": {},
    }


def frames(body: bytes) -> list[tuple[bytes, bytes]]:
    dec = wire.FrameDecoder()
    out = list(dec.feed(body))
    assert dec.pending == 0, "the response ends in the middle of a frame"
    return out


def result_of(resp: httpx.Response) -> Any:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == wire.CT_FRAMES
    fs = [f for f in frames(resp.content) if f[0] != wire.FRAME_LOG]
    assert len(fs) == 1, fs
    kind, payload = fs[0]
    assert kind in (wire.FRAME_JSON, wire.FRAME_PICKLE), (kind, payload)
    return wire.decode_result(kind, payload)


async def call(
    client: httpx.AsyncClient, path: str = "/call", *args: Any, **kwargs: Any
) -> httpx.Response:
    body = json.dumps({"args": list(args), "kwargs": kwargs})
    return await client.post(path, content=body, headers=JSON)


async def launch(client: httpx.AsyncClient, s: dict[str, Any]) -> httpx.Response:
    return await client.post("/_hotpod/launch", content=json.dumps(s), headers=AUTH)


FN_MODULE = """
    import asyncio

    def add(x, y=1):
        print(f"adding {x} and {y}")
        return x + y

    def quiet(x):
        return x * 10

    def pair():
        return (1, 2)

    def boom(n):
        helper(n)

    def helper(n):
        raise ValueError(f"boom {n}")

    def bye():
        raise SystemExit(3)

    class BadStr(Exception):
        def __str__(self):
            raise RuntimeError("no str")

    def badstr():
        print("about to fail")
        raise BadStr()

    async def aadd(x):
        await asyncio.sleep(0.01)
        print("async got", x)
        return {"double": x * 2}

    def big(n, log=False):
        if log:
            print("making", n)
        return bytearray(b"x" * n)
"""

CLS_MODULE = """
    class Counter:
        label = "counter"

        def __init__(self, start=0):
            self.n = start
            print("init", start)

        def incr(self, by=1):
            self.n += by
            return self.n

        def get(self):
            return self.n

        async def aget(self):
            return self.n

        def _private(self):
            return "hidden"
"""


def fn_pod(pod: Pod, qualname: str = "add") -> tuple[str, str]:
    mod = f"{pod.prefix}_fn"
    mid = pod.project("fn", {f"{mod}.py": FN_MODULE})

    async def go(c: httpx.AsyncClient) -> None:
        r = await launch(c, spec(mid, mod, qualname))
        assert r.status_code == 200, r.text

    pod.run(go)
    return mid, mod


# -- health, auth, protocol, routing -----------------------------------------------------------


def test_health_needs_no_token(pod: Pod) -> None:
    async def go(c: httpx.AsyncClient) -> None:
        r = await c.get("/health")
        assert r.status_code == 200
        body = r.json()
        assert body["status"] == "ok"
        assert body["pod"] == "pod-0"
        assert body["rank"] == 0
        assert body["pid"] == os.getpid()
        assert body["ready"] is False
        assert body["launch_id"] is None
        assert r.headers["x-hotpod-protocol"] == wire.PROTOCOL_VERSION
        assert (await c.head("/health")).status_code == 200
        r = await c.post("/health")
        assert r.status_code == 405
        assert "GET /health" in r.json()["error"]

    pod.run(go)


@pytest.mark.parametrize("path", ["/call", "/call/m", "/_hotpod/launch", "/_hotpod/info"])
def test_auth_and_protocol(pod: Pod, path: str) -> None:
    async def go(c: httpx.AsyncClient) -> None:
        r = await c.post(path, content=b"{}", headers={"X-Hotpod-Protocol": "1"})
        assert r.status_code == 401
        assert "missing Authorization" in r.json()["error"]
        assert r.json()["pod"] == "pod-0"

        # no token and no protocol: auth is checked first
        assert (await c.post(path, content=b"{}")).status_code == 401

        for value in ["Bearer wrong", f"Basic {TOKEN}", "Bearer", TOKEN, "Bearer  s3cret-tokenX"]:
            r = await c.post(
                path, content=b"{}", headers={"Authorization": value, "X-Hotpod-Protocol": "1"}
            )
            assert r.status_code == 403, value
            assert "invalid service token" in r.json()["error"]

        r = await c.post(path, content=b"{}", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 400
        msg = r.json()["error"]
        assert "protocol mismatch" in msg
        assert "no version" in msg

        r = await c.post(
            path,
            content=b"{}",
            headers={"Authorization": f"Bearer {TOKEN}", "X-Hotpod-Protocol": "99"},
        )
        assert r.status_code == 400
        msg = r.json()["error"]
        assert "speaks 99" in msg
        assert f"pod speaks {wire.PROTOCOL_VERSION}" in msg

    pod.run(go)


def test_unknown_path_and_wrong_method(pod: Pod) -> None:
    async def go(c: httpx.AsyncClient) -> None:
        for path in ["/", "/calls", "/_hotpod/other", "/health/x", "/CALL"]:
            r = await c.post(path, content=b"{}")  # 404 even without a token
            assert r.status_code == 404, path
            assert "no endpoint" in r.json()["error"]
            assert (await c.post(path, content=b"{}", headers=AUTH)).status_code == 404
        for method, path in [
            ("GET", "/call"),
            ("PUT", "/call/x"),
            ("DELETE", "/_hotpod/launch"),
            ("GET", "/_hotpod/launch"),
        ]:
            r = await c.request(method, path, headers=AUTH)
            assert r.status_code == 405, (method, path)
            assert f"use POST {path}" in r.json()["error"]
        for method in ["POST", "DELETE", "PUT"]:
            r = await c.request(method, "/_hotpod/info", headers=AUTH)
            assert r.status_code == 405, method
            assert "use GET /_hotpod/info" in r.json()["error"]

    pod.run(go)


def test_call_before_launch_is_503(pod: Pod) -> None:
    async def go(c: httpx.AsyncClient) -> None:
        r = await call(c, "/call", 1)
        assert r.status_code == 503
        assert "serves no code yet" in r.json()["error"]
        info = (await c.get("/_hotpod/info", headers=AUTH)).json()
        assert info["ready"] is False

    pod.run(go)


# -- calls -------------------------------------------------------------------------------------


def test_call_returns_json_result(pod: Pod, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdout", logs.StreamRouter("stdout", sys.stdout))
    mid, mod = fn_pod(pod, "add")

    async def go(c: httpx.AsyncClient) -> None:
        r = await c.post(
            "/call",
            content=b'{"args": [2], "kwargs": {"y": 40}}',
            headers={**JSON, "X-Hotpod-Request-Id": "req00001-rest-of-id"},
        )
        assert r.status_code == 200
        assert r.headers["x-hotpod-protocol"] == wire.PROTOCOL_VERSION
        fs = frames(r.content)
        assert fs == [(wire.FRAME_JSON, b"42")]  # no log frames unless asked for
        health = (await c.get("/health")).json()
        assert health["ready"] is True
        assert health["launch_id"] == "a"
        info = (await c.get("/_hotpod/info", headers=AUTH)).json()
        assert info["kind"] == "fn"
        assert info["code"]["module"] == mod
        assert info["code"]["manifest"] == mid

    pod.run(go)
    assert "Z r=req00001 rank=0 pod=pod-0 | adding 2 and 40\n" in pod.log.getvalue()


def test_call_streams_log_lines(pod: Pod, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdout", logs.StreamRouter("stdout", sys.stdout))
    fn_pod(pod, "add")

    async def go(c: httpx.AsyncClient) -> None:
        r = await c.post(
            "/call",
            content=b'{"args": [1, 2]}',
            headers={**JSON, "X-Hotpod-Stream-Logs": "1", "X-Hotpod-Request-Id": "abcdef0123"},
        )
        assert r.status_code == 200
        assert frames(r.content) == [
            (wire.FRAME_LOG, b"adding 1 and 2"),
            (wire.FRAME_JSON, b"3"),
        ]

    pod.run(go)
    assert "Z r=abcdef01 rank=0 pod=pod-0 | adding 1 and 2\n" in pod.log.getvalue()


def test_call_streaming_without_output(pod: Pod) -> None:
    fn_pod(pod, "quiet")

    async def go(c: httpx.AsyncClient) -> None:
        r = await c.post(
            "/call", content=b'{"args": [4]}', headers={**JSON, "X-Hotpod-Stream-Logs": "1"}
        )
        assert frames(r.content) == [(wire.FRAME_JSON, b"40")]
        assert r.headers["content-length"] == str(len(r.content))

    pod.run(go)


def test_async_function(pod: Pod, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdout", logs.StreamRouter("stdout", sys.stdout))
    fn_pod(pod, "aadd")

    async def go(c: httpx.AsyncClient) -> None:
        r = await c.post(
            "/call",
            content=b'{"args": [21]}',
            headers={**JSON, "X-Hotpod-Stream-Logs": "1", "X-Hotpod-Request-Id": "asyncreq1"},
        )
        assert frames(r.content) == [
            (wire.FRAME_LOG, b"async got 21"),
            (wire.FRAME_JSON, b'{"double":42}'),
        ]
        # concurrent async calls run on the event loop together
        results = await asyncio.gather(*(call(c, "/call", i) for i in range(20)))
        assert [result_of(r) for r in results] == [{"double": 2 * i} for i in range(20)]

    pod.run(go)
    assert "Z r=asyncreq rank=0 pod=pod-0 | async got 21\n" in pod.log.getvalue()


def test_pickle_request_and_result(pod: Pod) -> None:
    fn_pod(pod, "add")

    async def go(c: httpx.AsyncClient) -> None:
        body, ct = wire.encode_request(((1, 2),), {"y": (3,)}, "pickle")
        r = await c.post(
            "/call", content=body, headers={**AUTH, "Content-Type": ct, "X-Hotpod-Accept": "auto"}
        )
        assert result_of(r) == (1, 2, 3)
        [(kind, _)] = frames(r.content)
        assert kind == wire.FRAME_PICKLE
        r = await c.post(
            "/call", content=b'{"args": [1]}', headers={**JSON, "X-Hotpod-Accept": "pickle"}
        )
        assert frames(r.content)[0][0] == wire.FRAME_PICKLE
        assert result_of(r) == 2

    pod.run(go)


def test_result_json_impossible_is_an_error(pod: Pod) -> None:
    fn_pod(pod, "pair")

    async def go(c: httpx.AsyncClient) -> None:
        r = await c.post("/call", content=b"{}", headers={**JSON, "X-Hotpod-Accept": "json"})
        assert r.status_code == 200
        fs = frames(r.content)
        info = json.loads(fs[-1][1])
        assert fs[-1][0] == wire.FRAME_ERROR
        assert info["type"] == "builtins.TypeError"
        assert "cannot be sent as JSON" in info["message"]
        r = await c.post("/call", content=b"{}", headers={**JSON, "X-Hotpod-Accept": "xml"})
        assert r.status_code == 400
        assert "X-Hotpod-Accept" in r.json()["error"]

    pod.run(go)


def test_exception_comes_back_as_frames(pod: Pod) -> None:
    _, mod = fn_pod(pod, "boom")

    async def go(c: httpx.AsyncClient) -> None:
        for stream in ("0", "1"):
            r = await c.post(
                "/call", content=b'{"args": [7]}', headers={**JSON, "X-Hotpod-Stream-Logs": stream}
            )
            assert r.status_code == 200
            fs = frames(r.content)
            assert [k for k, _ in fs] == [wire.FRAME_EXC, wire.FRAME_ERROR]
            exc = pickle.loads(fs[0][1])
            assert isinstance(exc, ValueError)
            assert str(exc) == "boom 7"
            info = json.loads(fs[1][1])
            assert info["type"] == "builtins.ValueError"
            assert info["message"] == "boom 7"
            assert (info["pod"], info["rank"]) == ("pod-0", 0)
            tb = info["traceback"]
            assert tb.startswith("Traceback (most recent call last):")
            assert "in boom" in tb
            assert "in helper" in tb
            assert "ValueError: boom 7" in tb
            assert f"{mod}.py" in tb
            assert "hotpod/runtime/calls.py" not in tb  # the runtime's own frame is dropped

    pod.run(go)


@pytest.mark.parametrize("stream", ["0", "1"])
def test_exception_with_broken_str(pod: Pod, monkeypatch: pytest.MonkeyPatch, stream: str) -> None:
    monkeypatch.setattr(sys, "stdout", logs.StreamRouter("stdout", sys.stdout))
    fn_pod(pod, "badstr")

    async def go(c: httpx.AsyncClient) -> None:
        r = await asyncio.wait_for(
            c.post("/call", content=b"{}", headers={**JSON, "X-Hotpod-Stream-Logs": stream}), 10
        )
        assert r.status_code == 200
        fs = frames(r.content)
        if stream == "1":
            assert fs[0] == (wire.FRAME_LOG, b"about to fail")
        assert fs[-1][0] == wire.FRAME_ERROR
        info = json.loads(fs[-1][1])
        assert info["qualname"] == "BadStr"
        assert "str() failed" in info["message"]

    pod.run(go)


@pytest.mark.parametrize("qualname", ["boom", "badstr"])
@pytest.mark.parametrize("stream", ["0", "1"])
def test_runtime_failure_ends_the_response(
    pod: Pod, monkeypatch: pytest.MonkeyPatch, stream: str, qualname: str
) -> None:
    """A failure of the runtime itself (here: encoding the error) must not leave a call hanging."""
    monkeypatch.setattr(sys, "stdout", logs.StreamRouter("stdout", sys.stdout))
    fn_pod(pod, qualname)

    def broken(*args: Any) -> bytes:
        raise RuntimeError("encoder broke")

    monkeypatch.setattr(wire, "encode_error", broken)

    async def go(c: httpx.AsyncClient) -> None:
        with pytest.raises(RuntimeError, match="encoder broke"):
            await asyncio.wait_for(
                c.post("/call", content=b"{}", headers={**JSON, "X-Hotpod-Stream-Logs": stream}),
                10,
            )

    pod.run(go)


def test_system_exit_does_not_stop_the_pod(pod: Pod) -> None:
    fn_pod(pod, "bye")

    async def go(c: httpx.AsyncClient) -> None:
        r = await c.post("/call", content=b"{}", headers=JSON)
        info = json.loads(frames(r.content)[-1][1])
        assert info["type"] == "builtins.SystemExit"
        assert (await c.get("/health")).status_code == 200

    pod.run(go)


def test_wrong_arguments_are_a_remote_type_error(pod: Pod) -> None:
    fn_pod(pod, "add")

    async def go(c: httpx.AsyncClient) -> None:
        r = await c.post("/call", content=b'{"kwargs": {"nope": 1}}', headers=JSON)
        info = json.loads(frames(r.content)[-1][1])
        assert info["type"] == "builtins.TypeError"
        assert "nope" in info["message"]

    pod.run(go)


# -- classes -----------------------------------------------------------------------------------


def cls_spec(pod: Pod, mid: str, mod: str, init: dict[str, Any], launch_id: str = "a") -> dict:
    digest = pod.store.put_bytes(pickle.dumps(((), init)))
    return spec(mid, mod, "Counter", kind="cls", init=digest, launch_id=launch_id)


def test_class_keeps_state_across_calls(pod: Pod) -> None:
    mod = f"{pod.prefix}_cls"
    mid = pod.project("cls", {f"{mod}.py": CLS_MODULE})

    async def go(c: httpx.AsyncClient) -> None:
        r = await launch(c, cls_spec(pod, mid, mod, {"start": 5}))
        assert r.status_code == 200, r.text
        assert r.json()["reloaded"] is True
        assert result_of(await call(c, "/call/get")) == 5
        assert result_of(await call(c, "/call/incr")) == 6
        assert result_of(await call(c, "/call/incr", by=10)) == 16
        assert result_of(await call(c, "/call/get")) == 16
        assert result_of(await call(c, "/call/aget")) == 16
        assert result_of(await call(c, "/call/label")) == "counter"  # a plain attribute
        r = await call(c, "/call/label", 1)
        assert r.status_code == 400
        assert "attribute, not a method" in r.json()["error"]

        r = await call(c, "/call/nosuch")
        assert r.status_code == 404
        msg = r.json()["error"]
        assert "Counter has no attribute 'nosuch'" in msg
        assert "methods: aget, get, incr" in msg
        assert "_private" not in msg

        for bad in ["/call/__init__", "/call/_private.x", "/call/a-b"]:
            r = await call(c, bad)
            assert r.status_code == 404, bad
        r = await call(c, "/call")
        assert r.status_code == 404
        assert "is a class" in r.json()["error"]

    pod.run(go)


def test_function_service_has_no_methods(pod: Pod) -> None:
    fn_pod(pod, "add")

    async def go(c: httpx.AsyncClient) -> None:
        r = await call(c, "/call/add", 1)
        assert r.status_code == 404
        assert "is a function" in r.json()["error"]

    pod.run(go)


def test_relaunch_keeps_or_rebuilds_the_instance(pod: Pod) -> None:
    mod = f"{pod.prefix}_cls"
    mid = pod.project("cls", {f"{mod}.py": CLS_MODULE})

    async def go(c: httpx.AsyncClient) -> None:
        first = cls_spec(pod, mid, mod, {"start": 5})
        assert (await launch(c, first)).json()["reloaded"] is True
        assert result_of(await call(c, "/call/incr")) == 6

        r = await launch(c, first)
        assert r.status_code == 200
        assert r.json()["reloaded"] is False
        assert result_of(await call(c, "/call/incr")) == 7  # same instance

        # a new launch id with the same code and init keeps the instance too, and is adopted
        r = await launch(c, {**first, "launch_id": "b"})
        assert r.json() == {**r.json(), "reloaded": False, "launch_id": "b"}
        assert (await c.get("/health")).json()["launch_id"] == "b"
        assert result_of(await call(c, "/call/incr")) == 8

        r = await launch(c, cls_spec(pod, mid, mod, {"start": 100}, launch_id="c"))
        assert r.status_code == 200
        assert r.json()["reloaded"] is True
        assert result_of(await call(c, "/call/get")) == 100
        assert (await c.get("/health")).json()["launch_id"] == "c"

    pod.run(go)
    persisted = json.loads(pod.state.launch_file.read_text())
    assert persisted["launch_id"] == "c"
    assert sys.path.count(str(pod.state.code_dir / "current")) == 1  # relaunches do not stack


def test_failed_init_keeps_previous(pod: Pod) -> None:
    mod = f"{pod.prefix}_cls"
    mid = pod.project("cls", {f"{mod}.py": CLS_MODULE})

    async def go(c: httpx.AsyncClient) -> None:
        assert (await launch(c, cls_spec(pod, mid, mod, {"start": 1}))).status_code == 200
        r = await launch(c, cls_spec(pod, mid, mod, {"bogus": 1}, launch_id="bad"))
        assert r.status_code == 500
        body = r.json()
        assert body["phase"] == "init"
        assert "running __init__ failed: TypeError" in body["error"]
        assert "bogus" in body["traceback"]
        assert result_of(await call(c, "/call/incr")) == 2
        assert (await c.get("/health")).json()["launch_id"] == "a"

    pod.run(go)


def test_failed_import_keeps_previous_code(pod: Pod) -> None:
    good = f"{pod.prefix}_good"
    bad = f"{pod.prefix}_bad"
    helper = f"{pod.prefix}_helper"
    mid_good = pod.project(
        "good",
        {
            f"{good}.py": f"""
                def f():
                    import {helper}  # imported lazily, on the first call
                    {helper}.count += 1
                    return {helper}.count
            """,
            f"{helper}.py": "count = 0\n",
        },
    )
    mid_bad = pod.project(
        "bad",
        {f"{bad}.py": "import json\n\nraise RuntimeError('broken at import')\n"},
    )

    async def go(c: httpx.AsyncClient) -> None:
        assert (await launch(c, spec(mid_good, good, "f"))).status_code == 200
        assert result_of(await call(c)) == 1
        assert result_of(await call(c)) == 2

        r = await launch(c, spec(mid_bad, bad, "f", launch_id="b"))
        assert r.status_code == 500
        body = r.json()
        assert body["phase"] == "import"
        assert "importing the code failed: RuntimeError: broken at import" in body["error"]
        assert "Traceback" in body["traceback"]
        assert f"{bad}.py" in body["traceback"]
        assert "broken at import" in body["traceback"]
        assert body["pod"] == "pod-0"

        # the previous code still answers, with its modules (and their state) intact
        assert result_of(await call(c)) == 3
        assert (await c.get("/health")).json()["launch_id"] == "a"

        r = await launch(c, spec(mid_good, good, "no_such_name", launch_id="c"))
        assert r.status_code == 500
        assert r.json()["phase"] == "import"
        assert "AttributeError" in r.json()["error"]
        assert result_of(await call(c)) == 4

        r = await launch(c, spec(mid_good, f"{pod.prefix}_missing", "f", launch_id="d"))
        assert r.status_code == 500
        assert "ModuleNotFoundError" in r.json()["error"]
        assert result_of(await call(c)) == 5

    pod.run(go)
    assert json.loads(pod.state.launch_file.read_text())["launch_id"] == "a"


def test_new_code_replaces_old(pod: Pod) -> None:
    mod = f"{pod.prefix}_v"
    v1 = pod.project("v1", {f"{mod}.py": "def f():\n    return 'v1'\n"})
    v2 = pod.project("v2", {f"{mod}.py": "def f():\n    return 'v2'\n"})

    async def go(c: httpx.AsyncClient) -> None:
        assert (await launch(c, spec(v1, mod, "f"))).status_code == 200
        assert result_of(await call(c)) == "v1"
        r = await launch(c, spec(v2, mod, "f", launch_id="b"))
        assert r.status_code == 200
        assert r.json()["reloaded"] is True
        assert result_of(await call(c)) == "v2"

    pod.run(go)


# -- malformed requests ------------------------------------------------------------------------


def test_body_over_max_body_is_413(pod: Pod) -> None:
    fn_pod(pod, "add")
    big = json.dumps({"args": ["x" * 2000]}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 300

    async def go(c: httpx.AsyncClient) -> None:
        r = await c.post("/call", content=big, headers=JSON)
        assert r.status_code == 413
        assert "exceeds the pod's limit of 1024" in r.json()["error"]
        # no Content-Length: the limit applies while reading
        r = await c.post("/call", content=chunks(), headers=JSON)
        assert "content-length" not in r.request.headers
        assert r.status_code == 413
        assert "limit of 1024 bytes" in r.json()["error"]
        # a body just under the limit is fine
        ok = json.dumps({"args": ["x" * 900, "y"]}).encode()
        assert len(ok) <= 1024
        assert result_of(await c.post("/call", content=ok, headers=JSON)) == "x" * 900 + "y"
        r = await c.post("/call", content=b"{}", headers={**JSON, "Content-Length": "abc"})
        assert r.status_code == 400
        assert "Content-Length" in r.json()["error"]

    pod.run(go)


@pytest.mark.parametrize(
    "body, ctype, message",
    [
        (b"{not json", wire.CT_JSON, "not valid JSON"),
        (b"\xff\xfe", wire.CT_JSON, "not valid JSON"),
        (b"[1]", wire.CT_JSON, "must be a JSON object"),
        (b'{"args": 1}', wire.CT_JSON, '"args" must be a JSON array'),
        (b"[" * 900, wire.CT_JSON, "not valid JSON"),
        (b"garbage", wire.CT_PICKLE, "could not unpickle"),
        (b"{}", "text/plain", "unsupported Content-Type"),
        (b"{}", None, "unsupported Content-Type"),
    ],
)
def test_malformed_call_body_is_400(pod: Pod, body: bytes, ctype: str | None, message: str) -> None:
    fn_pod(pod, "add")

    async def go(c: httpx.AsyncClient) -> None:
        headers = dict(AUTH)
        if ctype is not None:
            headers["Content-Type"] = ctype
        r = await c.post("/call", content=body, headers=headers)
        assert r.status_code == 400
        assert message in r.json()["error"]
        assert result_of(await call(c, "/call", 1)) == 2

    pod.run(go)


@pytest.mark.parametrize(
    "body",
    [b"{", b"[]", b'"x"', b"{}", b'{"code": 1}', b'{"code": []}', b"[" * 5000, b"\xff"],
)
def test_malformed_launch_spec_is_400(pod: Pod, body: bytes) -> None:
    async def go(c: httpx.AsyncClient) -> None:
        r = await c.post("/_hotpod/launch", content=body, headers=AUTH)
        assert r.status_code == 400
        assert "malformed launch spec" in r.json()["error"]

    pod.run(go)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"kind": "weird"}, "'kind' is 'weird'"),
        ({"init": 5}, "'init' must be a string"),
        ({"env": [1]}, "'env' must be an object"),
        ({"env": 5}, "'env' must be an object"),
        ({"code": {"paths": 5}}, "'code.paths' must be a list of strings"),
        ({"code": {"paths": ["", " ", 5]}}, "'code.paths' must be a list of strings"),
        ({"code": {"paths": ["../../.."]}}, "leaves the code snapshot"),
        ({"code": {"paths": ["/etc"]}}, "leaves the code snapshot"),
        ({"code": {"manifest": 5}}, "'code.manifest' must be a string or null"),
        ({"code": {"module": ["x"]}}, "'code.module' must be a string or null"),
        ({"code": {"module": None}}, "names no 'module', 'script' or 'by_value'"),
        ({"code": {"qualname": None}}, "'code.qualname' is missing"),
    ],
)
def test_launch_spec_with_wrong_fields_is_400(
    pod: Pod, change: dict[str, Any], message: str
) -> None:
    mid, mod = fn_pod(pod, "quiet")
    env_before = dict(os.environ)
    path_before = list(sys.path)
    bad = spec(mid, mod, "add", launch_id="bad")
    bad = {**bad, **change, "code": {**bad["code"], **change.get("code", {})}}

    async def go(c: httpx.AsyncClient) -> None:
        r = await launch(c, bad)
        assert r.status_code == 400
        assert message in r.json()["error"]
        assert result_of(await call(c, "/call", 3)) == 30  # the previous launch still serves

    pod.run(go)
    assert dict(os.environ) == env_before
    assert sys.path == path_before


# -- restart -----------------------------------------------------------------------------------


def restarted(pod: Pod) -> tuple[PodApp, PodState]:
    """A fresh server over the same pod root, as a worker that the supervisor restarted."""
    state = PodState(
        pod="pod-0",
        rank=0,
        service="svc",
        token=TOKEN,
        root=pod.state.root,
        store=pod.store,
        pod_log=io.StringIO(),
    )
    return PodApp(state), state


def serve_with_lifespan(app: PodApp, fn: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await inbox.put({"type": "lifespan.startup"})
        lifespan = asyncio.create_task(app({"type": "lifespan"}, inbox.get, outbox.put))
        assert (await outbox.get())["type"] == "lifespan.startup.complete"
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://pod") as client:
                return await fn(client)
        finally:
            await inbox.put({"type": "lifespan.shutdown"})
            assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
            await lifespan

    return asyncio.run(main())


def test_restarted_worker_resumes_the_persisted_launch(pod: Pod) -> None:
    fn_pod(pod, "quiet")
    app, state = restarted(pod)

    async def go(c: httpx.AsyncClient) -> None:
        # at once: the call waits for the resume instead of failing with 503
        assert result_of(await call(c, "/call", 4)) == 40
        health = (await c.get("/health")).json()
        assert health["ready"] is True
        assert health["launch_id"] == "a"

    try:
        serve_with_lifespan(app, go)
    finally:
        if state.call_threads is not None:
            state.call_threads.shutdown()


def test_restart_with_unreadable_launch_file(pod: Pod, capsys: pytest.CaptureFixture) -> None:
    fn_pod(pod, "quiet")
    pod.state.launch_file.write_text("{not json")
    app, _ = restarted(pod)

    async def go(c: httpx.AsyncClient) -> None:
        r = await call(c, "/call", 4)
        assert r.status_code == 503
        assert (await c.get("/health")).json()["ready"] is False

    serve_with_lifespan(app, go)
    assert "ignoring unreadable" in capsys.readouterr().out


@pytest.mark.parametrize("log", [False, True])
def test_a_large_pickled_result_is_sent_whole(
    pod: Pod, log: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A result holding a large buffer is written without joining it (wire.Parts): with one
    body, or among log frames when the call printed."""
    monkeypatch.setattr(sys, "stdout", logs.StreamRouter("stdout", sys.stdout))
    fn_pod(pod, "big")
    n = 3 * wire.LARGE + 5

    async def go(c: httpx.AsyncClient) -> None:
        r = await c.post(
            "/call",
            content=json.dumps({"args": [n], "kwargs": {"log": log}}),
            headers={**JSON, "X-Hotpod-Accept": "pickle", "X-Hotpod-Stream-Logs": "1"},
        )
        assert result_of(r) == bytearray(b"x" * n)
        kinds = [k for k, _ in frames(r.content)]
        assert kinds == ([wire.FRAME_LOG] if log else []) + [wire.FRAME_PICKLE]
        if not log:
            assert int(r.headers["content-length"]) == len(r.content)

    pod.run(go)


def test_a_large_pickled_request_is_read(pod: Pod) -> None:
    fn_pod(pod, "quiet")
    pod.state.max_body = 8 * wire.LARGE
    body, ct = wire.encode_request((b"ab" * wire.LARGE,), {}, "pickle")
    assert isinstance(body, wire.Parts)

    async def go(c: httpx.AsyncClient) -> None:
        r = await c.post("/call", content=b"".join(body), headers={**AUTH, "Content-Type": ct})
        assert result_of(r) == b"ab" * wire.LARGE * 10

    pod.run(go)
