"""The pod's HTTP server, a plain ASGI application.

Endpoints::

    GET  /health            liveness and readiness (no token)
    POST /call              call the service's function
    POST /call/{method}     call a method of the service's instance
    POST /_hotpod/launch    load a launch spec (code, init args, env), reloading only what changed
    GET  /_hotpod/info      what the pod serves
    GET  /_hotpod/debug     debugger sessions waiting for a client (``hotpod debug``)
    GET  /metrics           Prometheus metrics (see ``metrics``); the token is required

Sync user code runs on call threads (``threads``), async user code on the event loop; the call path does not
poll. Nothing a client sends can crash the server: every bad request gets a 4xx with a message.

A generator (or async generator) function, or a function that returns one, is answered with a
stream: its items are sent as they are produced (``wire``: S, I..., Z). When the caller goes
away (``http.disconnect``) during async code or a stream, async code is cancelled and a sync
generator is closed once the item it is producing is done; plain sync code cannot be
interrupted, so it runs to its end and its result is dropped.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import os
import threading
import time
import traceback
import types
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TextIO, TypeVar

from hotpod import loglines, wire
from hotpod.errors import ProtocolError
from hotpod.runtime import debug, logs
from hotpod.runtime.loader import Loaded, LoadError, load, reload_key
from hotpod.runtime.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from hotpod.runtime.metrics import PodMetrics
from hotpod.runtime.setup import Setup, SetupError, chain, summary
from hotpod.runtime.threads import CallThreads
from hotpod.store import Store

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class PodState:
    """Everything the server of one pod knows."""

    pod: str
    rank: int
    service: str
    token: str
    root: Path
    store: Store
    pod_log: TextIO
    max_body: int = 4 << 30
    threads: int = 64
    loaded: Loaded | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    launch_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    call_threads: CallThreads | None = None
    started: float = field(default_factory=time.time)
    venv: Path | None = None  # the service's virtual environment for pip steps
    request_restart: Callable[[], None] | None = None  # ask the supervisor for a new worker
    metrics: PodMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = PodMetrics(self.service, self.pod, self.rank)

    @property
    def launch_file(self) -> Path:
        return self.root / ".hotpod" / "launch.json"

    @property
    def next_launch_file(self) -> Path:
        """The launch a successor worker must load (launch.json keeps the one being served)."""
        return self.root / ".hotpod" / "launch.next.json"

    @property
    def launch_error_file(self) -> Path:
        """Why the last launch failed, when it failed where no request could answer."""
        return self.root / ".hotpod" / "launch_error.json"

    @property
    def code_dir(self) -> Path:
        return self.root / ".hotpod" / "code"

    def pool(self) -> CallThreads:
        if self.call_threads is None:
            self.call_threads = CallThreads(self.threads)
        return self.call_threads


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return v.decode("latin-1")
    return None


async def _send_bytes(
    send: Send, status: int, body: bytes, content_type: str, extra: list | None = None
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"x-hotpod-protocol", wire.PROTOCOL_VERSION.encode()),
    ]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + (extra or [])}
    )
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    await _send_bytes(send, status, json.dumps(payload).encode(), wire.CT_JSON)


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    declared = _header(scope, b"content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise HTTPError(
                    413, f"request body of {declared} bytes exceeds the pod's limit of {limit}"
                )
        except ValueError:
            raise HTTPError(400, "Content-Length is not a number") from None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HTTPError(499, "client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"request body exceeds the pod's limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _check_spec(spec: Any) -> None:
    """Check a launch spec's shape (see ``loader``); raises ValueError naming what is wrong."""
    if not isinstance(spec, dict) or not isinstance(spec.get("code"), dict):
        raise ValueError("expected a JSON object with a 'code' object")
    if spec.get("kind", "fn") not in ("fn", "cls"):
        raise ValueError(f"'kind' is {spec.get('kind')!r}: expected 'fn' or 'cls'")
    code = spec["code"]
    for key in ("manifest", "module", "script", "qualname", "by_value"):
        if not isinstance(code.get(key), (str, type(None))):
            raise ValueError(f"'code.{key}' must be a string or null")
    if not (code.get("by_value") or code.get("script") or code.get("module")):
        raise ValueError("'code' names no 'module', 'script' or 'by_value' to load")
    if not code.get("by_value") and not code.get("qualname"):
        raise ValueError("'code.qualname' is missing: which function or class to serve")
    paths = code.get("paths", [""])
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise ValueError("'code.paths' must be a list of strings")
    for p in paths:
        if p.startswith("/") or ".." in p.split("/"):
            raise ValueError(f"'code.paths' entry {p!r} leaves the code snapshot")
    if not isinstance(spec.get("init"), (str, type(None))):
        raise ValueError("'init' must be a string (a blob digest) or null")
    env = spec.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) for k in env):
        raise ValueError("'env' must be an object of names to values")


class PodApp:
    """The ASGI application of one pod."""

    def __init__(self, state: PodState, on_ready: Callable[[bool], None] | None = None) -> None:
        self.state = state
        self._resuming: asyncio.Task[bool] | None = None  # resuming the persisted launch
        self._on_ready = on_ready  # told once the persisted launch is loaded (or failed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except HTTPError as exc:
            self.state.metrics.rejected(exc.status)
            if exc.status != 499:
                await _send_json(send, exc.status, {"error": exc.message, "pod": self.state.pod})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._started()
                self._resuming = asyncio.get_running_loop().create_task(self._resume())
                if self._on_ready is not None:
                    self._resuming.add_done_callback(self._report_ready)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.state.call_threads is not None:
                    self.state.call_threads.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _started(self) -> None:
        """A worker starts serving: tag its output, count it (a pod's supervisor starts a new
        worker when one crashes or packages change)."""
        st = self.state
        logs.tag_output(st.pod, st.rank)
        st.metrics.worker_started(st.root, int(os.environ.get("HOTPOD_RESTARTS") or 0))

    def _report_ready(self, task: asyncio.Task[bool]) -> None:
        ok = not task.cancelled() and task.exception() is None and task.result()
        if self._on_ready is not None:
            self._on_ready(ok)

    async def _resume(self) -> bool:
        """After a (re)start, load the launch a predecessor handed over, else the one the pod
        last served. False if the handed-over launch failed (the supervisor then keeps the old
        worker), or if nothing could be loaded."""
        st = self.state
        restart, st.request_restart = st.request_restart, None  # resuming never asks again
        try:
            handed = _read_json(st.next_launch_file)
            failed: tuple[str, str] | None = None
            if handed is not None:
                failed = await self._try_launch(handed)
                st.next_launch_file.unlink(missing_ok=True)
                if failed is None:
                    return True
                failure = _read_json(st.launch_error_file)  # what the client waits to hear
            spec = _read_json(st.launch_file)
            ok = spec is None or await self._try_launch(spec) is None
            if failed is not None:
                if failure is not None:  # the fallback's outcome must not hide it
                    self._write_error(failure)
                return False
            return ok
        finally:
            st.request_restart = restart

    async def _try_launch(self, spec: dict[str, Any]) -> tuple[str, str] | None:
        """Load a persisted launch; (message, detail) when that failed."""
        try:
            await self._launch(spec, lambda line: print(f"hotpod-setup: {line}", flush=True))
        except LoadError as exc:
            print(f"hotpod: could not load launch: {exc}\n{exc.tb}", flush=True)
            return str(exc), exc.tb
        except SetupError as exc:
            print(f"hotpod: could not load launch: {exc}\n{exc.tail}", flush=True)
            return str(exc), exc.tail
        print(f"hotpod: resumed launch {spec.get('launch_id')}", flush=True)
        return None

    # -- routing ----------------------------------------------------------------------------

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/health":
            if method not in ("GET", "HEAD"):
                raise HTTPError(405, "use GET /health")
            await _send_json(send, 200, self._health())
            return
        if path == "/metrics":  # no protocol header: Prometheus scrapes it with the token alone
            self._check_auth(scope)
            if method not in ("GET", "HEAD"):
                raise HTTPError(405, "use GET /metrics")
            await _send_bytes(send, 200, self.state.metrics.render(), METRICS_CONTENT_TYPE)
            return
        is_call = path == "/call" or path.startswith("/call/")
        if not is_call and path not in ("/_hotpod/launch", "/_hotpod/info", "/_hotpod/debug"):
            raise HTTPError(404, f"no endpoint {path}; calls go to POST /call or /call/METHOD")
        self._check_auth(scope)
        self._check_protocol(scope)
        if path in ("/_hotpod/info", "/_hotpod/debug"):
            if method not in ("GET", "HEAD"):
                raise HTTPError(405, f"use GET {path}")
            if path == "/_hotpod/debug":  # the debugger sessions waiting on this pod
                await _send_bytes(send, 200, debug.session_json(), wire.CT_JSON)
                return
            await _send_json(send, 200, self._info())
            return
        if method != "POST":
            raise HTTPError(405, f"use POST {path}")
        if path == "/_hotpod/launch":
            await self._handle_launch(scope, receive, send)
        else:
            await self._handle_call(
                scope, receive, send, path[len("/call/") :] if path != "/call" else ""
            )

    def _check_auth(self, scope: Scope) -> None:
        value = _header(scope, b"authorization")
        if not value:
            raise HTTPError(401, "missing Authorization: Bearer <service token>")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode("utf-8", "replace"), self.state.token.encode()
        ):
            raise HTTPError(403, "invalid service token")

    def _check_protocol(self, scope: Scope) -> None:
        version = _header(scope, b"x-hotpod-protocol")
        if version != wire.PROTOCOL_VERSION:
            raise HTTPError(
                400,
                f"protocol mismatch: the client speaks {version or 'no version'}, this pod speaks "
                f"{wire.PROTOCOL_VERSION}; use the same hotpod version on both sides",
            )

    def _health(self) -> dict[str, Any]:
        st = self.state
        return {
            "status": "ok",
            "pod": st.pod,
            "rank": st.rank,
            "pid": os.getpid(),
            "ready": st.loaded is not None,
            "launch_id": st.loaded.launch_id if st.loaded else None,
            "launch_error": _read_json(st.launch_error_file),
        }

    def _info(self) -> dict[str, Any]:
        st = self.state
        info = self._health()
        info.update(service=st.service, started=st.started, venv=str(st.venv) if st.venv else None)
        if st.loaded:
            spec = st.loaded.spec
            info.update(kind=spec.get("kind"), code=spec.get("code"), service=spec.get("service"))
            info["steps"] = self._applied_steps(spec.get("image") or {})
        return info

    def _applied_steps(self, image: dict[str, Any]) -> list[dict[str, Any]]:
        """The launch's image steps, each with when it was applied and how long it took."""
        try:
            data = json.loads((self.state.root / ".hotpod" / "ledger.json").read_text())
            applied = data.get("applied", {}) if isinstance(data, dict) else {}
        except (OSError, ValueError):
            applied = {}
        steps = []
        for step, h in zip(image.get("steps") or [], chain(image), strict=True):
            entry = applied.get(h) or {}
            steps.append(
                {
                    "step": summary(step),
                    "kind": step.get("kind"),
                    "applied": h in applied,
                    "seconds": entry.get("seconds"),
                    "at": entry.get("at"),
                }
            )
        return steps

    # -- launch -----------------------------------------------------------------------------

    async def _handle_launch(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(scope, receive, 16 << 20)
        try:
            spec = json.loads(body)
            _check_spec(spec)
        except RecursionError:
            raise HTTPError(400, "malformed launch spec: nested too deeply") from None
        except ValueError as exc:
            raise HTTPError(400, f"malformed launch spec: {exc}") from None
        stream = _header(scope, b"x-hotpod-stream-logs") == "1"
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] | None = asyncio.Queue() if stream else None

        def emit(line: str) -> None:  # setup progress, from any thread
            print(f"hotpod-setup: {line}", flush=True)
            if queue is not None:
                data = wire.frame(wire.FRAME_LOG, line.encode("utf-8", "replace"))
                loop.call_soon_threadsafe(queue.put_nowait, data)

        async def run() -> bytes:
            t0 = time.perf_counter()
            info: dict[str, Any] = {"pod": self.state.pod, "launch_id": spec.get("launch_id")}
            try:
                info.update(await self._launch(spec, emit))
            except LoadError as exc:
                info.update(type="LoadError", message=str(exc), phase=exc.phase, traceback=exc.tb)
                return wire.frame(wire.FRAME_ERROR, json.dumps(info).encode())
            except SetupError as exc:
                info.update(
                    type="SetupError",
                    message=str(exc),
                    phase="setup",
                    step=exc.step,
                    tail=exc.tail,
                    traceback="",
                )
                return wire.frame(wire.FRAME_ERROR, json.dumps(info).encode())
            info["seconds"] = round(time.perf_counter() - t0, 4)
            return wire.frame(wire.FRAME_JSON, json.dumps(info).encode())

        if queue is not None:
            await self._stream(send, queue, run())
            return
        payload = await run()  # the plain JSON form, for simple clients
        kind, data = wire.FrameDecoder().feed(payload)[0]
        result = json.loads(data)
        if kind == wire.FRAME_ERROR:
            result["error"] = result.pop("message")
            await _send_json(send, 500, result)
        else:
            await _send_json(send, 200, result)

    async def _launch(self, spec: dict[str, Any], emit: Callable[[str], None]) -> dict[str, Any]:
        """Apply the launch's setup steps and load its code; what changed, as plain data.

        A failure is kept in the pod root (``launch_error_file``, reported by /health) until a
        launch succeeds, so that ``hotpod check`` can report it.
        """
        st = self.state
        try:
            result = await self._apply_launch(spec, emit)
        except (LoadError, SetupError) as exc:
            st.metrics.launched("failed")
            self._keep_error(spec, exc)
            raise
        if not result.get("restarting"):  # (a successor reports how its launch went)
            st.launch_error_file.unlink(missing_ok=True)
        st.metrics.launched(
            "restarting"
            if result.get("restarting")
            else "reloaded"
            if result.get("reloaded")
            else "unchanged"
        )
        if st.loaded is not None:
            st.metrics.set_launch(st.loaded.launch_id)
        return result

    def _keep_error(self, spec: dict[str, Any], exc: LoadError | SetupError) -> None:
        error: dict[str, Any] = {
            "launch_id": spec.get("launch_id"),
            "at": time.time(),
            "type": type(exc).__name__,
            "message": str(exc),
        }
        if isinstance(exc, SetupError):
            error.update(
                phase="setup", step=exc.step, reason=exc.reason, tail=exc.tail, detail=exc.tail
            )
        else:
            error.update(phase=exc.phase, step=None, traceback=exc.tb, detail=exc.tb)
        self._write_error(error)

    def _write_error(self, error: dict[str, Any]) -> None:
        path = self.state.launch_error_file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(error))
            os.replace(tmp, path)
        except OSError:
            pass

    async def _apply_launch(
        self, spec: dict[str, Any], emit: Callable[[str], None]
    ) -> dict[str, Any]:
        st = self.state
        world = spec.get("world_size")
        if isinstance(world, int) and world > 0:  # the pool may have been scaled since we started
            os.environ["HOTPOD_WORLD_SIZE"] = str(world)
        async with st.launch_lock:
            current = st.loaded
            if current is not None and current.key == reload_key(spec):
                current.spec = spec  # same code, same init: keep the instance, adopt the new id
                self._persist(spec)
                return {"reloaded": False, "restarting": False}
            loop = asyncio.get_running_loop()
            setup = Setup(st.root, st.store, st.venv, emit, st.metrics.setup_step)
            image = spec.get("image") or {"image_id": None, "steps": []}
            outcome = await loop.run_in_executor(None, setup.run, image, {})
            done = {"ran": outcome.ran, "skipped": outcome.skipped, "reported": outcome.reported}
            if outcome.restart and st.request_restart is not None:
                self._persist(spec, st.next_launch_file)  # the successor loads this launch
                st.request_restart()
                return {"reloaded": True, "restarting": True, **done}
            loaded = await loop.run_in_executor(
                None,
                partial(load, spec, st.store, st.code_dir, current, outcome.paths, outcome.workdir),
            )
            st.loaded = loaded
            st.ready.set()
            self._persist(spec)
            st.launch_error_file.unlink(missing_ok=True)
            print(f"hotpod: serving launch {spec.get('launch_id')}", flush=True)
            return {"reloaded": True, "restarting": False, **done}

    def _persist(self, spec: dict[str, Any], path: Path | None = None) -> None:
        path = path or self.state.launch_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(spec))
        os.replace(tmp, path)

    # -- calls ------------------------------------------------------------------------------

    async def _handle_call(self, scope: Scope, receive: Receive, send: Send, method: str) -> None:
        started = time.perf_counter()
        st = self.state
        accept = _header(scope, b"x-hotpod-accept") or "auto"
        if accept not in wire.SERIALIZATIONS:
            raise HTTPError(
                400, f"X-Hotpod-Accept {accept!r}: expected one of {wire.SERIALIZATIONS}"
            )
        body = await _read_body(scope, receive, st.max_body)
        try:
            args, kwargs = wire.decode_request(body, _header(scope, b"content-type") or "")
        except ProtocolError as exc:
            raise HTTPError(400, str(exc)) from None
        if st.loaded is None and self._resuming is not None and not self._resuming.done():
            await asyncio.wait([self._resuming])  # a restarted worker: wait for its code
        if st.loaded is None:
            raise HTTPError(503, "this pod serves no code yet; deploy it with .to() first")
        loaded = st.loaded
        try:
            target, value = loaded.resolve(method)
        except LookupError as exc:
            raise HTTPError(404, str(exc)) from None
        request_id = _header(scope, b"x-hotpod-request-id") or uuid.uuid4().hex
        stream = _header(scope, b"x-hotpod-stream-logs") == "1"
        loop = asyncio.get_running_loop()
        items = _is_generator_function(target)  # its answer streams, logs asked for or not
        queue: asyncio.Queue[object] | None = asyncio.Queue() if stream or items else None
        log = logs.CallLog(request_id, st.pod_log, loop, queue if stream else None, st.pod, st.rank)

        if target is None:
            if args or kwargs:
                raise HTTPError(
                    400, f"{method!r} is an attribute, not a method; call it with no arguments"
                )
            target = partial(lambda v: v, value)
        # async code is cancelled when the caller goes away; sync code cannot be interrupted
        cancellable = items or inspect.iscoroutinefunction(target)

        debugging = debug.current.set(self._call_debug(scope, request_id, log, loop, queue))
        try:
            work = self._measured(
                method, started, self._invoke(target, args, kwargs, accept, log, queue)
            )
            if queue is None:
                out = await (_until_disconnect(receive, work) if cancellable else work)
                if isinstance(out, bytes):
                    await _send_bytes(send, 200, out, wire.CT_FRAMES)
                    return
                # a plain function returned a generator (the call was counted when it returned)
                queue = asyncio.Queue()
                work = self._stream_items(out, accept, log, queue)
            await self._stream(send, queue, work, receive if cancellable else None, receive)
        except _Disconnected:
            return  # the caller went away: its work was cancelled, nobody to answer
        finally:
            debug.current.reset(debugging)

    async def _measured(self, method: str, started: float, work: Awaitable[_Out]) -> _Out:
        """``work``'s result frames, counted in the pod's metrics."""
        metrics = self.state.metrics
        metrics.call_started()
        error: str | None = "CancelledError"
        try:
            payload = await work
            error = _error_type(payload) if isinstance(payload, bytes) else None
            return payload
        except BaseException as exc:
            error = type(exc).__name__
            raise
        finally:
            metrics.call_done(method, started, error)

    def _call_debug(
        self,
        scope: Scope,
        request_id: str,
        log: logs.CallLog,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[object] | None,
    ) -> debug.CallDebug:
        """How this call's breakpoints announce a waiting debugger session."""

        def announce(info: dict[str, Any], line: str) -> None:  # from the call's thread
            log.write("stderr", f"hotpod: {line}\n")
            if queue is not None:
                data = wire.frame(wire.FRAME_DEBUG, json.dumps(info).encode())
                loop.call_soon_threadsafe(queue.put_nowait, data)

        options = debug.DebugOptions.parse(_header(scope, b"x-hotpod-debug"))
        return debug.CallDebug(options, announce, request_id, streaming=queue is not None)

    async def _stream(
        self,
        send: Send,
        queue: asyncio.Queue[object],
        work: Awaitable[object],
        watch: Receive | None = None,
        receive: Receive | None = None,
    ) -> None:
        """Answer with frames: those ``queue`` gets while ``work`` runs, then ``work``'s own.

        Work that finishes before anything is queued is answered with one plain body. With
        ``watch``, the caller going away (``http.disconnect``) cancels ``work`` at once; with
        ``receive``, from the moment a stream of items starts (raises ``_Disconnected``).
        """
        loop = asyncio.get_running_loop()
        done = object()

        async def run() -> None:
            try:
                queue.put_nowait(await work)
            finally:  # even when the runtime itself failed: the response must end, not hang
                queue.put_nowait(done)

        task = loop.create_task(run())
        watcher = _watch(watch, task) if watch is not None else None
        try:
            first = await queue.get()
            if first is done:
                await task  # raises the runtime's error
                raise HTTPError(500, "the call ended without a result")
            if not queue.empty() and queue._queue[0] is done:  # type: ignore[attr-defined]
                await _send_bytes(send, 200, first, wire.CT_FRAMES)  # type: ignore[arg-type]
                await task
                return
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", wire.CT_FRAMES.encode()),
                        (b"x-hotpod-protocol", wire.PROTOCOL_VERSION.encode()),
                    ],
                }
            )
            item: object = first
            connected = True
            while True:
                if watcher is None and receive is not None and item == _STREAM_START:
                    watcher = _watch(receive, task)  # a stream the caller may stop early
                chunk = [item]
                finished = False
                while not queue.empty():
                    nxt = queue.get_nowait()
                    if nxt is done:
                        finished = True
                        break
                    chunk.append(nxt)
                if connected:
                    try:
                        await send(
                            {
                                "type": "http.response.body",
                                "body": b"".join(chunk),  # type: ignore[arg-type]
                                "more_body": not finished,
                            }
                        )  # type: ignore[arg-type]
                    except Exception:  # the caller went away; the call still runs to its end
                        connected = False
                if finished:
                    break
                item = await queue.get()
                if item is done:
                    if connected:
                        try:
                            await send(
                                {"type": "http.response.body", "body": b"", "more_body": False}
                            )
                        except Exception:
                            pass
                    break
            await task
        except asyncio.CancelledError:
            if watcher is not None and watcher.done() and not watcher.cancelled():
                raise _Disconnected() from None  # we cancelled the work: the caller went away
            raise
        finally:
            if watcher is not None:
                watcher.cancel()

    async def _invoke(
        self,
        target: Callable[..., Any],
        args: list,
        kwargs: dict,
        accept: str,
        log: logs.CallLog,
        queue: asyncio.Queue[object] | None,
    ) -> bytes | _Items:
        """Run the user's code under the call's log; returns the result or error frames.

        When the code is (or returns) a generator, its items go to ``queue`` as they come and
        the end or error frames are returned; with no ``queue``, the generator is returned.
        """
        st = self.state
        token = logs.current_call.set(log)
        try:
            result: Any
            if inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target):
                try:
                    result = target(*args, **kwargs)
                    if inspect.iscoroutine(result):
                        result = await result
                    if not isinstance(result, _GENERATORS):
                        return wire.encode_result(result, accept)
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:  # the user's SystemExit too: it must not stop the pod
                    return self._error_frames(exc)
                finally:
                    log.flush()
            else:
                result = await st.pool().run(self._run_sync, target, args, kwargs, accept, log)
                if type(result) is bytes:
                    return result
            if queue is None:
                return result  # type: ignore[no-any-return]
            return await self._stream_items(result, accept, log, queue)
        finally:
            logs.current_call.reset(token)

    def _run_sync(
        self, target: Callable[..., Any], args: list, kwargs: dict, accept: str, log: logs.CallLog
    ) -> bytes | _Items:
        try:
            result = target(*args, **kwargs)
            if isinstance(result, _GENERATORS):
                return result  # type: ignore[no-any-return]
            if inspect.isawaitable(result):
                result = asyncio.run(_await(result))
            return wire.encode_result(result, accept)
        except BaseException as exc:  # the user's SystemExit too: it must not stop the pod
            log.flush()
            debug.post_mortem(exc)  # when the call asked for it: a session on the failing frame
            return self._error_frames(exc)
        finally:
            log.flush()

    async def _stream_items(
        self, items: _Items, accept: str, log: logs.CallLog, queue: asyncio.Queue[object]
    ) -> bytes:
        """Send a generator's items to ``queue`` as it yields them; returns the end frame, or
        the error frames of what it raised. Cancelled, an async generator is cancelled where
        it waits; a sync one is closed once the item it is producing is done."""
        token = logs.current_call.set(log)
        queue.put_nowait(_STREAM_START)
        try:
            if isinstance(items, types.AsyncGeneratorType):
                try:
                    async for item in items:
                        queue.put_nowait(wire.encode_item(item, accept))
                    return _STREAM_END
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:
                    return self._error_frames(exc)
                finally:
                    log.flush()
                    await _aclose(items)
            stop = threading.Event()
            try:
                loop = asyncio.get_running_loop()
                return await self.state.pool().run(  # type: ignore[no-any-return]
                    self._pull, items, accept, log, loop, queue, stop
                )
            except asyncio.CancelledError:
                stop.set()
                raise
        finally:
            logs.current_call.reset(token)

    def _pull(
        self,
        gen: types.GeneratorType[Any, Any, Any],
        accept: str,
        log: logs.CallLog,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[object],
        stop: threading.Event,
    ) -> bytes:
        """Pull a sync generator's items on a call thread, until it ends or ``stop`` is set."""
        try:
            for item in gen:
                data = wire.encode_item(item, accept)
                if stop.is_set():
                    break
                loop.call_soon_threadsafe(queue.put_nowait, data)
            return _STREAM_END
        except BaseException as exc:  # the user's SystemExit too: it must not stop the pod
            log.flush()
            debug.post_mortem(exc)
            return self._error_frames(exc)
        finally:
            gen.close()
            log.flush()

    def _error_frames(self, exc: BaseException) -> bytes:
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        # drop the runtime's own frame from the top of the traceback
        text = tb[0] + "".join(tb[2:]) if len(tb) > 2 else "".join(tb)
        call = logs.current_call.get()
        if call is not None:  # where to read the call's output later
            rid = call.request_id[: loglines.REQUEST_ID_CHARS]
            text += (
                f"(request {rid} on pod {self.state.pod}: its output is in "
                f"'hotpod logs {self.state.service} --request {rid}')\n"
            )
        return wire.encode_error(exc, text, self.state.pod, self.state.rank)


def _read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON file the runtime keeps, or None when it is absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        print(f"hotpod: ignoring unreadable {path}: {exc}", flush=True)
        return None
    return data if isinstance(data, dict) else None


async def _await(awaitable: Any) -> Any:
    return await awaitable


_Items = types.GeneratorType | types.AsyncGeneratorType
_Out = TypeVar("_Out")
_GENERATORS = (types.GeneratorType, types.AsyncGeneratorType)
_STREAM_START = wire.frame(wire.FRAME_STREAM, b"")
_STREAM_END = wire.frame(wire.FRAME_END, b"")


class _Disconnected(Exception):
    """The caller closed the connection; the call's work was cancelled."""


def _is_generator_function(target: Callable[..., Any] | None) -> bool:
    return inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target)


async def _disconnect(receive: Receive) -> None:
    """Returns when the caller has gone away (or the response is complete)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _watch(receive: Receive, task: asyncio.Task[Any]) -> asyncio.Task[None]:
    """A task that cancels ``task`` when the caller disconnects before it is done."""
    watcher = asyncio.get_running_loop().create_task(_disconnect(receive))

    def cancel(w: asyncio.Task[None]) -> None:
        if not w.cancelled() and not task.done():
            task.cancel()

    watcher.add_done_callback(cancel)
    return watcher


async def _until_disconnect(receive: Receive, work: Awaitable[_Out]) -> _Out:
    """``work``'s result; cancels it and raises ``_Disconnected`` if the caller goes away."""
    task = asyncio.ensure_future(work)
    watcher = _watch(receive, task)
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            raise _Disconnected() from None
        raise
    finally:
        watcher.cancel()


async def _aclose(gen: types.AsyncGeneratorType[Any, Any]) -> None:
    try:
        await gen.aclose()
    except BaseException:  # a generator that will not close (it yields in finally): leave it
        pass


def _error_type(payload: bytes) -> str | None:
    """The exception type a call's result frames carry, or None for a result."""
    if payload[:1] not in (wire.FRAME_EXC, wire.FRAME_ERROR):
        return None
    for kind, data in wire.FrameDecoder().feed(payload):
        if kind == wire.FRAME_ERROR:
            try:
                name = str(json.loads(data).get("type") or "Exception")
                return name.removeprefix("builtins.")
            except (ValueError, AttributeError):
                break
    return "Exception"
