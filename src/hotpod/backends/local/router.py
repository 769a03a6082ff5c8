"""The router of an autoscaled service: one address, each call to one pod (the local activator).

It listens on ``127.0.0.1:<port>`` in the local controller's process and forwards each HTTP
request to the ready pod with the fewest requests in flight, streaming the pod's answer back
byte for byte (frames, chunked encoding and all), with one header added: ``x-hotpod-pod``, the
name of the pod that answered (the client prefixes the call's log lines with it). Requests are
parsed with httptools; a request's body is sent on to the pod as it arrives from the client, at
most ``BODY_AHEAD`` bytes ahead of what the pod has taken (the client waits meanwhile), so a large
argument is never held whole here.

A request that no pod can take (none is ready, or each is at the service's ``concurrency``
limit) waits here, in arrival order, until one can, like Knative's activator; the wait counts
as concurrency, so the autoscaler scales up for it. ``GET /health`` is answered by the router
itself. A pod chosen for scale-down is *draining*: it gets no new request, and is stopped only
once its last one is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httptools

from hotpod.backends.local.inbound import ClientConn, Incoming

#: a pooled connection to a pod left idle this long is closed (uvicorn closes at 5 s)
IDLE_CONN = 4.0
READ_SIZE = 1 << 16
#: the response header naming the pod that answered
HEADER_POD = b"x-hotpod-pod"


@dataclass(eq=False)
class Backend:
    """A pod as the router sees it."""

    name: str
    port: int
    ready: bool = False
    draining: bool = False
    inflight: int = 0
    served: int = 0
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = field(
        default_factory=list
    )
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    def close_idle(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()
        self.idle.clear()


class _Response:
    def __init__(self, head_only: bool) -> None:
        self.head_only = head_only
        self.complete = False
        self.keep_alive = True
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        if self.head_only:
            self.complete = True

    def on_message_complete(self) -> None:
        self.complete = True


def _retrieved(task: asyncio.Future[Any]) -> None:
    """(A sender's error is seen as the pod's side breaking; nothing more to report.)"""
    if not task.cancelled():
        task.exception()


def _simple(status: int, payload: dict[str, Any], keep: bool) -> bytes:
    body = json.dumps(payload).encode()
    reason = {200: "OK", 400: "Bad Request", 503: "Service Unavailable"}.get(status, "Error")
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: {'keep-alive' if keep else 'close'}\r\n\r\n"
    ).encode() + body


class Router:
    """Forwards a service's requests to its pods; counts what is in flight and queued."""

    def __init__(self, service: str, limit: int, hold_timeout: float) -> None:
        self.service = service
        self.limit = limit  # containerConcurrency, 0 for none
        self.hold_timeout = hold_timeout
        self.pods: dict[str, Backend] = {}
        self.waiters: deque[asyncio.Future[Backend]] = deque()
        self.queued = 0
        self.port = 0
        self.requests = 0
        self.on_wait: Callable[[], None] = lambda: None  # the autoscaler's poke
        self._server: asyncio.Server | None = None
        self._area = 0.0  # concurrency integrated over time, since the last sample
        self._arrivals = 0
        self._changed = time.monotonic()
        self._sampled = self._changed

    # -- metrics ----------------------------------------------------------------------------

    @property
    def concurrency(self) -> int:
        return self.queued + sum(p.inflight for p in self.pods.values())

    def _account(self) -> None:
        now = time.monotonic()
        self._area += self.concurrency * (now - self._changed)
        self._changed = now

    def sample(self) -> tuple[float, float]:
        """(concurrency averaged over the time since the last sample, requests per second)."""
        self._account()
        now = self._changed
        span = max(now - self._sampled, 1e-6)
        out = (self._area / span, self._arrivals / span)
        self._area, self._arrivals, self._sampled = 0.0, 0, now
        return out

    def state(self) -> dict[str, Any]:
        return {
            "url": f"http://127.0.0.1:{self.port}",
            "pid": os.getpid(),  # the controller's: a handle sees it gone (and starts one)
            "in_flight": sum(p.inflight for p in self.pods.values()),
            "queued": self.queued,
            "ready": sum(1 for p in self.pods.values() if p.ready and not p.draining),
            "requests": self.requests,
            "pods": {
                p.name: {"ready": p.ready, "draining": p.draining, "in_flight": p.inflight}
                for p in self.pods.values()
            },
        }

    # -- pods -------------------------------------------------------------------------------

    def add(self, name: str, port: int) -> Backend:
        pod = self.pods.get(name)
        if pod is None or pod.port != port:
            if pod is not None:
                pod.close_idle()
            pod = self.pods[name] = Backend(name, port)
        pod.drained.set()
        return pod

    def set_ready(self, name: str, ready: bool) -> None:
        pod = self.pods.get(name)
        if pod is None:
            return
        pod.ready = ready
        if not ready:
            pod.close_idle()
        self._dispatch()

    def set_draining(self, name: str, draining: bool) -> None:
        pod = self.pods.get(name)
        if pod is not None:
            pod.draining = draining
            self._dispatch()

    def remove(self, name: str) -> None:
        pod = self.pods.pop(name, None)
        if pod is not None:
            pod.close_idle()

    def _pick(self) -> Backend | None:
        best: Backend | None = None
        for pod in self.pods.values():
            if not pod.ready or pod.draining or (self.limit and pod.inflight >= self.limit):
                continue
            if best is None or (pod.inflight, pod.served) < (best.inflight, best.served):
                best = pod
        if best is not None:
            self._account()
            best.inflight += 1
            best.served += 1
            best.drained.clear()
        return best

    def _release(self, pod: Backend) -> None:
        self._account()
        pod.inflight -= 1
        if pod.inflight == 0:
            pod.drained.set()
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand waiting requests to pods that can take them, first come first served."""
        while self.waiters:
            if self.waiters[0].done():  # timed out or cancelled
                self.waiters.popleft()
                continue
            pod = self._pick()
            if pod is None:
                return
            self.queued -= 1  # (at once: a request counts once, waiting or in flight)
            self.waiters.popleft().set_result(pod)

    async def _acquire(self) -> Backend | None:
        pod = self._pick() if not self.waiters else None
        if pod is not None:
            return pod
        fut: asyncio.Future[Backend] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        self._account()
        self.queued += 1
        self.on_wait()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.hold_timeout)
        except asyncio.TimeoutError:
            if fut.done() and not fut.cancelled():  # a pod came just as the time ran out
                return fut.result()
            fut.cancel()
            return None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release(fut.result())
            fut.cancel()
            raise
        finally:
            if not fut.done() or fut.cancelled():  # (a pod handed over counted it already)
                self._account()
                self.queued -= 1

    # -- serving ----------------------------------------------------------------------------

    async def start(self, port: int) -> int:
        """Listen on ``port`` (0: any free one); returns the port."""
        try:
            self._server = await asyncio.start_server(self._client, "127.0.0.1", port)
        except OSError:
            if not port:
                raise
            self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for fut in self.waiters:
            fut.cancel()
        for pod in self.pods.values():
            pod.close_idle()
        await asyncio.sleep(0)  # (the transports close on the next turn of the loop)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = ClientConn()
        reading = asyncio.ensure_future(self._read_client(reader, conn))
        try:
            while True:
                incoming = await conn.next_request()
                if incoming is None:
                    if conn.error is not None:
                        writer.write(_simple(400, {"error": conn.error}, False))
                    return
                if incoming.url.split(b"?")[0] == b"/health":
                    incoming.drop()
                    payload = {"status": "ok", "router": self.service, "ready": True}
                    writer.write(_simple(200, payload, incoming.keep))
                    keep = incoming.keep
                else:
                    self.requests += 1
                    self._arrivals += 1
                    keep = await self._forward(incoming, conn, writer)
                if not keep:
                    return
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):  # (cancelled: the controller stops)
            pass
        finally:
            reading.cancel()
            with contextlib.suppress(Exception):
                writer.close()

    async def _read_client(self, reader: asyncio.StreamReader, conn: ClientConn) -> None:
        """Read the client's side and parse it as it comes, pausing while the request being
        received has ``BODY_AHEAD`` bytes of body waiting for its pod."""
        error = None
        try:
            while True:
                current = conn.current
                if current is not None and not current.room.is_set():
                    await current.room.wait()
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                conn.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            error = f"bad request: {exc}"
        except OSError:
            pass
        finally:
            conn.ended(error)

    async def _forward(
        self, incoming: Incoming, conn: ClientConn, writer: asyncio.StreamWriter
    ) -> bool:
        """Send one request to a pod and stream its answer back; whether to keep the client's
        connection open."""
        gone = asyncio.ensure_future(conn.gone.wait())  # the client hanging up cancels the call
        try:
            while True:
                pod = await self._acquire_or_hangup(gone)
                if pod is None:
                    incoming.drop()
                    if gone.done():
                        return False
                    waited = f"{self.hold_timeout:g} s"
                    message = (
                        f"no pod of {self.service!r} could take the call within {waited}; "
                        f"run 'hotpod describe {self.service}' and 'hotpod logs {self.service}'"
                    )
                    keep = incoming.keep and incoming.complete
                    writer.write(_simple(503, {"error": message}, keep))
                    return keep
                if incoming.expect_continue:
                    incoming.expect_continue = False
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                try:
                    sent = await self._exchange(pod, incoming, writer, gone)
                finally:
                    self._release(pod)
                if sent is None:  # the pod refused the connection: it is gone; try another
                    self.set_ready(pod.name, False)
                    continue
                return incoming.keep and sent
        finally:
            gone.cancel()

    async def _acquire_or_hangup(self, gone: asyncio.Future[Any]) -> Backend | None:
        task = asyncio.ensure_future(self._acquire())
        if not gone.done():
            both: set[asyncio.Future[Any]] = {task, gone}
            await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
        if not gone.done():
            return await task
        if task.done():  # a pod was found as the client left: give it back
            pod = task.result()
            if pod is not None:
                self._release(pod)
        else:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return None

    async def _connect(
        self, pod: Backend, pooled: bool
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        now = time.monotonic()
        while pooled and pod.idle:
            r, w, since = pod.idle.pop()
            if now - since < IDLE_CONN and not r.at_eof() and not w.is_closing():
                return r, w, True
            w.close()
        r, w = await asyncio.open_connection("127.0.0.1", pod.port)
        return r, w, False

    async def _send(self, up_w: asyncio.StreamWriter, incoming: Incoming) -> None:
        """The request to the pod: whole when its body is all here and small, else its head,
        then its body as the client sends it (the pod's reading paces the client's)."""
        if incoming.complete and incoming.buffered <= READ_SIZE:
            body = incoming.take_all()
            size = sum(len(b) for b in body)
            up_w.write(b"".join([incoming.head(size), *body]))
            return
        chunked = incoming.chunked
        up_w.write(incoming.head(None))
        while True:
            data = await incoming.next_chunk()
            if data is None:
                break
            up_w.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            await up_w.drain()
        if chunked:
            up_w.write(b"0\r\n\r\n")

    async def _exchange(
        self,
        pod: Backend,
        incoming: Incoming,
        writer: asyncio.StreamWriter,
        gone: asyncio.Future[Any],
    ) -> bool | None:
        """One request/answer with a pod. None: nothing of it went (retry elsewhere); else
        whether the client's connection can be kept."""
        tag = HEADER_POD + b": " + pod.name.encode() + b"\r\n"
        for _attempt in range(2):
            try:
                up_r, up_w, reused = await self._connect(pod, incoming.replayable)
            except OSError:
                return None if incoming.rewind() else False
            resp = _Response(incoming.method == b"HEAD")
            sender = asyncio.ensure_future(self._send(up_w, incoming))
            sender.add_done_callback(_retrieved)
            got = False
            status_line: bytes | None = (
                b""  # the answer's first bytes, until its status line is whole
            )
            try:
                while not resp.complete:
                    read = asyncio.ensure_future(up_r.read(READ_SIZE))
                    await asyncio.wait({read, gone}, return_when=asyncio.FIRST_COMPLETED)
                    if gone.done():  # the client hung up: the pod sees it and cancels the call
                        read.cancel()
                        sender.cancel()
                        up_w.close()
                        return False
                    data = read.result()
                    if not data:
                        if sender.done() and sender.exception() is not None:
                            raise ConnectionResetError(f"sending to the pod: {sender.exception()}")
                        raise ConnectionResetError("the pod closed the connection")
                    got = True
                    resp.parser.feed_data(data)
                    if status_line is not None:  # name the pod: a header after the status line
                        status_line += data
                        end = status_line.find(b"\r\n")
                        if end < 0:
                            continue
                        data = status_line[: end + 2] + tag + status_line[end + 2 :]
                        status_line = None
                    writer.write(data)
                    await writer.drain()
            except (OSError, httptools.HttpParserError):
                sender.cancel()
                up_w.close()
                if not got and reused and incoming.rewind():  # a pooled connection the pod
                    continue  # had closed: once more, on a fresh one
                return False  # the client sees its connection break, as with the pod itself
            if not sender.done() and incoming.complete and not incoming.chunks:
                await asyncio.wait({sender}, timeout=1.0)  # (it took it all: finishing)
            if not sender.done() or sender.exception() is not None:
                sender.cancel()  # the pod answered before it took the whole body
                up_w.close()
                return False
            if resp.keep_alive:
                pod.idle.append((up_r, up_w, time.monotonic()))
            else:
                up_w.close()
            return True
        return None
