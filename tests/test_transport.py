"""The call path's HTTP transport against small raw-socket servers."""

from __future__ import annotations

import socket
import threading

import pytest

from hotpod import transport, wire

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def serve(handler) -> tuple[str, threading.Thread]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"

    def run() -> None:
        with listener:
            handler(listener)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return url, thread


def read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)


def test_keep_alive_reuses_one_connection():
    accepted = []

    def handler(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        accepted.append(conn)
        for _ in range(3):
            read_request(conn)
            conn.sendall(RESPONSE)
        conn.close()

    url, thread = serve(handler)
    t = transport.Transport()
    for _ in range(3):
        assert t.request(url, "/x", b"{}", {}, 5).read() == b"ok"
    thread.join(5)
    assert len(accepted) == 1
    t.close()


def test_a_connection_closed_unanswered_is_marked_so_the_client_may_retry():
    def handler(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        read_request(conn)
        conn.close()  # what a server shutting down does with a request it never read

    url, thread = serve(handler)
    t = transport.Transport()
    with pytest.raises(transport.Broken) as info:
        t.request(url, "/x", b"{}", {}, 5)
    assert info.value.unanswered
    thread.join(5)


def test_a_connection_that_dies_mid_answer_is_not_retryable():
    def handler(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
        conn.close()

    url, thread = serve(handler)
    t = transport.Transport()
    resp = t.request(url, "/x", b"{}", {}, 5)
    with pytest.raises(transport.Broken) as info:
        resp.read()
    assert not info.value.unanswered
    thread.join(5)


def test_refused_connections_are_unreachable():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(transport.Unreachable):
        transport.Transport().request(f"http://127.0.0.1:{port}", "/x", b"", {}, 1)


def read_exactly(conn: socket.socket, n: int, data: bytes = b"") -> bytes:
    while len(data) < n:
        chunk = conn.recv(1 << 20)
        assert chunk
        data += chunk
    return data


def test_a_large_body_is_read_whole_and_the_connection_kept():
    """A large Content-Length body comes as one buffer (read straight into it); a request
    body given as wire.Parts arrives as the bytes it joins to."""
    big = bytes(range(256)) * (wire.LARGE // 128)
    parts = wire.Parts([b"<", big, b">"])
    accepted = []

    def handler(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        accepted.append(conn)
        for _ in range(2):
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            assert f"Content-Length: {parts.nbytes}".encode() in head
            body = read_exactly(conn, parts.nbytes, rest)
            assert body == b"".join(parts)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
            conn.sendall(body[:1000])  # the rest arrives later, in pieces
            conn.sendall(body[1000:])
        conn.close()

    url, thread = serve(handler)
    t = transport.Transport()
    for _ in range(2):
        resp = t.request(url, "/x", parts, {}, 5)
        chunks = list(resp.chunks())
        assert len(chunks) == 1 and isinstance(chunks[0], bytearray)
        assert chunks[0] == b"".join(parts)
        assert resp.complete
    thread.join(5)
    assert len(accepted) == 1  # kept alive after a body read whole
    t.close()


def test_a_large_body_cut_short_is_broken():
    def handler(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nabc" % (2 * wire.LARGE))
        conn.close()

    url, thread = serve(handler)
    resp = transport.Transport().request(url, "/x", b"{}", {}, 5)
    with pytest.raises(transport.Broken, match="closed"):
        list(resp.chunks())
    thread.join(5)
