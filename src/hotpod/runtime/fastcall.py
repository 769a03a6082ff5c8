"""The common call, answered without the ASGI layers: uvicorn's HTTP protocol with a fast path.

A call to a plain sync function or method (not a generator, not ``async def``), with a small
body, no log streaming and no debugger options, is most of a pod's traffic, and on a trivial call
the pod's CPU went mostly to layers around it: uvicorn's request cycle and task, the ASGI
messages, the call path's tasks and queues, and two thread hand-offs (to the call thread and
back to the event loop). Here the event loop parses the request (httptools, as uvicorn does),
checks it, and hands it to a call thread, which runs the code and writes the whole answer (head
and body, one ``write``) itself, on its own duplicate of the connection's descriptor: one hand-off
per call, and the descriptor cannot be reused by another connection meanwhile.

Everything else, and every request this path does not accept as it is (a bad token, a bad
body, a pod not loaded yet...), is replayed through uvicorn's ordinary cycle into ``PodApp``,
which answers it as before (4xx with a message and so on). A request that arrives on the same
connection while a fast call runs waits for it (uvicorn's pipelining queue). A function that
returned a generator is streamed by ``PodApp`` from the event loop, and is not taken here again.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from hotpod import wire
from hotpod.errors import ProtocolError
from hotpod.runtime import debug, logs
from hotpod.runtime.app import PodApp
from hotpod.runtime.asgi import Receive, Scope, Send

#: the largest request body taken on the fast path (larger ones: the ordinary path)
MAX_FAST_BODY = 1 << 20
#: an answer at most this large is written by the call thread; larger ones by the event loop
MAX_DIRECT_ANSWER = 1 << 18
_ORDINARY = (b"transfer-encoding", b"x-hotpod-debug", b"x-hotpod-stream-logs")
_ACCEPT = {b"auto": "auto", b"json": "json", b"pickle": "pickle"}
_CTYPES = (wire.CT_JSON.encode(), wire.CT_PICKLE.encode())
_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: "
    + wire.CT_FRAMES.encode()
    + b"\r\nx-hotpod-protocol: "
    + wire.PROTOCOL_VERSION.encode()
    + b"\r\ncontent-length: "
)


class _Event:
    def set(self) -> None:
        pass


class _FastCycle:
    """Stands in for uvicorn's cycle while a fast call runs: uvicorn queues a request that
    arrives meanwhile, and its shutdown lets the call finish (``keep_alive`` False)."""

    def __init__(self) -> None:
        self.response_complete = False
        self.keep_alive = True
        self.disconnected = False
        self.message_event = _Event()


class PodProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the fast path for plain calls (see the module)."""

    def __init__(self, *args: Any, pod_app: PodApp, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pod_app = pod_app
        self._fast_lock = threading.Lock()
        self._fast: list[bytes] | None = None  # the body of the fast call being read
        self._fd = -1

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1

    # -- parser callbacks -------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        url = self.url
        if (
            self._fd >= 0
            and (url == b"/call" or url.startswith(b"/call/"))
            and b"?" not in url
            and b"%" not in url
            and self.parser.get_method() == b"POST"
            and self.parser.get_http_version() == "1.1"
            and self.parser.should_keep_alive()
            and not self.parser.should_upgrade()
            and (self.cycle is None or self.cycle.response_complete)
            and self._small_body()
        ):
            self._fast = []
            return
        with self._fast_lock:  # (a fast call ending now must see this request queued)
            super().on_headers_complete()

    def _small_body(self) -> bool:
        """A declared length within the pod's limit and ``MAX_FAST_BODY`` (not chunked), and
        neither log streaming nor debugger options asked for (those take the ordinary path)."""
        length = None
        for name, value in self.headers:
            if name == b"content-length":
                length = value
            elif name in _ORDINARY and (name != b"x-hotpod-stream-logs" or value == b"1"):
                return False
        limit = min(MAX_FAST_BODY, self.pod_app.state.max_body)
        return length is not None and length.isdigit() and int(length) <= limit

    def on_body(self, body: bytes) -> None:
        if self._fast is None:
            super().on_body(body)
            return
        self._fast.append(body)

    def on_message_complete(self) -> None:
        if self._fast is None:
            super().on_message_complete()
            return
        body = b"".join(self._fast)
        self._fast = None
        if not self._dispatch(body):
            self._replay(body)

    def _replay(self, body: bytes) -> None:
        """Hand the request just read to uvicorn's ordinary cycle (and so to ``PodApp``)."""
        with self._fast_lock:
            super().on_headers_complete()
        if body:
            super().on_body(body)
        super().on_message_complete()

    # -- the fast path ----------------------------------------------------------------------

    def _dispatch(self, body: bytes) -> bool:
        """Start the call on a call thread; False when the ordinary path must answer it."""
        app = self.pod_app
        st = app.state
        headers = dict(self.headers)
        if (
            headers.get(b"x-hotpod-protocol") != wire.PROTOCOL_VERSION.encode()
            or b"x-hotpod-debug" in headers
            or headers.get(b"x-hotpod-stream-logs", b"0") == b"1"
            or headers.get(b"content-type") not in _CTYPES
            or not _authorized(headers, st.token)
        ):
            return False
        accept = _ACCEPT.get(headers.get(b"x-hotpod-accept", b"auto"))
        loaded = st.loaded
        if accept is None or loaded is None:
            return False
        method = self.url[len(b"/call/") :].decode("ascii") if self.url != b"/call" else ""
        try:
            target, _ = loaded.resolve(method)
        except LookupError:
            return False
        if target is None or not _plain_sync(target):
            return False
        try:
            args, kwargs = wire.decode_request(body, headers[b"content-type"].decode())
        except ProtocolError:
            return False
        pool = st.pool()
        rid = headers.get(b"x-hotpod-request-id")
        request_id = rid.decode("latin-1") if rid else os.urandom(16).hex()
        cycle = _FastCycle()
        self.cycle = cycle  # type: ignore[assignment]
        fd = os.dup(self._fd)
        started = time.perf_counter()
        st.metrics.call_started()
        scope = self.scope
        scope["method"], scope["path"] = "POST", self.url.decode("ascii")
        work = (target, args, kwargs, accept, request_id, cycle, fd, method, started, scope)
        if not pool.submit(self._run, work):
            os.close(fd)
            st.metrics.call_abandoned()
            self.cycle = None  # type: ignore[assignment]
            return False
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )
        return True

    def _run(self, work: tuple[Any, ...]) -> None:
        """On a call thread: run the code, write the answer, end the call."""
        try:
            self._call(*work)
        except BaseException:  # the runtime's own failure: end the connection, never hang it
            self.loop.call_soon_threadsafe(self.transport.close)
            raise

    def _call(
        self,
        target: Callable[..., Any],
        args: list,
        kwargs: dict,
        accept: str,
        request_id: str,
        cycle: _FastCycle,
        fd: int,
        method: str,
        started: float,
        scope: Scope,
    ) -> None:
        app = self.pod_app
        st = app.state
        log = logs.CallLog(request_id, st.pod_log, None, None, st.pod, st.rank)
        token = logs.current_call.set(log)
        dbg = debug.current.set(
            debug.CallDebug(
                debug.DebugOptions.parse(None),
                lambda _info, line: log.write("stderr", f"hotpod: {line}\n"),
                request_id,
                streaming=False,
            )
        )
        try:
            out = app._run_sync(target, args, kwargs, accept, log)
        except BaseException as exc:  # the runtime's own failure: the answer must still end
            out = app._error_frames(exc)
        finally:
            debug.current.reset(dbg)
            logs.current_call.reset(token)
        if not isinstance(out, (bytes, wire.Parts)):  # it returned a generator: stream it
            _not_plain.add(getattr(target, "__func__", target))
            st.metrics.call_done_threadsafe(method, started, None)
            os.close(fd)
            self.loop.call_soon_threadsafe(self._stream, out, accept, log, cycle, scope)
            return
        error = _error_type(out)
        st.metrics.call_done_threadsafe(method, started, error)
        self._answer(out, fd, cycle)

    def _answer(self, out: wire.Body, fd: int, cycle: _FastCycle) -> None:
        size = out.nbytes if isinstance(out, wire.Parts) else len(out)
        head = _HEAD + str(size).encode() + b"\r\n\r\n"
        rest: list[bytes | bytearray | memoryview] = []
        try:
            if isinstance(out, bytes) and size <= MAX_DIRECT_ANSWER:
                data = head + out
                try:
                    n = os.write(fd, data)
                except BlockingIOError:
                    n = 0
                if n < len(data):
                    rest = [data[n:]]
            else:
                rest = wire.coalesce([head, out])
        except OSError:  # the caller went away: nothing to answer
            rest = []
        finally:
            os.close(fd)
        with self._fast_lock:
            cycle.response_complete = not rest  # (else once the loop wrote the rest)
            wake = bool(rest) or bool(self.pipeline) or not cycle.keep_alive
        if wake:
            self.loop.call_soon_threadsafe(self._finish, rest, cycle)

    def _finish(self, rest: list[bytes | bytearray | memoryview], cycle: _FastCycle) -> None:
        """On the event loop: what the call thread could not write, then what waits."""
        with self._fast_lock:
            cycle.response_complete = True
        if self.transport.is_closing():
            return
        for piece in rest:
            self.transport.write(piece)
        if not cycle.keep_alive:
            self.transport.close()
            return
        if self.cycle is cycle:
            self.cycle = None  # type: ignore[assignment]
        if self.pipeline:
            cycle_, app = self.pipeline.pop()
            self.flow.resume_reading()
            self._start_asgi_task(cycle_, app)

    def _stream(
        self, items: Any, accept: str, log: logs.CallLog, cycle: _FastCycle, scope: Scope
    ) -> None:
        """On the event loop: a plain function returned a generator; ``PodApp`` streams it."""
        if self.transport.is_closing():
            return
        app = self.pod_app

        async def stream(scope: Scope, receive: Receive, send: Send) -> None:
            queue: asyncio.Queue[object] = asyncio.Queue()
            work = app._stream_items(items, accept, log, queue)
            try:
                await app._stream(send, queue, work, None, receive)
            except Exception:  # (the caller went away)
                pass

        with self._fast_lock:
            real = RequestResponseCycle(
                scope=scope,  # type: ignore[arg-type]
                transport=self.transport,
                flow=self.flow,
                logger=self.logger,
                access_logger=self.access_logger,
                access_log=self.access_log,
                default_headers=self.server_state.default_headers,
                message_event=asyncio.Event(),
                expect_100_continue=False,
                keep_alive=cycle.keep_alive,
                on_response=self.on_response_complete,
            )
            real.more_body = False
            cycle.response_complete = True
            if self.cycle is cycle:
                self.cycle = real
        self._start_asgi_task(real, stream)  # type: ignore[arg-type]

    def shutdown(self) -> None:
        with self._fast_lock:  # a fast call running: it ends, then the connection closes
            super().shutdown()

    def timeout_keep_alive_handler(self) -> None:
        if isinstance(self.cycle, _FastCycle) and not self.cycle.response_complete:
            self.timeout_keep_alive_task = self.loop.call_later(  # a long call: not idle
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )
            return
        super().timeout_keep_alive_handler()


def protocol_factory(pod_app: PodApp) -> Callable[..., PodProtocol]:
    """uvicorn's ``http=`` argument: the protocol class, bound to the pod's app."""

    def make(*args: Any, **kwargs: Any) -> PodProtocol:
        return PodProtocol(*args, pod_app=pod_app, **kwargs)

    return make


def _authorized(headers: dict[bytes, bytes], token: str) -> bool:
    proxied = headers.get(b"x-hotpod-token")
    if proxied is not None:
        given = proxied.strip()
    else:
        value = headers.get(b"authorization", b"")
        if value[:7].lower() != b"bearer ":
            return False
        given = value[7:].strip()
    return hmac.compare_digest(given, token.encode())


_not_plain: set[Any] = set()  # functions seen returning a generator: streamed by PodApp


def _plain_sync(target: Callable[..., Any]) -> bool:
    func = getattr(target, "__func__", target)
    if func in _not_plain:
        return False
    return not (
        inspect.iscoroutinefunction(target)
        or inspect.isasyncgenfunction(target)
        or inspect.isgeneratorfunction(target)
    )


def _error_type(out: wire.Body) -> str | None:
    if isinstance(out, wire.Parts) or out[:1] not in (wire.FRAME_EXC, wire.FRAME_ERROR):
        return None
    from hotpod.runtime.calls import _error_type as error_type

    return error_type(out)
