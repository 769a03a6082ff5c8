"""The fast path's calls, and the connection thread that serves them (see :mod:`.fastcall`).

``fast_head`` and ``accept`` decide whether a request is a fast call (the same rules on the
event loop and on a connection thread); ``execute`` runs one on the current thread; ``Conn`` is
a connection handed to a call thread: it answers calls and reads the next requests with blocking
socket calls until one does not qualify, the connection idles, closes, or the server stops.

A call that streams its logs (``X-Hotpod-Stream-Logs: 1``) is answered with the bytes the
ordinary path sends (``calls``): one body with a length when it printed nothing, else a chunked
answer that starts at its first line, a chunk per log frame written as the line is printed (from
whichever thread prints it, under the answer's lock), then the result or error frames and the
last chunk. Lines printed after the call ended (by threads it started) go to the pod log only.
"""

from __future__ import annotations

import hmac
import inspect
import json
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
from hotpod.runtime import calls, debug, logs

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

_ORDINARY = (b"transfer-encoding", b"x-hotpod-debug", b"expect")
_ACCEPT = {b"auto": "auto", b"json": "json", b"pickle": "pickle"}
_CTYPES = (wire.CT_JSON.encode(), wire.CT_PICKLE.encode())
_VERSION = wire.PROTOCOL_VERSION.encode()
# (the ordinary path's headers, in its order: the same bytes on the wire from both paths)
_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: " + wire.CT_FRAMES.encode() + b"\r\ncontent-length: "
_HEAD_END = b"\r\nx-hotpod-protocol: " + _VERSION + b"\r\n\r\n"
_CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: "
    + wire.CT_FRAMES.encode()
    + b"\r\nx-hotpod-protocol: "
    + _VERSION
    + b"\r\ntransfer-encoding: chunked\r\n\r\n"
)
#: a fast call's debugger context: no options, and nobody to announce a session to (the
#: caller does not stream), so ``breakpoint()`` is skipped with a line in the call's output
_QUIET = debug.CallDebug(debug.DebugOptions(), lambda _info, _line: None, "", streaming=False)


def answer_head(size: int) -> bytes:
    """The head of a fast call's answer of ``size`` bytes."""
    return _HEAD + str(size).encode() + _HEAD_END


def send_answer(sock: socket.socket, out: wire.Body) -> bool:
    """Send a whole answer of ``out`` (its length known); False if the caller went away."""
    try:
        if isinstance(out, bytes):
            sock.sendall(answer_head(len(out)) + out)
        else:
            for piece in wire.coalesce([answer_head(out.nbytes), out]):
                sock.sendall(piece)
    except OSError:
        return False
    return True


def fast_head(
    url: bytes, parser: Any, headers: list[tuple[bytes, bytes]], limit: int
) -> int | None:
    """The body's length when a parsed request head may be a fast call: ``POST /call[/m]``,
    HTTP/1.1 keep-alive, one declared length within the pod's limit and ``MAX_FAST_BODY``, no
    chunked body, no ``Expect``, no debugger options; else None."""
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
        elif name in _ORDINARY:
            return None
    if length is None or not length.isdigit() or int(length) > min(MAX_FAST_BODY, limit):
        return None
    return int(length)


class Call:
    """A fast call, checked and decoded, not yet run."""

    __slots__ = (
        "accept",
        "args",
        "kwargs",
        "method",
        "request_id",
        "scope",
        "started",
        "stream",
        "target",
    )

    def __init__(
        self,
        target: Callable[..., Any],
        args: list,
        kwargs: dict,
        accept: str,
        request_id: str,
        method: str,
        started: float,
        stream: bool = False,
    ) -> None:
        self.target = target
        self.stream = stream  # the caller streams its logs
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
    stream = h.get(b"x-hotpod-stream-logs") == b"1"
    return Call(target, args, kwargs, accept, request_id, method, time.perf_counter(), stream)


class Answer:
    """A log-streaming call's answer, written on the connection by the thread that runs the
    call and by any thread that prints while it runs (one lock): chunked from the first log
    frame on, one body with a length if none came. ``ok`` turns False if the caller went."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.ok = True
        self.started = False  # the chunked head is sent
        self._open = True
        self._lock = threading.Lock()

    def frame(self, data: bytes) -> None:
        """Send a frame at once, as one chunk (a line printed after the call ended: dropped,
        as the ordinary path drops it; it is in the pod log)."""
        with self._lock:
            if self._open and self.ok:
                self._chunks([data], b"")

    def end(self, out: wire.Body) -> bool:
        """Send the call's result or error frames and end the answer; False if the caller
        went away."""
        with self._lock:
            self._open = False
            if not self.ok:
                return False
            if self.started:
                self._chunks(wire.coalesce([out]), b"0\r\n\r\n")
                return self.ok
            self.ok = send_answer(self.sock, out)
            return self.ok

    def _chunks(self, pieces: list[bytes | bytearray | memoryview], last: bytes) -> None:
        """(lock held) ``pieces`` as chunks, as uvicorn writes them, then ``last``."""
        out: list[bytes | bytearray | memoryview] = [] if self.started else [_CHUNKED_HEAD]
        self.started = True
        for piece in pieces:
            if len(piece) > MAX_DIRECT_ANSWER:  # (large buffers as they are: no copy)
                out += [b"%x\r\n" % len(piece), piece, b"\r\n"]
            elif piece:
                out.append(b"%x\r\n" % len(piece) + piece + b"\r\n")
        out.append(last)
        try:
            if len(out) <= 3:
                self.sock.sendall(b"".join(out))
            else:
                for data in out:
                    self.sock.sendall(data)
        except OSError:  # the caller went away: the call runs on, its output in the pod log
            self.ok = False

    def announce(self, log: logs.CallLog) -> Callable[[dict[str, Any], str], None]:
        """How a breakpoint in the call announces its debugger session (as ``calls`` does)."""

        def announce(info: dict[str, Any], line: str) -> None:
            log.write("stderr", f"hotpod: {line}\n")
            self.frame(wire.frame(wire.FRAME_DEBUG, json.dumps(info).encode()))

        return announce


def execute(
    app: PodApp, call: Call, answer: Answer | None = None
) -> wire.Body | tuple[Any, str, logs.CallLog, dict[str, Any]]:
    """Run ``call`` on this thread, counted in the metrics, its output in the pod log under
    its request id: the answer's body, or (generator, accept, log, scope) when the function
    returned a generator (to be streamed from the event loop). With ``answer`` (the call
    streams its logs), log frames go to it as they come, and a generator's items too (then
    the end or error frames are returned)."""
    st = app.state
    st.metrics.call_started()
    sink = answer.frame if answer is not None else None
    log = logs.CallLog(call.request_id, st.pod_log, None, None, st.pod, st.rank, sink)
    token = logs.current_call.set(log)
    if answer is None:
        dbg = debug.current.set(_QUIET)
    else:
        dbg = debug.current.set(
            debug.CallDebug(debug.DebugOptions(), answer.announce(log), call.request_id)
        )
    try:
        try:
            out = app._run_sync(call.target, call.args, call.kwargs, call.accept, log)
        except BaseException as exc:  # the runtime's own failure: the answer must still end
            out = app._error_frames(exc)
        if isinstance(out, (bytes, wire.Parts)):
            st.metrics.call_done_threadsafe(call.method, call.started, _error_type(out))
            return out
        try:  # it returned a generator: stream it (and take the ordinary path from now on)
            _plain[getattr(call.target, "__func__", call.target)] = False
        except TypeError:  # (not weakly referenceable: checked again each call)
            pass
        if answer is None:
            st.metrics.call_done_threadsafe(call.method, call.started, None)
            return out, call.accept, log, call.scope or _scope(call)
        end = _pull(app, out, call.accept, log, answer)  # (counted at its end, as ``calls``)
        st.metrics.call_done_threadsafe(call.method, call.started, _error_type(end))
        return end
    finally:
        debug.current.reset(dbg)
        logs.current_call.reset(token)


def _pull(app: PodApp, gen: Any, accept: str, log: logs.CallLog, answer: Answer) -> bytes:
    """A generator's items sent as it yields them (as ``calls`` streams them); the end frame,
    or the error frames of what it raised. The caller gone, it is closed after the item."""
    answer.frame(calls._STREAM_START)

    def emit(data: bytes) -> bool:
        if not answer.ok:
            return False
        answer.frame(data)
        return True

    return app._pull(gen, accept, log, emit)


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
                answer = Answer(sock) if call.stream else None
                out = execute(self.app, call, answer)
                if not isinstance(out, (bytes, wire.Parts)):
                    data, stream, close = self._buf, out, False
                    break
                sent = answer.end(out) if answer is not None else send_answer(sock, out)
                if not sent or self.closing:
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


#: functions known to be plain sync (True), or not: async, generators, or seen returning one
_plain: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _plain_sync(target: Callable[..., Any]) -> bool:
    func = getattr(target, "__func__", target)
    try:
        known = _plain.get(func)
    except TypeError:  # (not weakly referenceable)
        known = None
    if known is not None:
        return known
    plain = not (
        inspect.iscoroutinefunction(target)
        or inspect.isasyncgenfunction(target)
        or inspect.isgeneratorfunction(target)
    )
    try:
        _plain[func] = plain
    except TypeError:
        pass
    return plain


def _error_type(out: wire.Body) -> str | None:
    return None if isinstance(out, wire.Parts) else calls._error_type(out)
