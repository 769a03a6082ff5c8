"""The call path's HTTP/1.1 transport for asyncio: asyncio streams and httptools' C parser.

The async twin of :mod:`hotpod.transport`, with the same framing, the same errors
(``Unreachable``: nothing was sent; ``Broken``: failed after sending, ``unanswered`` when a
stopping server closed it unread; ``TimedOut``) and the same rule: a request is never sent twice
by the transport. Connections are pooled per event loop (asyncio objects belong to one loop) and
per pod, at most ``MAX_CONNECTIONS`` open at once: ``asyncio.gather`` over hundreds of calls
queues the calls past that, in order. A call cancelled while it waits for its answer closes its
connection, which tells the pod to cancel the work. The pool of a loop is closed when the loop
shuts down its async generators (``asyncio.run`` does).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
import weakref
from collections.abc import AsyncIterator

import httptools

from hotpod.transport import (
    Broken,
    ResponseHead,
    Route,
    TimedOut,
    Unreachable,
    request_buffers,
    target,
    unanswered,
)
from hotpod.wire import Body

#: connections open at once to one pod from one event loop; calls past it wait for one
MAX_CONNECTIONS = 256


class _Conn:
    def __init__(
        self,
        pool: _Pool,
        key: tuple[str, int],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.pool = pool
        self.key = key
        self.reader = reader
        self.writer = writer
        self.host = f"{key[0]}:{key[1]}".encode()
        self.closed = False

    def stale(self) -> bool:
        """True when the server closed the idle connection (or sent something unasked)."""
        return self.writer.is_closing() or self.reader.at_eof() or bool(self.reader._buffer)  # type: ignore[attr-defined]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.transport.abort()


class _Pool:
    """The connections of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.idle: dict[tuple[str, int], list[_Conn]] = {}
        self.slots: dict[tuple[str, int], asyncio.Semaphore] = {}
        self.open: set[_Conn] = set()
        self._closer: AsyncIterator[None] | None = None

    async def watch_shutdown(self) -> None:
        """Close the pool when the loop shuts down its async generators."""
        closer = self._closer = _closing(self)
        await closer.__anext__()

    def release(self, conn: _Conn, reuse: bool) -> None:
        if reuse and not conn.closed:
            self.idle.setdefault(conn.key, []).append(conn)
        else:
            conn.close()
            self.open.discard(conn)
        self.slots[conn.key].release()

    def close_all(self) -> None:
        for conn in list(self.open):
            conn.close()
        self.open.clear()
        self.idle.clear()


async def _closing(pool: _Pool) -> AsyncIterator[None]:
    try:
        yield
    finally:
        pool.close_all()
        await asyncio.sleep(0)  # let the transports finish closing before the loop does


class AsyncResponse(ResponseHead):
    """A response being read; ``chunks()`` yields body bytes as they arrive.

    ``deadline`` (``time.monotonic()``, or None) bounds every read.
    """

    def __init__(self, conn: _Conn, deadline: float | None) -> None:
        super().__init__()
        self._conn = conn
        self.deadline = deadline
        self._released = False

    async def _feed(self) -> None:
        try:
            if self.deadline is None:
                data = await self._conn.reader.read(65536)
            else:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                data = await asyncio.wait_for(self._conn.reader.read(65536), left)
            self.received = self.received or bool(data)
        except (TimeoutError, asyncio.TimeoutError):
            self._release(False)
            raise TimedOut("timed out") from None
        except OSError as exc:
            self._release(False)
            raise Broken(f"{type(exc).__name__}: {exc}") from None
        except BaseException:  # cancelled: the pod must learn that nobody waits any more
            self._release(False)
            raise
        if not data:
            self._release(False)
            raise Broken("the server closed the connection")
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._release(False)
            raise Broken(f"malformed HTTP response: {exc}") from None

    async def _start(self) -> None:
        while not self._headers_done:
            await self._feed()

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            if self._body:
                body, self._body = self._body, []
                yield b"".join(body)
            if self._complete:
                self._release(self._keep_alive)
                return
            await self._feed()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def _release(self, reuse: bool) -> None:
        if not self._released:
            self._released = True
            self._conn.pool.release(self._conn, reuse)

    def abandon(self) -> None:
        """Drop the connection (the response was not read to its end)."""
        self._release(False)


class AsyncTransport:
    """Keep-alive connections to pods, pooled per event loop."""

    def __init__(self, connect_timeout: float = 5.0) -> None:
        self.connect_timeout = connect_timeout
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pool] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    async def _pool(self) -> _Pool:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            with self._lock:
                pool = self._pools.setdefault(loop, _Pool(loop))
            if pool._closer is None:
                await pool.watch_shutdown()
        return pool

    async def _connection(
        self, pool: _Pool, key: tuple[str, int], deadline: float | None, route: Route | None = None
    ) -> _Conn:
        slots = pool.slots.get(key)
        if slots is None:
            slots = pool.slots[key] = asyncio.Semaphore(MAX_CONNECTIONS)
        if deadline is None:
            await slots.acquire()
        else:
            try:
                await asyncio.wait_for(slots.acquire(), max(deadline - time.monotonic(), 0))
            except (TimeoutError, asyncio.TimeoutError):
                raise TimedOut("no free connection before the deadline") from None
        try:
            idle = pool.idle.get(key)
            while idle:
                conn = idle.pop()
                if not conn.closed and not conn.stale():
                    return conn
                conn.close()
                pool.open.discard(conn)
            timeout = self.connect_timeout
            if deadline is not None:
                timeout = min(timeout, max(deadline - time.monotonic(), 0.001))
            try:
                if route is not None and route.tls:  # a proxy: the Kubernetes API server
                    ctx = route.ssl_context or ssl.create_default_context()
                    opening = asyncio.open_connection(
                        key[0], key[1], ssl=ctx, server_hostname=route.server_hostname or key[0]
                    )
                else:
                    opening = asyncio.open_connection(key[0], key[1])
                reader, writer = await asyncio.wait_for(opening, timeout)
            except (TimeoutError, asyncio.TimeoutError) as exc:
                raise Unreachable(f"connecting timed out after {timeout:g} s") from exc
            except OSError as exc:
                raise Unreachable(f"{type(exc).__name__}: {exc}") from None
            conn = _Conn(pool, key, reader, writer)
            pool.open.add(conn)
            return conn
        except BaseException:
            slots.release()
            raise

    async def request(
        self,
        url: str,
        path: str,
        body: Body,
        headers: dict[str, str],
        deadline: float | None,
    ) -> AsyncResponse:
        """POST ``body``; returns once the response's status line and headers have arrived."""
        host, port, path, route = target(url, path)
        if route is not None:
            headers = route.headers(headers)
        key = (host, port)
        pool = await self._pool()
        conn = await self._connection(pool, key, deadline, route)
        resp = AsyncResponse(conn, deadline)
        sent = 0.0
        try:
            for buffer in request_buffers(path, conn.host, headers, body):
                conn.writer.write(buffer)
            await conn.writer.drain()
            sent = time.monotonic()
            await resp._start()
        except (OSError, Broken) as exc:
            resp.abandon()
            broken = exc if isinstance(exc, Broken) else Broken(f"{type(exc).__name__}: {exc}")
            broken.unanswered = unanswered(resp.received, sent)
            raise broken from None
        except BaseException:  # timed out, cancelled
            resp.abandon()
            raise
        return resp

    def close(self) -> None:
        """Close every connection, of every loop (from its own thread when it runs)."""
        with self._lock:
            pools = list(self._pools.values())
        for pool in pools:
            if pool.loop.is_closed():
                continue
            try:
                if pool.loop.is_running():
                    pool.loop.call_soon_threadsafe(pool.close_all)
                else:
                    pool.close_all()
            except RuntimeError:
                pass
