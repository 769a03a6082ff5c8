"""Requests as they arrive at the router of an autoscaled service (``router``).

A client's connection is parsed by httptools as bytes come in (``ClientConn``); each request
(``Incoming``) is handed out as soon as its head is parsed, while its body keeps arriving: the
router sends it on to a pod piece by piece, at most ``BODY_AHEAD`` bytes behind the client.
"""

from __future__ import annotations

import asyncio
from collections import deque

import httptools

#: a request's body is read from the client at most this far ahead of the pod
BODY_AHEAD = 1 << 20
#: a body up to this size is kept until the pod answers, to send again if a pooled connection
#: turns out closed; a larger one goes on a fresh connection
REPLAY_MAX = 1 << 20

#: request headers the router does not pass on (it frames the body itself)
HOP = {
    b"connection",
    b"keep-alive",
    b"transfer-encoding",
    b"content-length",
    b"te",
    b"upgrade",
    b"expect",  # (the router answers 100-continue itself)
}


class ClientGone(Exception):
    """The client hung up (or sent what is not HTTP) before its request's body was all here."""


class Incoming:
    """One request as it arrives: its head at once, its body in pieces as the client sends it.

    The client's reader pushes the pieces; the sender to the pod takes them. At most
    ``BODY_AHEAD`` bytes wait here: past that, the reader stops reading (``room``) until the
    pod has taken some, so the client waits instead of the controller holding its body."""

    def __init__(
        self, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]], keep: bool
    ) -> None:
        self.method = method
        self.url = url
        self.headers: list[tuple[bytes, bytes]] = []
        self.length: int | None = None  # Content-Length; None: chunked, or no body
        self.chunked = False
        self.expect_continue = False
        for name, value in headers:
            low = name.lower()
            if low == b"content-length":
                self.length = int(value)
            elif low == b"transfer-encoding":
                self.chunked = b"chunked" in value.lower()
            elif low == b"expect":
                self.expect_continue = value.lower() == b"100-continue"
            if low not in HOP:
                self.headers.append((name, value))
        self.keep = keep
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.aborted = False
        self.dropped = False
        #: what the pod took of the body, while it may have to be sent again; None: too large
        small = not self.chunked and (self.length or 0) <= REPLAY_MAX
        self.sent: list[bytes] | None = [] if small else None
        self.taken = False  # whether any of the body left for a pod
        self.changed = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()

    @property
    def replayable(self) -> bool:
        """Whether what the pod took so far can be sent again (to another connection)."""
        return self.sent is not None

    def push(self, data: bytes) -> None:
        if self.dropped:
            return
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered >= BODY_AHEAD:
            self.room.clear()
        self.changed.set()

    def finish(self, keep: bool) -> None:
        self.complete, self.keep = True, keep
        self.changed.set()

    def abort(self) -> None:
        self.aborted = True
        self.room.set()
        self.changed.set()

    def drop(self) -> None:
        """Nobody will send this body: discard what came and what comes."""
        self.dropped = True
        self.chunks.clear()
        self.buffered = 0
        self.room.set()

    def _took(self, data: bytes) -> bytes:
        self.taken = True
        self.buffered -= len(data)
        if self.buffered < BODY_AHEAD:
            self.room.set()
        if self.sent is not None:
            self.sent.append(data)
        return data

    def take_all(self) -> list[bytes]:
        """What of the body is here, all of it (for a body that arrived whole)."""
        out = [self._took(data) for data in self.chunks]
        self.chunks.clear()
        return out

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body (None once it all went); ClientGone if it never will."""
        while not self.chunks:
            if self.complete:
                return None
            if self.aborted:
                raise ClientGone()
            self.changed.clear()
            await self.changed.wait()
        return self._took(self.chunks.popleft())

    def rewind(self) -> bool:
        """Make the body whole again for another try; False if what went is not kept."""
        if not self.taken:
            return True
        if self.sent is None:
            return False
        for data in reversed(self.sent):
            self.chunks.appendleft(data)
            self.buffered += len(data)
        self.sent, self.taken = [], False
        return True

    def head(self, length: int | None) -> bytes:
        """The request's head for the pod: ``length`` given, a Content-Length of that; else the
        client's framing (chunked, or its Content-Length)."""
        parts = [self.method + b" " + self.url + b" HTTP/1.1\r\n"]
        parts += [n + b": " + v + b"\r\n" for n, v in self.headers]
        if length is None and self.chunked:
            parts.append(b"transfer-encoding: chunked\r\n\r\n")
        else:
            size = length if length is not None else (self.length or 0)
            parts.append(b"content-length: %d\r\n\r\n" % size)
        return b"".join(parts)


class ClientConn:
    """httptools callbacks for one client connection: requests in arrival order, each handed
    out as soon as its head is parsed."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.current: Incoming | None = None  # the request whose body is arriving
        self.arrived: deque[Incoming] = deque()
        self.new = asyncio.Event()
        self.gone = asyncio.Event()  # the client hung up, or sent what is not HTTP
        self.error: str | None = None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        method = self.parser.get_method()
        incoming = Incoming(method, self.url, self.headers, self.parser.should_keep_alive())
        self.url, self.headers = b"", []
        self.current = incoming
        self.arrived.append(incoming)
        self.new.set()

    def on_body(self, body: bytes) -> None:
        if self.current is not None:
            self.current.push(body)

    def on_message_complete(self) -> None:
        if self.current is not None:
            self.current.finish(self.parser.should_keep_alive())
        self.current = None

    def ended(self, error: str | None = None) -> None:
        self.error = error
        self.gone.set()
        self.new.set()
        if self.current is not None:
            self.current.abort()

    async def next_request(self) -> Incoming | None:
        """The next request whose head arrived; None once the client is gone."""
        while not self.arrived:
            if self.gone.is_set():
                return None
            self.new.clear()
            await self.new.wait()
        return self.arrived.popleft()
