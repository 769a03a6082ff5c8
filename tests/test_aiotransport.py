"""The async call transport against small raw-socket servers."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from hotpod import aiotransport, transport
from test_transport import RESPONSE, read_request, serve


def test_keep_alive_reuses_one_connection_and_closes_with_the_loop():
    accepted = []
    closed = threading.Event()

    def handler(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        accepted.append(conn)
        for _ in range(3):
            read_request(conn)
            conn.sendall(RESPONSE)
        assert conn.recv(1) == b""  # asyncio.run's end closed the pooled connection
        closed.set()
        conn.close()

    url, thread = serve(handler)
    t = aiotransport.AsyncTransport()

    async def main() -> list[bytes]:
        return [await (await t.request(url, "/x", b"{}", {}, None)).read() for _ in range(3)]

    assert asyncio.run(main()) == [b"ok"] * 3
    assert closed.wait(5)
    thread.join(5)
    assert len(accepted) == 1


def test_concurrent_requests_past_the_limit_wait_for_a_connection(monkeypatch):
    monkeypatch.setattr(aiotransport, "MAX_CONNECTIONS", 2)
    accepted = []

    def handler(listener: socket.socket) -> None:
        def one(conn: socket.socket) -> None:
            with conn:
                while True:
                    try:
                        read_request(conn)
                    except OSError:
                        return
                    time.sleep(0.05)
                    conn.sendall(RESPONSE)

        while len(accepted) < 2:
            conn, _ = listener.accept()
            accepted.append(conn)
            threading.Thread(target=one, args=(conn,), daemon=True).start()

    url, _ = serve(handler)
    t = aiotransport.AsyncTransport()

    async def main() -> list[bytes]:
        async def one() -> bytes:
            return await (await t.request(url, "/x", b"{}", {}, time.monotonic() + 5)).read()

        return await asyncio.gather(*(one() for _ in range(6)))

    assert asyncio.run(main()) == [b"ok"] * 6
    assert len(accepted) == 2


def test_a_connection_closed_unanswered_is_marked_so_the_client_may_retry():
    def handler(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        read_request(conn)
        conn.close()

    url, thread = serve(handler)

    async def main() -> None:
        with pytest.raises(transport.Broken) as info:
            await aiotransport.AsyncTransport().request(url, "/x", b"{}", {}, None)
        assert info.value.unanswered

    asyncio.run(main())
    thread.join(5)


def test_a_connection_that_dies_mid_answer_is_not_retryable():
    def handler(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
        conn.close()

    url, thread = serve(handler)

    async def main() -> None:
        resp = await aiotransport.AsyncTransport().request(url, "/x", b"{}", {}, None)
        with pytest.raises(transport.Broken) as info:
            await resp.read()
        assert not info.value.unanswered

    asyncio.run(main())
    thread.join(5)


def test_refused_connections_are_unreachable():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()

    async def main() -> None:
        with pytest.raises(transport.Unreachable):
            await aiotransport.AsyncTransport().request(
                f"http://127.0.0.1:{port}", "/x", b"", {}, None
            )

    asyncio.run(main())


def test_deadline_and_cancellation_close_the_connection():
    gone = threading.Event()

    def handler(listener: socket.socket) -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            read_request(conn)
            conn.settimeout(5)
            assert conn.recv(1) == b""  # never answered: the client closed it
            gone.set()
            conn.close()

    url, thread = serve(handler)
    t = aiotransport.AsyncTransport()

    async def main() -> None:
        with pytest.raises(transport.TimedOut):
            await t.request(url, "/x", b"{}", {}, time.monotonic() + 0.2)
        task = asyncio.create_task(t.request(url, "/x", b"{}", {}, None))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    thread.join(5)
    assert gone.is_set()
