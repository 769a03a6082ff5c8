"""The pod's fast path for plain calls (``runtime.fastcall``), on real pods over real HTTP."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

import hotpod as kt

pytestmark = pytest.mark.slow


def add(a, b):  # the functions the pods serve
    return a + b


def numbers(n):  # a plain function that returns a generator: streamed by the ordinary path
    return (i for i in range(n))


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
