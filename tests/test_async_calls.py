"""Async twins and streaming calls, end to end on the local backend."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import async_code as ac
import hotpod as kt
import remote_code as rc

pytestmark = pytest.mark.slow

HALF = kt.Compute(cpus="0.5")


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_aio_twins_of_to_calls_and_methods(hotpod_home):
    async def main() -> None:
        remote = await kt.fn(ac.square).to.aio(HALF)
        assert await remote.aio(7) == 49
        assert remote(3) == 9  # the sync call is unchanged
        model = await kt.cls(ac.Streamer).to.aio(HALF, init_args={"prefix": "w"})
        assert await model.aupper.aio("abc") == "ABC"
        with pytest.raises(ValueError, match="bad value on the pod") as info:
            await kt.fn(rc.fail).to(HALF).aio("value")
        assert "remote_code.py" in str(info.value.__cause__)
        with pytest.raises(AttributeError, match="no attribute 'nope'"):
            await model.nope.aio()

    asyncio.run(main())


def test_gather_over_hundreds_of_calls(hotpod_home):
    sync_fn = kt.fn(ac.square).to(HALF)
    async_fn = kt.fn(ac.asleep).to(HALF)

    async def main() -> float:
        results = await asyncio.gather(*(sync_fn.aio(i) for i in range(300)))
        assert results == [i * i for i in range(300)]
        t0 = time.perf_counter()
        slept = await asyncio.gather(*(async_fn.aio(0.5, i) for i in range(300)))
        assert slept == list(range(300))
        return time.perf_counter() - t0

    assert asyncio.run(main()) < 5.0  # concurrent on the pod, not 150 s one after another


def test_generator_items_arrive_as_they_are_produced(hotpod_home, capsys):
    remote = kt.fn(ac.count).to(HALF)
    t0 = time.perf_counter()
    seen = []
    for item in remote(4, 0.3):
        seen.append((item, time.perf_counter() - t0))
    assert [i for i, _ in seen] == [0, 1, 2, 3]
    assert seen[0][1] < 0.9 < seen[-1][1]
    out = capsys.readouterr().out
    assert "(count-0) producing 0\n" in out and "(count-0) producing 3\n" in out

    t0 = time.perf_counter()
    stream = iter(remote.with_options(stream_logs=False)(1000, 0.002))
    first = next(stream)
    first_at = time.perf_counter() - t0
    rest = list(stream)
    assert [first, *rest] == list(range(1000))
    assert first_at < (time.perf_counter() - t0) / 2  # the first came before the last was made


def test_async_generators_and_async_iterators(hotpod_home):
    agen = kt.fn(ac.acount).to(HALF)
    assert list(agen(3)) == [{"i": i, "rank": 0} for i in range(3)]  # sync iterator
    gen = kt.fn(ac.count).to(HALF)

    async def main() -> None:
        assert [x async for x in await agen.aio(3, 0.01)] == [{"i": i, "rank": 0} for i in range(3)]
        assert [x async for x in await gen.aio(3)] == [0, 1, 2]
        model = kt.cls(ac.Streamer).to(HALF, init_args={"prefix": "w"})
        assert [x async for x in await model.words.aio(2)] == ["w0", "w1"]
        assert list(model.words(2)) == ["w0", "w1"]

    asyncio.run(main())


def test_a_function_returning_a_generator_streams_pickled_items(hotpod_home):
    remote = kt.fn(ac.make_counter).to(HALF)
    assert list(remote(3)) == [(0, 0), (1, 1), (2, 4)]
    assert list(remote.with_options(stream_logs=False)(2)) == [(0, 0), (1, 1)]


def test_an_error_mid_stream_comes_after_the_items(hotpod_home):
    remote = kt.fn(ac.count_then_fail).to(HALF)
    got = []
    with pytest.raises(ValueError, match="failed after 3 items"):
        for item in remote(3):
            got.append(item)
    assert got == [0, 1, 2]

    async def main() -> list[int]:
        out = []
        with pytest.raises(ValueError, match="failed after 2 items"):
            async for item in await remote.aio(2):
                out.append(item)
        return out

    assert asyncio.run(main()) == [0, 1]


def test_stopping_a_stream_early_stops_the_generator_on_the_pod(hotpod_home, tmp_path):
    mark = tmp_path / "sync"
    remote = kt.fn(ac.produce_until_stopped).to(HALF)
    for item in remote(str(mark), 0.05):
        if item == 3:
            break
    wait_for(lambda: Path(f"{mark}.closed").exists())
    produced = int(mark.read_text())
    time.sleep(0.3)
    assert int(mark.read_text()) == produced < 10  # no longer pulled
    assert list(kt.fn(ac.count).to(HALF)(2)) == [0, 1]
    dropped = tmp_path / "dropped"
    remote(str(dropped), 0.05)  # never iterated: dropping it closes the connection too
    wait_for(lambda: Path(f"{dropped}.closed").exists())

    amark = tmp_path / "async"
    aremote = kt.fn(ac.aproduce_until_stopped).to(HALF)

    async def main() -> None:
        stream = await aremote.aio(str(amark), 0.05)
        async for item in stream:
            if item == 3:
                break
        await stream.aclose()  # type: ignore[attr-defined]

    asyncio.run(main())
    wait_for(lambda: Path(f"{amark}.cancelled").exists())
    assert int(Path(f"{amark}.cancelled").read_text()) < 10


def test_cancelling_an_awaited_call_cancels_async_work(hotpod_home, tmp_path):
    mark = tmp_path / "cancel"
    remote = kt.fn(ac.wait_or_note_cancel).to(HALF)

    async def main() -> None:
        task = asyncio.create_task(remote.aio(str(mark), 30))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await remote.aio(str(tmp_path / "other"), 0.01) == "finished"

    asyncio.run(main())
    wait_for(lambda: mark.exists(), 5)
    assert mark.read_text() == "cancelled"


def test_cancelled_sync_work_runs_to_its_end(hotpod_home, tmp_path):
    mark = tmp_path / "sync-cancel"
    remote = kt.fn(ac.sleep_then_note).to(HALF)

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(remote.aio(str(mark), 1.0), 0.3)
        assert not mark.exists()

    asyncio.run(main())
    wait_for(lambda: mark.exists(), 5)  # it could not be interrupted; its result was dropped
    assert remote(str(tmp_path / "again"), 0.01) == "finished"


def test_timeouts_apply_to_streams_and_async_calls(hotpod_home):
    remote = kt.fn(ac.count).to(HALF).with_options(timeout=0.6, stream_logs=False)
    got = []
    with pytest.raises(kt.CallTimeoutError, match=r"did not finish within 0\.6 s"):
        for item in remote(100, 0.1):
            got.append(item)
    assert 2 <= len(got) < 10
    slow = kt.fn(ac.asleep).to(HALF).with_options(timeout=0.3)

    async def main() -> None:
        with pytest.raises(kt.CallTimeoutError):
            async for _ in await remote.aio(100, 0.1):
                pass
        with pytest.raises(kt.CallTimeoutError):
            await slow.aio(5, 1)

    asyncio.run(main())


def test_broadcast_aio_and_streams_from_several_pods(hotpod_home):
    two = kt.Compute(cpus="0.5", replicas=2)
    remote = kt.fn(ac.acount).to(two)
    streams = remote(2)
    assert [list(s) for s in streams] == [
        [{"i": i, "rank": rank} for i in range(2)] for rank in range(2)
    ]
    failing = kt.fn(rc.fail_on_rank).to(two)

    async def main() -> None:
        streams = await remote.aio(2)
        got = []
        for s in streams:
            got.append([x async for x in s])
        assert got == [[{"i": i, "rank": rank} for i in range(2)] for rank in range(2)]
        assert await failing.aio(5) == [0, 1]
        with pytest.raises(kt.BroadcastError, match="fail-on-rank-1") as info:
            await failing.aio(1)
        assert info.value.results == [0, None]
        assert isinstance(info.value.errors[1], RuntimeError)

    asyncio.run(main())
