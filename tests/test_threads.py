"""The call threads that run sync user code."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import pytest

from hotpod.runtime.threads import CallThreads

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


def test_runs_in_another_thread_with_the_callers_context():
    threads = CallThreads(limit=4)

    async def main():
        var.set("from the loop")
        return await threads.run(lambda: (threading.get_ident(), var.get()))

    ident, value = asyncio.run(main())
    assert ident != threading.get_ident() and value == "from the loop"
    threads.shutdown()


def test_exceptions_reach_the_caller():
    threads = CallThreads(limit=2)

    def boom():
        raise KeyError("nope")

    with pytest.raises(KeyError, match="nope"):
        asyncio.run(threads.run(boom))
    threads.shutdown()


def test_blocking_calls_run_concurrently_up_to_the_limit():
    threads = CallThreads(limit=3)
    active = 0
    peak = 0
    lock = threading.Lock()

    def work():
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.1)
        with lock:
            active -= 1

    async def main():
        t0 = time.monotonic()
        await asyncio.gather(*(threads.run(work) for _ in range(6)))
        return time.monotonic() - t0

    elapsed = asyncio.run(main())
    assert peak == 3  # never more than the limit
    assert elapsed < 0.5  # two waves of 0.1 s, not six
    threads.shutdown()


def test_sequential_calls_reuse_one_thread():
    threads = CallThreads(limit=8)

    async def main():
        return {await threads.run(threading.get_ident) for _ in range(50)}

    assert len(asyncio.run(main())) <= 2
    threads.shutdown()
