"""A lean HTTP/1.1 transport for the call path: raw sockets and httptools' C parser.

httpx adds about 0.5 ms to every request on this kind of machine and ``http.client`` about
0.1 ms (its header parsing and two writes per request), more than a bare endpoint takes to answer,
so calls use keep-alive sockets (one per pod per thread), write each request in one ``sendall``
and parse responses with httptools (which uvicorn uses too). Deploy-time requests still use
httpx. A pooled connection that the server closed while idle is noticed before it is reused (its
socket reads as ready), so a request is never sent twice: any failure after a request was sent is
reported, not retried.

Pods behind a proxy (the Kubernetes API server's pod proxy, from outside a cluster) are reached
through a :class:`Route` registered for the proxy's host and port: a pod URL's path is the base
path of its requests, the route adds the proxy's credentials, moves the service token to
``X-Hotpod-Token`` (a proxy consumes ``Authorization``) and brings TLS. Direct pod URLs
(``http://IP:PORT``, no path) take none of this: one empty-dict test per request.
"""

from __future__ import annotations

import dataclasses
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import httptools

from hotpod.wire import LARGE, Body, Parts, coalesce

if TYPE_CHECKING:
    import httpx

_R = TypeVar("_R")

#: a pooled connection that closes unanswered this soon after a request was written was closed
#: by the server while idle (it never read the request); sooner than any work could have begun
IDLE_CLOSE_WINDOW = 0.1


class Unreachable(Exception):
    """Connecting failed: nothing was sent, so retrying is safe."""


class Broken(Exception):
    """The connection failed after the request was sent.

    ``unanswered`` is set when the connection closed without a byte of answer right after the
    request was written: a server shutting down gracefully closed it while idle, or reset it
    from its accept queue, so the request was never read.
    """

    unanswered = False


class TimedOut(Exception):
    """No answer before the deadline."""


#: where the service token goes when a proxy between client and pod takes ``Authorization``
TOKEN_HEADER = "X-Hotpod-Token"


@dataclass(frozen=True)
class Route:
    """How to reach pods whose URLs point at a proxy (``https://api-server:6443/...``).

    ``credentials`` gives the headers the proxy wants (called per request, so a token that
    expires can be refreshed); ``ssl_context`` is used for ``https`` origins, with
    ``server_hostname`` when the certificate names another host than the URL.
    """

    credentials: Callable[[], dict[str, str]] = dict
    ssl_context: ssl.SSLContext | None = None
    server_hostname: str | None = None
    tls: bool = False  # set by add_route from the URL's scheme

    def headers(self, headers: dict[str, str]) -> dict[str, str]:
        """``headers`` as the proxy must get them: the service token moved to
        ``X-Hotpod-Token``, the proxy's credentials added."""
        out = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        auth = headers.get("Authorization") or headers.get("authorization")
        if auth and auth[:7].lower() == "bearer ":
            out[TOKEN_HEADER] = auth[7:]
        out.update(self.credentials())
        return out

    def wrap(self, sock: socket.socket, host: str) -> socket.socket:
        context = self.ssl_context or ssl.create_default_context()
        return context.wrap_socket(sock, server_hostname=self.server_hostname or host)


_ROUTES: dict[tuple[str, int], Route] = {}
_TLS = Route(tls=True)  # an https origin without a route: the system's CAs, no credentials


def add_route(url: str, route: Route) -> None:
    """Send requests to URLs at ``url``'s host and port through ``route``."""
    parts = urlsplit(url)
    key = (parts.hostname or "", _port(parts.scheme, parts.port))
    _ROUTES[key] = dataclasses.replace(route, tls=parts.scheme == "https")


def remove_route(url: str) -> None:
    parts = urlsplit(url)
    _ROUTES.pop((parts.hostname or "", _port(parts.scheme, parts.port)), None)


def route_for(url: str) -> Route | None:
    """The route of ``url``'s origin; None for a direct one."""
    if not _ROUTES and not url.startswith("https:"):
        return None
    parts = urlsplit(url)
    route = _ROUTES.get((parts.hostname or "", _port(parts.scheme, parts.port)))
    return route if route is not None or parts.scheme != "https" else _TLS


def _port(scheme: str, port: int | None) -> int:
    return port if port is not None else (443 if scheme == "https" else 80)


_PARSED: dict[str, tuple[str, int, str, bool]] = {}  # url -> host, port, base path, https


def target(url: str, path: str) -> tuple[str, int, str, Route | None]:
    """Where a request to ``path`` of the pod at ``url`` goes: host, port, the full path (the
    URL's path is a base path) and the route (None: direct)."""
    parsed = _PARSED.get(url)
    if parsed is None:
        if len(_PARSED) > 4096:
            _PARSED.clear()
        parts = urlsplit(url)
        base = parts.path.rstrip("/")
        parsed = _PARSED[url] = (
            parts.hostname or "127.0.0.1",
            _port(parts.scheme, parts.port),
            base,
            parts.scheme == "https",
        )
    host, port, base, https = parsed
    route = _ROUTES.get((host, port)) if _ROUTES else None
    if route is None and https:
        route = _TLS
    return host, port, base + path if base else path, route


def httpx_transport(**kw: Any) -> httpx.BaseTransport:
    """An httpx transport (for the deploy-time requests: health, info) that follows the routes."""
    import httpx

    class Routed(httpx.BaseTransport):
        def __init__(self) -> None:
            self.direct = httpx.HTTPTransport(**kw)
            self.routed: dict[int, tuple[Route, httpx.HTTPTransport]] = {}

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            route = route_for(str(request.url))
            if route is None:
                return self.direct.handle_request(request)
            held = self.routed.get(id(route))
            if held is None or held[0] is not route:
                verify: Any = route.ssl_context or True
                held = self.routed[id(route)] = (route, httpx.HTTPTransport(verify=verify))
            request.headers = httpx.Headers(route.headers(dict(request.headers)))
            return held[1].handle_request(request)

        def close(self) -> None:
            self.direct.close()
            for _, transport in self.routed.values():
                transport.close()

    return Routed()


class _Conn:
    def __init__(
        self, host: str, port: int, connect_timeout: float, route: Route | None = None
    ) -> None:
        try:
            self.sock = socket.create_connection((host, port), timeout=connect_timeout)
            if route is not None and route.tls:
                self.sock = route.wrap(self.sock, host)
        except OSError as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.host = f"{host}:{port}".encode()
        self.closed = False

    def stale(self) -> bool:
        """True when the server closed the idle connection (or sent something unasked)."""
        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()


class ResponseHead:
    """The httptools callbacks and what they collect; the sync and async responses share it."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._headers_done = False
        self._complete = False
        self._keep_alive = False
        self._length: int | None = None  # Content-Length, when the answer has one
        self.received = False
        self.status = 0

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self.status = self._parser.get_status_code()
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and "transfer-encoding" not in self._headers:
            self._length = int(length)
            self._keep_alive = self._parser.should_keep_alive()  # for a body read whole

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()  # only valid inside this callback

    def header(self, name: str) -> str | None:
        return self._headers.get(name.lower())

    @property
    def complete(self) -> bool:
        """The whole response has been read."""
        return self._complete


def unanswered(received: bool, sent: float) -> bool:
    """Whether a request whose connection broke can be sent again: nothing of an answer came
    and it was not all written (``sent`` 0) or written just now, to a connection the server
    was closing as idle (it never read it)."""
    return not received and (not sent or time.monotonic() - sent < IDLE_CLOSE_WINDOW)


def request_buffers(
    path: str, host: bytes, headers: dict[str, str], body: Body
) -> list[bytes | bytearray | memoryview]:
    """What to write for a request (see :meth:`Request.buffers`)."""
    return Request(headers, body).buffers(path, host)


class Request:
    """A POST of ``body`` with ``headers``, encoded once and sent to any number of pods
    (:meth:`Transport.send`): only the request line and ``Host`` differ between them."""

    __slots__ = ("_rest", "body")

    def __init__(self, headers: dict[str, str], body: Body) -> None:
        self.body = body
        size = body.nbytes if isinstance(body, Parts) else len(body)
        lines = [f"{name}: {value}\r\n".encode("latin-1") for name, value in headers.items()]
        lines.append(f"Content-Length: {size}\r\n\r\n".encode())
        self._rest = b"".join(lines)

    def buffers(self, path: str, host: bytes) -> list[bytes | bytearray | memoryview]:
        """What to write: one buffer, or for ``Parts`` the head and small parts joined and
        each large part on its own (never copied)."""
        head = b"".join(
            (b"POST ", path.encode(), b" HTTP/1.1\r\nHost: ", host, b"\r\n", self._rest)
        )
        if isinstance(self.body, Parts):
            return coalesce([head, self.body])
        return [head + self.body]


class Response(ResponseHead):
    """A response being read; ``chunks()`` yields body bytes as they arrive."""

    def __init__(self, conn: _Conn, release: Callable[[_Conn], None]) -> None:
        super().__init__()
        self._conn = conn
        self._release = release

    def set_timeout(self, seconds: float | None) -> None:
        self._conn.sock.settimeout(seconds)

    def _read(self, op: Callable[[], _R]) -> _R:
        """Run one socket read; its failures, and the end of the stream, become the call
        path's TimedOut and Broken (the connection is dropped)."""
        try:
            got = op()
        except TimeoutError as exc:
            self._conn.close()
            raise TimedOut(str(exc) or "timed out") from None
        except OSError as exc:
            self._conn.close()
            raise Broken(f"{type(exc).__name__}: {exc}") from None
        if not got:
            self._conn.close()
            raise Broken("the server closed the connection")
        self.received = True
        return got

    def fileno(self) -> int:
        """The connection's socket, to wait for the answer with ``select``/``poll``."""
        return self._conn.sock.fileno()

    def poll(self) -> bool:
        """Take what the socket holds (call it when the socket is readable: one ``recv``,
        which then does not wait); True once the head has arrived. Raises ``Broken`` (the
        connection ended or failed) and ``TimedOut``; both drop the connection."""
        self._feed()
        return self._headers_done

    def peek(self) -> bytes:
        """The body read so far, joined; it is still there for ``read``/``chunks``."""
        if len(self._body) != 1:
            self._body = [b"".join(self._body)]
        return self._body[0]

    def _feed(self) -> None:
        data = self._read(lambda: self._conn.sock.recv(65536))
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._conn.close()
            raise Broken(f"malformed HTTP response: {exc}") from None

    def _start(self) -> None:
        while not self._headers_done:
            self._feed()

    def _recv_into(self, view: memoryview) -> int:
        return self._read(lambda: self._conn.sock.recv_into(view))

    def _read_whole(self, size: int) -> bytearray:
        """The rest of a large body of known size, read straight into one buffer: no 64 KiB
        pieces through the parser, no joining them (the parser is not used again)."""
        buf = bytearray(size)
        got = 0
        with memoryview(buf) as view:
            for piece in self._body:
                view[got : got + len(piece)] = piece
                got += len(piece)
            self._body = []
            while got < size:
                got += self._recv_into(view[got:])
        self._complete = True
        return buf

    def chunks(self) -> Iterator[bytes | bytearray]:
        if self._length is not None and self._length >= LARGE and not self._complete:
            yield self._read_whole(self._length)
        while True:
            if self._body:
                body, self._body = self._body, []
                yield b"".join(body)
            if self._complete:
                self._finish()
                return
            self._feed()

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def _finish(self) -> None:
        if self._keep_alive:
            self._release(self._conn)
        else:
            self._conn.close()

    def abandon(self) -> None:
        """Drop the connection (the response was not read to its end)."""
        self._conn.close()


class Transport:
    """Keep-alive connections to pods, one per (host, port) per thread."""

    def __init__(self, connect_timeout: float = 5.0) -> None:
        self.connect_timeout = connect_timeout
        self._local = threading.local()
        self._all: list[_Conn] = []
        self._lock = threading.Lock()

    def _idle(self) -> dict[tuple[str, int], _Conn]:
        idle = getattr(self._local, "idle", None)
        if idle is None:
            idle = self._local.idle = {}
        return idle

    def _connection(self, host: str, port: int, route: Route | None = None) -> _Conn:
        conn = self._idle().pop((host, port), None)
        if conn is not None:
            if not conn.closed and not conn.stale():
                return conn
            conn.close()
        conn = _Conn(host, port, self.connect_timeout, route)
        with self._lock:
            self._all = [c for c in self._all if not c.closed]
            self._all.append(conn)
        return conn

    def request(
        self,
        url: str,
        path: str,
        body: Body,
        headers: dict[str, str],
        timeout: float | None,
    ) -> Response:
        """POST ``body``; returns once the response's status line and headers have arrived."""
        host, port, path, route = target(url, path)
        if route is not None:
            headers = route.headers(headers)
        conn = self._connection(host, port, route)
        buffers = request_buffers(path, conn.host, headers, body)
        idle = self._idle()

        def release(c: _Conn) -> None:
            if idle.setdefault((host, port), c) is not c:  # (a stream held it meanwhile)
                c.close()

        resp = Response(conn, release)
        sent = 0.0
        try:
            conn.sock.settimeout(timeout)
            for buffer in buffers:
                conn.sock.sendall(buffer)
            sent = time.monotonic()
            resp._start()
        except TimeoutError as exc:
            conn.close()
            raise TimedOut(str(exc) or "timed out") from None
        except (OSError, Broken) as exc:
            conn.close()
            broken = exc if isinstance(exc, Broken) else Broken(f"{type(exc).__name__}: {exc}")
            broken.unanswered = unanswered(resp.received, sent)
            raise broken from None
        except TimedOut:
            conn.close()
            raise
        return resp

    def send(self, url: str, path: str, request: Request, timeout: float | None) -> Response:
        """Write ``request`` to the pod at ``url`` (a direct one: no route) on this thread's
        keep-alive connection to it, and return its response without waiting for an answer:
        wait for the socket (``Response.fileno``), then ``Response.poll``. Raises
        ``Unreachable`` when connecting or writing failed: no answer was read and the pod
        cannot have read the whole request, so sending it again is safe."""
        host, port, path, route = target(url, path)
        if route is not None:
            raise Unreachable(f"{url} is reached through a proxy: use request()")
        conn = self._connection(host, port)
        idle = self._idle()

        def release(c: _Conn) -> None:
            if idle.setdefault((host, port), c) is not c:
                c.close()

        sock = conn.sock
        try:
            if sock.gettimeout() != timeout:  # (each settimeout costs two system calls)
                sock.settimeout(timeout)
            for buffer in request.buffers(path, conn.host):
                sock.sendall(buffer)
        except OSError as exc:
            conn.close()
            raise Unreachable(f"{type(exc).__name__}: {exc}") from None
        return Response(conn, release)

    def close(self) -> None:
        """Close every connection, of every thread."""
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
