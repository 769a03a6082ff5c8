"""The pod's fast path for plain calls (``runtime.fastcall``), on real pods over real HTTP."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time

import httpx
import pytest

import hotpod as kt
from hotpod import wire
from hotpod.runtime import fastconn

pytestmark = pytest.mark.slow


def add(a, b):  # the functions the pods serve
    return a + b


def numbers(n):  # a plain function that returns a generator: streamed by the ordinary path
    return (i for i in range(n))


def maybe_numbers(n):  # a generator when n >= 0
    return (i for i in range(n)) if n >= 0 else n


def nap(seconds):
    time.sleep(seconds)
    return seconds


def raises(message):
    raise KeyError(message)


def test_plain_calls_errors_generators_and_metrics(hotpod_home):
    quiet = {"stream_logs": False}
    remote_add = kt.fn(add).to(kt.Compute(cpus="0.5")).with_options(**quiet)
    assert remote_add(1, 2) == 3
    assert remote_add([1], b=[2]) == [1, 2]
    assert remote_add((1,), (2,)) == (1, 2)  # pickled arguments and result
    remote_numbers = kt.fn(numbers).to(kt.Compute(cpus="0.5")).with_options(**quiet)
    assert list(remote_numbers(3)) == [0, 1, 2]  # first call: the fast path hands it over
    assert list(remote_numbers(4)) == [0, 1, 2, 3]  # then: the ordinary path
    remote_raises = kt.fn(raises).to(kt.Compute(cpus="0.5")).with_options(**quiet)
    with pytest.raises(KeyError, match="gone"):
        remote_raises("gone")
    for _ in range(20):
        assert remote_add(2, 2) == 4
    pod = remote_add._service.pods[0]
    token = remote_add._client._headers["Authorization"]
    text = httpx.get(f"{pod.url}/metrics", headers={"Authorization": token}).text
    assert 'hotpod_calls_total{method="__call__",outcome="ok"} 23.0' in text
    assert "hotpod_calls_in_flight 0.0" in text
    bad = httpx.post(
        f"{pod.url}/call",
        content=b'{"args": [1, 2], "kwargs": {}}',
        headers={
            "Authorization": "Bearer nope",
            "X-Hotpod-Protocol": "1",
            "Content-Type": "application/json",
        },
    )
    assert bad.status_code == 403  # replayed through the ordinary path, which refuses it
    broken = httpx.post(
        f"{pod.url}/call",
        content=b"{not json",
        headers={
            "Authorization": token,
            "X-Hotpod-Protocol": "1",
            "Content-Type": "application/json",
        },
    )
    assert broken.status_code == 400 and "not valid JSON" in broken.text


def test_a_long_plain_call_does_not_hold_up_others(hotpod_home):
    remote_nap = kt.fn(nap).to(kt.Compute(cpus="0.5")).with_options(stream_logs=False)
    assert remote_nap(0) == 0
    long = threading.Thread(target=remote_nap, args=(2.0,))
    long.start()
    time.sleep(0.3)
    t = time.monotonic()
    assert remote_nap(0.01) == 0.01  # another connection, another call thread
    assert time.monotonic() - t < 1.0
    long.join()


def test_broadcast_to_four_pods(hotpod_home):
    remote_add = kt.fn(add).to(kt.Compute(cpus="0.25", replicas=4))
    for quiet in (False, True):  # log streaming on (ordinary path) and off (fast path)
        handle = remote_add.with_options(stream_logs=not quiet)
        for i in range(50):
            assert handle(i, 1) == [i + 1] * 4


# -- the connection thread (``runtime.fastconn``): one keep-alive connection, request by request


def _frames_result(body: bytes):
    assert body[:1] == b"J", body
    return json.loads(body[5:])


class _Conn:
    """One keep-alive connection to a pod (``http.client``), which must stay the same one."""

    def __init__(self, url: str, token: str) -> None:
        host, port = url.rsplit("/", 1)[-1].split(":")
        self.http = http.client.HTTPConnection(host, int(port), timeout=10)
        self.token = token
        self.local: tuple | None = None

    def request(self, method: str, path: str, body: bytes = b"", **headers: str) -> tuple:
        base = {
            "Authorization": self.token,
            "X-Hotpod-Protocol": "1",
            "Content-Type": "application/json",
        }
        base.update({k.replace("_", "-"): v for k, v in headers.items()})
        self.http.request(method, path, body=body, headers=base)
        resp = self.http.getresponse()
        data = resp.read()
        local = self.http.sock.getsockname()
        assert self.local in (None, local), "the pod closed the connection"
        self.local = local
        return resp.status, data

    def call(self, path: str, *args, **headers: str):
        status, data = self.request(
            "POST", path, json.dumps({"args": list(args)}).encode(), **headers
        )
        assert status == 200, data
        return _frames_result(data)


def test_a_connection_thread_hands_back_what_it_does_not_take(hotpod_home):
    remote_add = kt.fn(add).to(kt.Compute(cpus="0.5")).with_options(stream_logs=False)
    assert remote_add(0, 0) == 0
    pod = remote_add._service.pods[0]
    conn = _Conn(pod.url, remote_add._client._headers["Authorization"])
    assert conn.call("/call", 1, 2) == 3  # read by the event loop, run on a connection thread
    assert conn.call("/call", 2, 3) == 5  # read and run by that thread
    status, data = conn.request("POST", "/call", b'{"args": [3, 4]}', X_Hotpod_Stream_Logs="1")
    assert status == 200 and _frames_result(data) == 7  # log-streaming: that thread too
    assert conn.call("/call", 4, 5) == 9  # a connection thread again
    status, data = conn.request("GET", "/health")
    assert status == 200 and json.loads(data)["ready"]
    assert conn.call("/call", 5, 6) == 11
    status, data = conn.request("POST", "/call", b'{"args": [1, 2]}', Authorization="Bearer no")
    assert status == 403  # the token check (by the ordinary path, which answers it)
    assert conn.call("/call", 6, 7) == 13
    status, data = conn.request("POST", "/call", b"{not json")
    assert status == 400 and b"not valid JSON" in data
    assert conn.call("/call", 7, 8) == 15
    status, data = conn.request("POST", "/call/nope", b'{"args": []}')
    assert status == 404
    too_big = json.dumps({"args": ["x" * (2 << 20), ""]}).encode()  # past the fast path's limit
    status, data = conn.request("POST", "/call", too_big)
    assert status == 200 and len(_frames_result(data)) == 2 << 20
    assert conn.call("/call", 8, 9) == 17
    time.sleep(fastconn.IDLE_HANDBACK + 0.5)  # idle: the thread gives the connection back
    assert conn.call("/call", 9, 10) == 19
    token = remote_add._client._headers["Authorization"]
    text = httpx.get(f"{pod.url}/metrics", headers={"Authorization": token}).text
    assert 'hotpod_calls_total{method="__call__",outcome="ok"} 11.0' in text
    assert "hotpod_calls_in_flight 0.0" in text
    conn.http.close()


def test_a_generator_on_a_connection_thread_streams_from_the_event_loop(hotpod_home):
    remote = kt.fn(maybe_numbers).to(kt.Compute(cpus="0.5")).with_options(stream_logs=False)
    assert remote(-1) == -1
    pod = remote._service.pods[0]
    conn = _Conn(pod.url, remote._client._headers["Authorization"])
    assert conn.call("/call", -2) == -2  # read by the event loop, run on a connection thread
    assert conn.call("/call", -3) == -3  # read and run by that thread
    status, data = conn.request("POST", "/call", b'{"args": [3]}')  # returns a generator
    kinds = [(k, p) for k, p in wire.FrameDecoder().feed(data)]
    assert status == 200 and kinds[0][0] == wire.FRAME_STREAM and kinds[-1][0] == wire.FRAME_END
    assert [wire.decode_item(p) for k, p in kinds if k == wire.FRAME_ITEM] == [0, 1, 2]
    assert conn.call("/call", -4) == -4  # the same connection goes on
    conn.http.close()


def test_a_stopping_worker_answers_the_call_in_progress_and_closes_idle_threads(hotpod_home):
    remote_nap = kt.fn(nap).to(kt.Compute(cpus="0.5")).with_options(stream_logs=False)
    assert remote_nap(0) == 0
    pod = remote_nap._service.pods[0]
    token = remote_nap._client._headers["Authorization"]
    pid = remote_nap._client.health(pod)["pid"]
    idle = _Conn(pod.url, token)
    assert idle.call("/call", 0) == 0  # this connection's thread now waits for a request
    busy = _Conn(pod.url, token)
    assert busy.call("/call", 0) == 0
    answer: list = []
    long = threading.Thread(target=lambda: answer.append(busy.call("/call", 1.0)))
    long.start()
    time.sleep(0.3)
    t = time.monotonic()
    os.kill(pid, signal.SIGTERM)  # uvicorn's graceful shutdown (as for a successor worker)
    assert idle.http.sock.recv(1) == b""  # closed at once, not after the 5 s grace
    assert time.monotonic() - t < 2.0
    long.join(10)
    assert answer == [1.0]  # the call in progress finished and was answered
    idle.http.close()
    busy.http.close()
