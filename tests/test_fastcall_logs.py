"""Log-streaming calls on the pods' connection threads (``runtime.fastconn.Answer``): the same
bytes as the ordinary path, lines live, other threads' output kept whole. Real pods, raw HTTP."""

from __future__ import annotations

import contextvars
import json
import logging
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

import hotpod as kt
from hotpod import loglines, wire

pytestmark = pytest.mark.slow


def work(kind, arg=0):  # the function the pod serves
    if kind == "path":  # whether a connection thread runs it (it takes the log frames then)
        from hotpod.runtime import logs

        return logs.current_call.get()._sink is not None
    if kind == "lines":
        print("one")
        print("two", file=sys.stderr)
        logging.getLogger("hotpod-test").warning("warned")
        print("partial", end="")
        return [arg]
    if kind == "raise":
        print("before")
        raise KeyError("gone")
    if kind == "sleepy":
        print("first", flush=True)
        time.sleep(arg)
        return "done"
    if kind == "threads":

        def spam(tag, wait=0.0):
            time.sleep(wait)
            for i in range(200):
                print(f"{tag}{i}")

        other = threading.Thread(target=contextvars.copy_context().run, args=(spam, "t"))
        late = threading.Thread(target=contextvars.copy_context().run, args=(spam, "late", 0.3))
        other.start()
        late.start()  # prints after the call ended: pod log only
        spam("m")
        other.join()
        return 1
    return arg  # "nothing"


def logged_numbers(n):  # a plain function that returns a generator, printing as it goes
    def items():
        for i in range(n):
            print(f"item {i}")
            yield i

    print("start")
    return items()


class _Raw:
    """One keep-alive connection to a pod, read byte by byte (heads, chunks)."""

    def __init__(self, url: str, token: str) -> None:
        host, port = url.rsplit("/", 1)[-1].split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.token = token
        self.buf = b""

    def request(
        self,
        kind: str,
        arg: object = 0,
        rid: str = "",
        chunked: bool = False,
        args: list | tuple = (),
    ) -> bytes:
        """The bytes of a log-streaming call (``work(kind, arg)``, or ``args``); ``chunked``
        (a chunked request body) sends it to the ordinary path."""
        body = json.dumps({"args": list(args) or [kind, arg]}).encode()
        head = (
            f"POST /call HTTP/1.1\r\nHost: pod\r\nAuthorization: {self.token}\r\n"
            f"X-Hotpod-Protocol: {wire.PROTOCOL_VERSION}\r\nContent-Type: {wire.CT_JSON}\r\n"
            "X-Hotpod-Stream-Logs: 1\r\n"
        )
        if rid:
            head += f"X-Hotpod-Request-Id: {rid}\r\n"
        if chunked:
            return (
                f"{head}Transfer-Encoding: chunked\r\n\r\n".encode()
                + b"%x\r\n" % len(body)
                + body
                + b"\r\n0\r\n\r\n"
            )
        return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            got = self.sock.recv(65536)
            assert got, "the pod closed the connection"
            self.buf += got
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            got = self.sock.recv(65536)
            assert got, "the pod closed the connection"
            self.buf += got
        end = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:end], self.buf[end:]
        return out

    def head(self) -> bytes:
        return self._until(b"\r\n\r\n")

    def chunk(self) -> bytes | None:
        size = int(self._until(b"\r\n")[:-2], 16)
        if size == 0:
            assert self._take(2) == b"\r\n"
            return None
        data = self._take(size)
        assert self._take(2) == b"\r\n"
        return data

    def answer(self) -> tuple[bytes, bytes, bool]:
        """(head, body, chunked) of the next answer."""
        head = self.head()
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                return head, self._take(int(line.split(b":")[1])), False
        assert b"transfer-encoding: chunked" in head, head
        chunks = []
        while (data := self.chunk()) is not None:
            chunks.append(data)
        return head, b"".join(chunks), True

    def call(
        self,
        kind: str,
        arg: object = 0,
        rid: str = "",
        chunked: bool = False,
        args: list | tuple = (),
    ) -> tuple:
        self.sock.sendall(self.request(kind, arg, rid, chunked, args))
        return self.answer()


def _frames(body: bytes) -> list[tuple[bytes, bytes]]:
    decoder = wire.FrameDecoder()
    frames = decoder.feed(body)
    assert decoder.pending == 0
    return frames


def _pod_lines(home: Path, rid: str) -> list[str]:
    """The pod log's lines of request ``rid``, without their timestamps."""
    tag = f" r={rid[: loglines.REQUEST_ID_CHARS]} "
    lines = []
    for path in sorted((home / "logs").rglob("*.log")):
        lines += [x.split(" ", 1)[1] for x in path.read_text().splitlines() if tag in x]
    return lines


@pytest.fixture
def pod(hotpod_home):
    """(a new connection to the pod, the home of its logs)"""
    remote = kt.fn(work).to(kt.Compute(cpus="0.5"))
    assert remote("nothing", 1) == 1
    url, token = remote._service.pods[0].url, remote._client._headers["Authorization"]
    conns: list[_Raw] = []

    def connect() -> _Raw:
        conns.append(_Raw(url, token))
        return conns[-1]

    yield connect, hotpod_home
    for conn in conns:
        conn.sock.close()


def test_both_paths_send_the_same_bytes_and_pod_log_lines(pod):
    connect, home = pod
    conn = connect()
    assert _frames(conn.call("path")[1]) == [(b"J", b"true")]  # a connection thread
    assert _frames(conn.call("path", chunked=True)[1]) == [(b"J", b"false")]  # the ordinary one
    for kind, rid, chunked in [
        ("nothing", "aaaa0001x", False),
        ("lines", "aaaa0002x", True),
        ("raise", "aaaa0003x", True),
    ]:
        fast = conn.call(kind, 7, rid)
        ordinary = conn.call(kind, 7, rid, chunked=True)
        assert fast == ordinary, (kind, fast, ordinary)  # head, body, chunked or not
        assert fast[2] is chunked, fast
        lines = _pod_lines(home, rid)
        assert lines[: len(lines) // 2] == lines[len(lines) // 2 :], lines
    frames = _frames(conn.call("lines", 7)[1])
    texts = [p.decode() for k, p in frames if k == wire.FRAME_LOG]
    assert texts[:2] == ["one", "two"] and texts[-1] == "partial"
    assert any("warned" in t for t in texts) and frames[-1] == (b"J", b"[7]")
    kinds = [k for k, _ in _frames(conn.call("raise")[1])]
    assert kinds == [wire.FRAME_LOG, wire.FRAME_EXC, wire.FRAME_ERROR]
    assert _pod_lines(home, "aaaa0002x")[0].endswith("| one")


def test_lines_reach_the_caller_while_the_call_runs(pod):
    conn = pod[0]()
    assert _frames(conn.call("path")[1]) == [(b"J", b"true")]
    for _ in range(2):  # read by the connection thread
        assert _frames(conn.call("path")[1]) == [(b"J", b"true")]
        started = time.monotonic()
        conn.sock.sendall(conn.request("sleepy", 2.0))
        assert b"transfer-encoding: chunked" in conn.head()
        first = conn.chunk()
        assert first is not None and _frames(first) == [(b"L", b"first")]
        assert time.monotonic() - started < 1.5  # before the call ended
        rest = b""
        while (data := conn.chunk()) is not None:
            rest += data
        assert _frames(rest) == [(b"J", b'"done"')]
        assert time.monotonic() - started >= 2.0


def test_other_threads_output_stays_whole_and_late_lines_stay_out(pod):
    connect, home = pod
    conn = connect()
    assert _frames(conn.call("path")[1]) == [(b"J", b"true")]
    _head, body, chunked = conn.call("threads", 0, "bbbb0001x")
    frames = _frames(body)
    assert chunked and frames[-1] == (b"J", b"1")
    texts = sorted(p.decode() for k, p in frames[:-1] if k == wire.FRAME_LOG)
    assert texts == sorted([f"m{i}" for i in range(200)] + [f"t{i}" for i in range(200)])
    time.sleep(0.8)  # the late thread prints now, after its call's answer
    assert conn.call("nothing", 5) == conn.call("nothing", 5, chunked=True)
    assert _frames(conn.call("nothing", 5)[1]) == [(b"J", b"5")]
    late = [x for x in _pod_lines(home, "bbbb0001x") if "| late" in x]
    assert len(late) == 200


def test_a_pipelined_log_streaming_call_is_answered_by_the_ordinary_path(pod):
    conn = pod[0]()
    conn.sock.sendall(conn.request("lines", 1) + conn.request("path") + conn.request("lines", 2))
    assert _frames(conn.answer()[1])[-1] == (b"J", b"[1]")
    assert _frames(conn.answer()[1]) == [(b"J", b"false")]  # ran once, on the event loop's side
    assert _frames(conn.answer()[1])[-1] == (b"J", b"[2]")
    assert _frames(conn.call("path")[1]) == [(b"J", b"true")]


def test_a_returned_generator_streams_from_the_connection_thread(hotpod_home):
    remote = kt.fn(logged_numbers).to(kt.Compute(cpus="0.5"))
    url, token = remote._service.pods[0].url, remote._client._headers["Authorization"]
    conn = _Raw(url, token)
    try:
        fast = conn.call("", args=[3], rid="cccc0001x")  # on the connection thread (the first)
        ordinary = conn.call("", args=[3], rid="cccc0001x")  # known now: the ordinary path
        assert fast == ordinary
        frames = _frames(fast[1])
        assert fast[2] and frames[0] == (b"L", b"start") and frames[-1] == (wire.FRAME_END, b"")
        assert [wire.decode_item(p) for k, p in frames if k == wire.FRAME_ITEM] == [0, 1, 2]
        assert [p for k, p in frames if k == wire.FRAME_LOG] == [b"start"] + [
            f"item {i}".encode() for i in range(3)
        ]
    finally:
        conn.sock.close()
