"""The router of an autoscaled service: one address, each call to one pod (the local activator).

It listens on ``127.0.0.1:<port>`` in the local controller's process and forwards each HTTP
request to the ready pod with the fewest requests in flight, streaming the pod's answer back
byte for byte (frames, chunked encoding and all). Requests are parsed with httptools; the
request is read whole, then sent on with a ``Content-Length``.

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
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httptools

#: a pooled connection to a pod left idle this long is closed (uvicorn closes at 5 s)
IDLE_CONN = 4.0
READ_SIZE = 1 << 16


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


class _Request:
    """httptools callbacks collecting one request."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.done: deque[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes, bool]] = deque()
        self.parser = httptools.HttpRequestParser(self)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        keep = self.parser.should_keep_alive()
        self.done.append((method, self.url, self.headers, b"".join(self.body), keep))
        self.url, self.headers, self.body = b"", [], []


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


_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"te", b"upgrade"}


def _hung_up(watch: asyncio.Future[bytes]) -> bool:
    """Whether the client's side ended (EOF or an error) while a call was on its way."""
    if not watch.done():
        return False
    return watch.cancelled() or watch.exception() is not None or not watch.result()


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
        req = _Request()
        try:
            while True:
                while not req.done:
                    data = await reader.read(READ_SIZE)
                    if not data:
                        return
                    try:
                        req.parser.feed_data(data)
                    except httptools.HttpParserError as exc:
                        writer.write(_simple(400, {"error": f"bad request: {exc}"}, False))
                        return
                method, url, headers, body, keep = req.done.popleft()
                if url.split(b"?")[0] == b"/health":
                    payload = {"status": "ok", "router": self.service, "ready": True}
                    writer.write(_simple(200, payload, keep))
                else:
                    self.requests += 1
                    self._arrivals += 1
                    keep = await self._forward(
                        method, url, headers, body, keep, reader, writer, req
                    )
                if not keep:
                    return
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _forward(
        self,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        keep: bool,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        req: _Request,
    ) -> bool:
        """Send one request to a pod and stream its answer back; whether to keep the client's
        connection open."""
        head = [method + b" " + url + b" HTTP/1.1\r\n"]
        head += [n + b": " + v + b"\r\n" for n, v in headers if n.lower() not in _HOP]
        head.append(b"content-length: %d\r\n\r\n" % len(body))
        request = b"".join(head)
        # the client hanging up cancels the call: watch its side while the pod answers
        watch = asyncio.ensure_future(reader.read(READ_SIZE))
        try:
            while True:
                pod = await self._acquire_or_hangup(watch)
                if pod is None:
                    if _hung_up(watch):
                        return False
                    waited = f"{self.hold_timeout:g} s"
                    message = (
                        f"no pod of {self.service!r} could take the call within {waited}; "
                        f"run 'hotpod describe {self.service}' and 'hotpod logs {self.service}'"
                    )
                    writer.write(_simple(503, {"error": message}, keep))
                    return keep
                try:
                    sent = await self._exchange(pod, method, request, body, writer, watch)
                finally:
                    self._release(pod)
                if sent is None:  # the pod refused the connection: it is gone; try another
                    self.set_ready(pod.name, False)
                    continue
                return keep and sent
        finally:
            if not watch.done():
                watch.cancel()  # (and wait for it: one read at a time on a stream)
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
            elif not _hung_up(watch):  # the next request came early (pipelined): parse it now
                req.parser.feed_data(watch.result())

    async def _acquire_or_hangup(self, watch: asyncio.Future[bytes]) -> Backend | None:
        task = asyncio.ensure_future(self._acquire())
        if not watch.done():
            both: set[asyncio.Future[Any]] = {task, watch}
            await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
        if not _hung_up(watch):
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
        self, pod: Backend
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        now = time.monotonic()
        while pod.idle:
            r, w, since = pod.idle.pop()
            if now - since < IDLE_CONN and not r.at_eof() and not w.is_closing():
                return r, w, True
            w.close()
        r, w = await asyncio.open_connection("127.0.0.1", pod.port)
        return r, w, False

    async def _exchange(
        self,
        pod: Backend,
        method: bytes,
        request: bytes,
        body: bytes,
        writer: asyncio.StreamWriter,
        watch: asyncio.Future[bytes],
    ) -> bool | None:
        """One request/answer with a pod. None: nothing was sent (retry elsewhere); else
        whether the client's connection can be kept."""
        for _attempt in range(2):
            try:
                up_r, up_w, reused = await self._connect(pod)
            except OSError:
                return None
            resp = _Response(method == b"HEAD")
            got = False
            try:
                up_w.write(request)
                if body:
                    up_w.write(body)
                while not resp.complete:
                    if _hung_up(watch):
                        up_w.close()  # the pod sees the disconnect and cancels the call
                        return False
                    read = asyncio.ensure_future(up_r.read(READ_SIZE))
                    if not watch.done():
                        await asyncio.wait({read, watch}, return_when=asyncio.FIRST_COMPLETED)
                    if not read.done():
                        if _hung_up(watch):
                            read.cancel()
                            up_w.close()
                            return False
                        await read  # (the client sent its next request early)
                    data = read.result()
                    if not data:
                        raise ConnectionResetError("the pod closed the connection")
                    got = True
                    resp.parser.feed_data(data)
                    writer.write(data)
                    await writer.drain()
            except (OSError, httptools.HttpParserError):
                up_w.close()
                if not got and reused:  # a pooled connection the pod had closed: once more
                    continue
                return False  # the client sees its connection break, as with the pod itself
            if resp.keep_alive:
                pod.idle.append((up_r, up_w, time.monotonic()))
            else:
                up_w.close()
            return True
        return None
