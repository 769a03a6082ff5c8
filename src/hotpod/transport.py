"""A lean HTTP/1.1 transport for the call path, on the standard library's ``http.client``.

httpx adds about 0.5 ms to every request on this kind of machine, more than a bare endpoint
takes to answer, so calls use keep-alive ``http.client`` connections (one per pod per thread)
instead; deploy-time requests still use httpx. A pooled connection that the server closed while
idle is noticed before it is reused (its socket reads as ready), so a request is never sent twice:
any failure after a request was sent is reported, not retried.
"""

from __future__ import annotations

import http.client
import select
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit


class Unreachable(Exception):
    """Connecting failed: nothing was sent, so retrying is safe."""


class Broken(Exception):
    """The connection failed after the request was sent."""


class TimedOut(Exception):
    """No answer before the deadline."""


class Response:
    """A response being read; ``chunks()`` yields body bytes as they arrive."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        self._conn = conn
        self._resp = resp
        self.status = resp.status

    def header(self, name: str) -> str | None:
        return self._resp.getheader(name)

    def set_timeout(self, seconds: float | None) -> None:
        if self._conn.sock is not None:
            self._conn.sock.settimeout(seconds)

    def read(self) -> bytes:
        try:
            return self._resp.read()
        except TimeoutError as exc:
            raise TimedOut(str(exc)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise Broken(f"{type(exc).__name__}: {exc}") from None

    def chunks(self) -> Iterator[bytes]:
        if self._resp.getheader("content-length") is not None:
            yield self.read()
            return
        while True:
            try:
                data = self._resp.read1(1 << 20)
            except TimeoutError as exc:
                raise TimedOut(str(exc)) from None
            except (OSError, http.client.HTTPException) as exc:
                raise Broken(f"{type(exc).__name__}: {exc}") from None
            if not data:
                return
            yield data

    def abandon(self) -> None:
        """Drop the connection (the response was not read to its end)."""
        self._conn.close()


class Transport:
    """Keep-alive connections to pods, one per (host, port) per thread."""

    def __init__(self, connect_timeout: float = 5.0) -> None:
        self.connect_timeout = connect_timeout
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _conns(self) -> dict[tuple[str, int], http.client.HTTPConnection]:
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        return conns

    def _connection(self, host: str, port: int) -> http.client.HTTPConnection:
        conns = self._conns()
        conn = conns.get((host, port))
        if conn is not None and conn.sock is not None:
            readable, _, _ = select.select([conn.sock], [], [], 0)
            if not readable:
                return conn
            conn.close()  # closed by the server while idle
        conn = http.client.HTTPConnection(host, port, timeout=self.connect_timeout)
        try:
            conn.connect()
        except OSError as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conns[(host, port)] = conn
        with self._lock:
            self._all = [c for c in self._all if c.sock is not None]
            self._all.append(conn)
        return conn

    def request(
        self,
        url: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        timeout: float | None,
    ) -> Response:
        """POST ``body``; returns once the response's status line and headers have arrived."""
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        conn = self._connection(host, port)
        try:
            conn.sock.settimeout(timeout)
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
        except TimeoutError as exc:
            conn.close()
            raise TimedOut(str(exc)) from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise Broken(f"{type(exc).__name__}: {exc}") from None
        if resp.will_close:
            self._conns().pop((host, port), None)
        return Response(conn, resp)

    def close(self) -> None:
        """Close every connection, of every thread."""
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
