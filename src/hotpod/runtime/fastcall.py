"""The common call, answered without the ASGI layers: uvicorn's HTTP protocol with a fast path.

A call to a plain sync function or method (not a generator, not ``async def``), with a small
body and no debugger options, is most of a pod's traffic, and on a trivial call
the pod's CPU went mostly to layers around it: uvicorn's request cycle and task, the ASGI
messages, the call path's tasks and queues, and the hand-offs between the event loop and the
call thread (each costs more CPU than a trivial call itself).

So the connection that carries such a call is handed to a call thread of its own: the event loop
parses the first call (httptools, as uvicorn does), checks it, stops reading the connection and
hands it over. That thread runs the call, writes its answer (head and body, one ``sendall``) on
its own duplicate of the connection's descriptor, set blocking, and then reads the connection's
next requests itself (httptools again, for the head) and runs those that qualify inline: no
event loop, no hand-off per call (:mod:`hotpod.runtime.fastconn`). A call that streams its logs
is answered there too, its lines written on the connection as they are printed, in the bytes
the ordinary path sends. A request that does not
qualify, a connection idle for ``fastconn.IDLE_HANDBACK`` seconds, and a function that returned
a generator (streamed from the event loop, unless the call streams its logs) give the connection back to the event loop, with the
bytes read so far, and it reads the connection again. The connection's close and the server's
graceful shutdown (a successor worker, SIGTERM) end the thread: a call in progress finishes and
is answered, then the connection closes.

Every request this path does not accept as it is (a bad token, a bad body, a pod not loaded
yet...) is replayed through uvicorn's ordinary cycle into ``PodApp``, which answers it as before
(4xx with a message and so on). When every call thread is busy, a call takes the ordinary path
(which waits for one). Two requests pipelined in one read: the first runs on a call thread that
writes its answer and returns (no hand-over); the second waits for it in uvicorn's queue (a
first call that streams its logs is answered by the ordinary cycle then, as it is read).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from hotpod import wire
from hotpod.runtime import fastconn
from hotpod.runtime.app import PodApp
from hotpod.runtime.asgi import Receive, Scope, Send
from hotpod.runtime.fastconn import MAX_DIRECT_ANSWER, Call, Conn, answer_head


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
        self._pending: Call | None = None  # a fast call read in this data_received
        self._pending_body = b""  # (its body)
        self._owner: Conn | None = None  # the connection thread that has the connection
        self._fd = -1

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1

    # -- parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._pending is not None:  # pipelined behind a fast call: that call runs alone
            call, self._pending = self._pending, None
            if call.stream:  # (its lines must stream: the ordinary cycle answers it)
                self._ordinary(call, self._pending_body)
            else:
                self._run_once(call)
            self._pending_body = b""
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        if (
            self._fd >= 0
            and (self.cycle is None or self.cycle.response_complete)
            and fastconn.fast_head(
                self.url,
                self.parser,
                self.headers,
                self.pod_app.state.max_body,
            )
            is not None
        ):
            self._fast = []
            return
        with self._fast_lock:  # (a fast call ending now must see this request queued)
            super().on_headers_complete()

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
        call = fastconn.accept(self.pod_app.state, self.url, self.headers, body)
        if call is None or not self.pod_app.state.pool().can_submit():
            self._replay(body)
            return
        call.scope = self.scope  # type: ignore[assignment]
        self._pending = call  # handed over once this read is parsed (see data_received)
        self._pending_body = body if call.stream else b""
        self.cycle = _FastCycle()  # type: ignore[assignment]  # (queues what is pipelined)

    def _replay(self, body: bytes) -> None:
        """Hand the request just read to uvicorn's ordinary cycle (and so to ``PodApp``)."""
        with self._fast_lock:
            super().on_headers_complete()
        if body:
            super().on_body(body)
        super().on_message_complete()

    def _cycle(self, scope: Any, keep_alive: bool) -> RequestResponseCycle:
        """A request-response cycle of uvicorn's, made as its protocol makes one per request."""
        return RequestResponseCycle(
            scope=scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=keep_alive,
            on_response=self.on_response_complete,
        )

    def _ordinary(self, call: Call, body: bytes) -> None:
        """Answer a fast call read on the event loop through uvicorn's ordinary cycle (and so
        ``PodApp``), as if it had never been taken: its scope and body as they were read."""
        scope = call.scope
        assert scope is not None
        path = f"/call/{call.method}" if call.method else "/call"  # (no query, no escapes)
        scope["method"] = "POST"
        scope["path"] = self.root_path + path
        scope["raw_path"] = (self.root_path + path).encode("ascii")
        scope["query_string"] = b""
        with self._fast_lock:
            real = self._cycle(scope, keep_alive=True)  # (a fast call is keep-alive)
            real.body = bytearray(body)
            real.more_body = False
            real.message_event.set()
            self.cycle = real
        self._start_asgi_task(real, self.app)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        call, self._pending = self._pending, None
        self._pending_body = b""
        if call is not None:
            self._hand_over(call)

    # -- the connection thread --------------------------------------------------------------

    def _hand_over(self, call: Call) -> None:
        """Stop reading the connection and give it to a call thread, which runs ``call``."""
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.pause_reading()
        sock = socket.socket(fileno=os.dup(self._fd))
        sock.setblocking(True)  # (the flag is the connection's: the loop reads none of it now)
        conn = Conn(sock, self.loop, self.pod_app, self._take_back)
        self._owner = conn
        if not self.pod_app.state.pool().submit(conn.serve, call):  # (checked: cannot fail)
            self._owner = None
            conn.release()
            self._take_back(b"", None, True)

    def _take_back(self, data: bytes, stream: tuple[Any, ...] | None, close: bool) -> None:
        """On the event loop: the connection thread ended; read the connection again, fed
        ``data`` (what it read of the next request) first; ``stream``: a generator to stream."""
        owner, self._owner = self._owner, None
        if self.transport.is_closing():
            return
        if close:
            self.transport.close()
            return
        cycle = _FastCycle()
        cycle.response_complete = True
        self.cycle = cycle  # type: ignore[assignment]
        if stream is not None:
            cycle.response_complete = False
            items, accept, log, scope = stream
            self._stream(items, accept, log, scope, cycle)
        elif owner is not None and owner.closing:  # shutting down: no further request
            self.transport.close()
            return
        else:
            self.cycle = None  # type: ignore[assignment]
        self.flow.resume_reading()
        if data:
            self.data_received(data)
        elif self.cycle is None and self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    # -- a call on a call thread that answers and returns (pipelined requests) ---------------

    def _run_once(self, call: Call) -> None:
        cycle = self.cycle
        fd = os.dup(self._fd)
        if not self.pod_app.state.pool().submit(self._once, call, fd, cycle):
            os.close(fd)
            self.transport.close()

    def _once(self, call: Call, fd: int, cycle: _FastCycle) -> None:
        try:
            out = fastconn.execute(self.pod_app, call)
        except BaseException:  # the runtime's own failure: end the connection, never hang it
            os.close(fd)
            self.loop.call_soon_threadsafe(self.transport.close)
            raise
        if not isinstance(out, (bytes, wire.Parts)):  # it returned a generator: stream it
            os.close(fd)
            self.loop.call_soon_threadsafe(self._stream, *out, cycle)
            return
        self._answer(out, fd, cycle)

    def _answer(self, out: wire.Body, fd: int, cycle: _FastCycle) -> None:
        size = out.nbytes if isinstance(out, wire.Parts) else len(out)
        head = answer_head(size)
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

    def _stream(self, items: Any, accept: str, log: Any, scope: Scope, cycle: _FastCycle) -> None:
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
            real = self._cycle(scope, keep_alive=cycle.keep_alive)
            real.more_body = False
            cycle.response_complete = True
            if self.cycle is cycle:
                self.cycle = real
        self._start_asgi_task(real, stream)  # type: ignore[arg-type]

    # -- the server's shutdown and keep-alive -----------------------------------------------

    def shutdown(self) -> None:
        owner = self._owner
        if owner is not None:  # its call (if any) ends and is answered, then it closes
            owner.stop()
            return
        with self._fast_lock:  # a fast call running: it ends, then the connection closes
            super().shutdown()

    def timeout_keep_alive_handler(self) -> None:
        if self._owner is not None or (
            isinstance(self.cycle, _FastCycle) and not self.cycle.response_complete
        ):
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
