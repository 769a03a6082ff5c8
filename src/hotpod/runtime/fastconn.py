"""The fast path's calls, and the connection thread that serves them (see :mod:`.fastcall`).

``fast_head`` and ``accept`` decide whether a request is a fast call (the same rules on the
event loop and on a connection thread); ``execute`` runs one on the current thread; ``Conn`` is
a connection handed to a call thread: it answers calls and reads the next requests with blocking
socket calls until one does not qualify, the connection idles, closes, or the server stops.
"""

from __future__ import annotations

import hmac
import inspect
import os
import socket
import struct
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httptools

from hotpod import wire
from hotpod.errors import ProtocolError
from hotpod.runtime import debug, logs

if TYPE_CHECKING:
    import asyncio

    from hotpod.runtime.app import PodApp
    from hotpod.runtime.state import PodState

#: the largest request body taken on the fast path (larger ones: the ordinary path)
MAX_FAST_BODY = 1 << 20
#: an answer at most this large is written by the call thread; larger ones by the event loop
#: (calls answered once, not on a connection thread, which writes every answer itself)
MAX_DIRECT_ANSWER = 1 << 18
#: a connection thread that waits this long for the connection's next request gives the
#: connection back to the event loop (and its thread to the pool)
IDLE_HANDBACK = 2.0
#: a request head larger than this is given back to the event loop unparsed
MAX_HEAD = 1 << 16

_ORDINARY = (b"transfer-encoding", b"x-hotpod-debug", b"x-hotpod-stream-logs", b"expect")
_ACCEPT = {b"auto": "auto", b"json": "json", b"pickle": "pickle"}
_CTYPES = (wire.CT_JSON.encode(), wire.CT_PICKLE.encode())
_VERSION = wire.PROTOCOL_VERSION.encode()
_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: "
    + wire.CT_FRAMES.encode()
    + b"\r\nx-hotpod-protocol: "
    + _VERSION
    + b"\r\ncontent-length: "
)
#: a fast call's debugger context: no options, and nobody to announce a session to (the
#: caller does not stream), so ``breakpoint()`` is skipped with a line in the call's output
_QUIET = debug.CallDebug(debug.DebugOptions(), lambda _info, _line: None, "", streaming=False)


def answer_head(size: int) -> bytes:
    """The head of a fast call's answer of ``size`` bytes."""
    return _HEAD + str(size).encode() + b"\r\n\r\n"


def fast_head(
    url: bytes, parser: Any, headers: list[tuple[bytes, bytes]], limit: int
) -> int | None:
    """The body's length when a parsed request head may be a fast call: ``POST /call[/m]``,
    HTTP/1.1 keep-alive, one declared length within the pod's limit and ``MAX_FAST_BODY``, no
    chunked body, no ``Expect``, neither log streaming nor debugger options; else None."""
    if (
        not (url == b"/call" or url.startswith(b"/call/"))
        or b"?" in url
        or b"%" in url
        or parser.get_method() != b"POST"
        or parser.get_http_version() != "1.1"
        or not parser.should_keep_alive()
        or parser.should_upgrade()
    ):
        return None
    length = None
    for name, value in headers:
        if name == b"content-length":
            if length is not None:
                return None
            length = value
        elif name in _ORDINARY and (name != b"x-hotpod-stream-logs" or value == b"1"):
            return None
    if length is None or not length.isdigit() or int(length) > min(MAX_FAST_BODY, limit):
        return None
    return int(length)


class Call:
    """A fast call, checked and decoded, not yet run."""

    __slots__ = ("accept", "args", "kwargs", "method", "request_id", "scope", "started", "target")

    def __init__(
        self,
        target: Callable[..., Any],
        args: list,
        kwargs: dict,
        accept: str,
        request_id: str,
        method: str,
        started: float,
    ) -> None:
        self.target = target
        self.args = args
        self.kwargs = kwargs
        self.accept = accept
        self.request_id = request_id
        self.method = method
        self.started = started
        self.scope: dict[str, Any] | None = None  # the ASGI scope, when the event loop read it


def accept(
    st: PodState, url: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> Call | None:
    """The call a fast-path request makes; None when the ordinary path must answer it (it
    answers errors: bad token or body, unknown method, no code loaded...)."""
    h = dict(headers)
    if (
        h.get(b"x-hotpod-protocol") != _VERSION
        or h.get(b"content-type") not in _CTYPES
        or not _authorized(h, st.token)
    ):
        return None
    accept = _ACCEPT.get(h.get(b"x-hotpod-accept", b"auto"))
    loaded = st.loaded
    if accept is None or loaded is None:
        return None
    method = url[6:].decode("ascii") if url != b"/call" else ""
    try:
        target, _ = loaded.resolve(method)
    except LookupError:
        return None
    if target is None or not _plain_sync(target):
        return None
    try:
        args, kwargs = wire.decode_request(body, h[b"content-type"].decode())
    except ProtocolError:
        return None
    rid = h.get(b"x-hotpod-request-id")
    request_id = rid.decode("latin-1") if rid else os.urandom(16).hex()
    return Call(target, args, kwargs, accept, request_id, method, time.perf_counter())


def execute(app: PodApp, call: Call) -> wire.Body | tuple[Any, str, logs.CallLog, dict[str, Any]]:
    """Run ``call`` on this thread, counted in the metrics, its output in the pod log under
    its request id: the answer's body, or (generator, accept, log, scope) when the function
    returned a generator (to be streamed from the event loop)."""
    st = app.state
    st.metrics.call_started()
    log = logs.CallLog(call.request_id, st.pod_log, None, None, st.pod, st.rank)
    token = logs.current_call.set(log)
    dbg = debug.current.set(_QUIET)
    try:
        out = app._run_sync(call.target, call.args, call.kwargs, call.accept, log)
    except BaseException as exc:  # the runtime's own failure: the answer must still end
        out = app._error_frames(exc)
    finally:
        debug.current.reset(dbg)
        logs.current_call.reset(token)
    if not isinstance(out, (bytes, wire.Parts)):  # it returned a generator: stream it
        try:
            _not_plain[getattr(call.target, "__func__", call.target)] = True
        except TypeError:  # (not weakly referenceable: checked again each call)
            pass
        st.metrics.call_done_threadsafe(call.method, call.started, None)
        return out, call.accept, log, call.scope or _scope(call)
    st.metrics.call_done_threadsafe(call.method, call.started, _error_type(out))
    return out


class _Handback:
    """The event loop must read the connection's next request."""


_HANDBACK = _Handback()


class _Head:
    """httptools callbacks collecting a request's URL and headers."""

    __slots__ = ("done", "headers", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.done = True


class Conn:
    """A connection handed to a call thread (``serve``), with a blocking duplicate of its
    descriptor. ``take_back(data, stream, close)`` runs on the event loop when the thread
    ends: ``data`` is what it read of a request it did not take, ``stream`` a generator's
    (items, accept, log, scope) to stream, ``close`` whether the connection must close."""

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        app: PodApp,
        take_back: Callable[[bytes, tuple[Any, ...] | None, bool], None],
    ) -> None:
        self.sock: socket.socket | None = sock
        self.loop = loop
        self.app = app
        self.closing = False
        self._take_back = take_back
        self._lock = threading.Lock()
        self._buf = b""

    def stop(self) -> None:
        """From the event loop (the server stops): end after the call in progress, if any; a
        thread waiting for the next request wakes at once (the connection stops reading)."""
        with self._lock:
            self.closing = True
            if self.sock is not None:
                try:
                    self.sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass

    def release(self) -> None:
        """Close the duplicate descriptor; the connection is non-blocking again."""
        with self._lock:
            sock, self.sock = self.sock, None
        if sock is not None:
            try:
                sock.setblocking(False)
            except OSError:
                pass
            sock.close()

    def serve(self, call: Call) -> None:
        """On a call thread: run ``call`` and the connection's next fast calls."""
        data, stream, close = b"", None, True
        sock = self.sock
        try:
            assert sock is not None
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _IDLE)
            while True:
                out = execute(self.app, call)
                if not isinstance(out, (bytes, wire.Parts)):
                    data, stream, close = self._buf, out, False
                    break
                if not self._send(sock, out) or self.closing:
                    break
                nxt = self._next(sock)
                if nxt is None:
                    break
                if isinstance(nxt, _Handback):
                    data, close = self._buf, False
                    break
                call = nxt
        finally:
            self.release()
            try:
                self.loop.call_soon_threadsafe(self._take_back, data, stream, close)
            except RuntimeError:  # the loop is closed: the pod is shutting down
                pass

    def _send(self, sock: socket.socket, out: wire.Body) -> bool:
        try:
            if isinstance(out, bytes):
                sock.sendall(answer_head(len(out)) + out)
            else:
                for piece in wire.coalesce([answer_head(out.nbytes), out]):
                    sock.sendall(piece)
        except OSError:  # the caller went away
            return False
        return True

    def _next(self, sock: socket.socket) -> Call | _Handback | None:
        """The connection's next request as a fast call; ``_HANDBACK`` when the event loop
        must take it (its bytes read so far in ``_buf``); None when the connection ended."""
        buf = self._buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            if len(buf) > MAX_HEAD:
                return _HANDBACK
            got = self._recv(sock)
            if not isinstance(got, bytes):
                return got
            buf = self._buf = buf + got if buf else got
        body_at = end + 4
        head = _Head()
        parser = httptools.HttpRequestParser(head)
        try:
            parser.feed_data(buf[:body_at])
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return _HANDBACK  # (the event loop answers it 400)
        st = self.app.state
        length = fast_head(head.url, parser, head.headers, st.max_body) if head.done else None
        if length is None:
            return _HANDBACK
        need = body_at + length
        while len(buf) < need:
            got = self._recv(sock)
            if not isinstance(got, bytes):
                return got
            buf = self._buf = buf + got
        call = accept(st, head.url, head.headers, buf[body_at:need])
        if call is None:
            return _HANDBACK
        self._buf = buf[need:]
        return call

    def _recv(self, sock: socket.socket) -> bytes | _Handback | None:
        try:
            got = sock.recv(65536)
        except BlockingIOError:  # idle for IDLE_HANDBACK seconds (SO_RCVTIMEO)
            return _HANDBACK
        except OSError:
            return None
        return got or None


_IDLE = struct.pack("ll", int(IDLE_HANDBACK), int(IDLE_HANDBACK % 1 * 1e6))


def _scope(call: Call) -> dict[str, Any]:
    """An ASGI scope for a call a connection thread read (to stream its answer)."""
    path = f"/call/{call.method}" if call.method else "/call"
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": None,
        "client": None,
        "scheme": "http",
        "root_path": "",
        "headers": [],
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "state": {},
    }


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


#: functions known to be plain sync (True) or seen returning a generator (False)
_not_plain: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
_plain: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _plain_sync(target: Callable[..., Any]) -> bool:
    func = getattr(target, "__func__", target)
    try:
        known = _plain.get(func)
    except TypeError:  # (not weakly referenceable)
        known = None
    if known is not None:
        return known and func not in _not_plain
    plain = not (
        inspect.iscoroutinefunction(target)
        or inspect.isasyncgenfunction(target)
        or inspect.isgeneratorfunction(target)
    )
    try:
        _plain[func] = plain
    except TypeError:
        pass
    return plain and func not in _not_plain


def _error_type(out: wire.Body) -> str | None:
    if isinstance(out, wire.Parts) or out[:1] not in (wire.FRAME_EXC, wire.FRAME_ERROR):
        return None
    from hotpod.runtime.calls import _error_type as error_type

    return error_type(out)
