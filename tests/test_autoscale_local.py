"""Autoscaling on the local backend: the KPA rule with a fake clock, the router in process, and
end to end (slow) a pool that scales up under load, back to zero when idle, and up from zero."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from click.testing import CliRunner

import hotpod as kt
from hotpod.backends.local.autoscaler import (
    Decider,
    KpaMemory,
    KpaSettings,
    kpa_decide,
    settings_from,
)
from hotpod.backends.local.router import Router
from hotpod.cli import main


def slow_square(x: int, seconds: float = 0.3) -> dict[str, int]:
    time.sleep(seconds)
    return {"x": x, "square": x * x, "pid": os.getpid()}


# -- the rule --------------------------------------------------------------------------------


def test_settings_follow_knatives_defaults():
    s = settings_from({})
    assert (s.min_scale, s.initial_scale, s.window, s.retention) == (0, 1, 60.0, 0.0)
    assert s.target == pytest.approx(70.0)  # target 100 at 70% utilization
    s = settings_from(
        {
            "min_scale": 1,
            "max_scale": 3,
            "target": 1,
            "target_utilization": 100,
            "window": "6s",
            "scale_to_zero_retention": "1m30s",
            "concurrency": 2,
            "initial_scale": 0,
        }
    )
    assert (s.min_scale, s.max_scale, s.target, s.window, s.retention) == (1, 3, 1.0, 6.0, 90.0)
    assert s.panic_window == pytest.approx(0.6)
    assert s.start_count == 1  # the larger of initial_scale and min_scale
    assert settings_from({"concurrency": 4}).target == pytest.approx(4 * 0.7)  # the hard limit
    assert settings_from({"metric": "rps"}).target == pytest.approx(140.0)


def test_desired_is_ceil_of_observed_over_target():
    s = KpaSettings(target=1.0, max_scale=100)
    d = kpa_decide(s, stable=2.5, panic=2.5, ready=3, now=0.0, memory=KpaMemory())
    assert (d.desired, d.panicking) == (3, False)
    # at most halved in one step (Knative's max scale-down rate of 2)
    assert kpa_decide(s, 0.0, 0.0, ready=8, now=0.0, memory=KpaMemory()).desired == 4


def test_panic_starts_at_twice_the_ready_pods_and_never_scales_down_meanwhile():
    s = KpaSettings(target=1.0, window=10.0, max_scale=100)
    d = kpa_decide(s, stable=1.0, panic=6.0, ready=2, now=100.0, memory=KpaMemory())
    assert (d.desired, d.panicking) == (6, True)
    d = kpa_decide(s, stable=1.0, panic=1.0, ready=6, now=105.0, memory=d.memory)
    assert (d.desired, d.panicking) == (6, True)  # no scale-down while panicking
    d = kpa_decide(s, stable=1.0, panic=1.0, ready=6, now=110.0, memory=d.memory)
    assert (d.desired, d.panicking) == (3, False)  # a stable window later: out of panic


def feed(dec: Decider, start: float, end: float, value: float, ready: int, current: int):
    """Samples every 0.1 s from start to end; the desired counts seen."""
    seen = []
    t = start
    while t < end - 1e-9:
        t = round(t + 0.1, 6)
        dec.record(t, value)
        seen.append(dec.decide(t, ready, current))
    return seen


def test_decider_scales_to_zero_a_window_after_traffic_then_after_the_retention():
    s = KpaSettings(target=1.0, window=6.0, retention=2.0, max_scale=3)
    dec = Decider(s, now=0.0)
    assert set(feed(dec, 0.0, 5.9, 0.0, ready=1, current=1)) == {1}  # held a first window
    assert feed(dec, 5.9, 6.5, 3.0, ready=1, current=1)[-1] == 3  # a burst: panic, up to 3
    after = feed(dec, 6.5, 12.6, 0.0, ready=3, current=3)
    assert min(after) >= 1  # the stable window remembers the burst (and halving is the most)
    tail = feed(dec, 12.6, 20.0, 0.0, ready=1, current=1)
    first_zero = 12.6 + 0.1 * (tail.index(0) + 1)
    # the window has seen no traffic from 12.5 on; the retention keeps the last pod 2 s more
    assert 14.5 <= first_zero <= 14.9


def test_scale_down_delay_keeps_the_highest_recent_count():
    s = KpaSettings(target=1.0, window=6.0, scale_down_delay=3.0, max_scale=10)
    dec = Decider(s, now=-100.0)  # no initial hold
    dec.record(0.0, 4.0)
    assert dec.decide(0.0, 4, 4) == 4
    dec.samples.clear()
    dec.record(1.0, 1.0)
    assert dec.decide(1.0, 4, 4) == 4  # wanted 2 (halving limit), the delay keeps 4
    dec.record(2.5, 1.0)
    assert dec.decide(2.5, 4, 4) == 4
    dec.record(3.1, 1.0)
    assert dec.decide(3.1, 4, 4) == 2  # 4 is older than the delay now


def test_min_and_max_scale_clamp():
    s = KpaSettings(min_scale=2, max_scale=3, target=1.0, window=6.0)
    dec = Decider(s, now=-100.0)
    dec.record(0.0, 50.0)
    assert dec.decide(0.0, 3, 3) == 3
    dec.samples.clear()
    dec.record(10.0, 0.0)
    assert dec.decide(10.0, 2, 2) == 2


# -- the router, in process ------------------------------------------------------------------


async def _fake_pod(delay: float, seen: list[str]) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                body = await reader.readexactly(length)
                seen.append(body.decode())
                await asyncio.sleep(delay)
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                for part in (b"one:", body):
                    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _post(port: int, body: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /call HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )
    out = b""
    while not out.endswith(b"0\r\n\r\n"):
        chunk = await reader.read(4096)
        assert chunk, out
        out += chunk
    writer.close()
    await writer.wait_closed()
    return out


def test_router_holds_requests_until_a_pod_is_ready_and_respects_the_limit():
    async def main() -> None:
        seen: list[str] = []
        server, pod_port = await _fake_pod(0.2, seen)
        router = Router("svc", limit=1, hold_timeout=10)
        waited = asyncio.Event()
        router.on_wait = waited.set
        port = await router.start(0)
        router.add("svc-0", pod_port)
        calls = [asyncio.ensure_future(_post(port, b"%d" % i)) for i in range(3)]
        await asyncio.wait_for(waited.wait(), 2)
        await asyncio.sleep(0.1)
        assert router.queued == 3 and not seen  # held: no pod is ready
        router.set_ready("svc-0", True)
        start = time.monotonic()
        outs = await asyncio.gather(*calls)
        # concurrency=1: the three went one after another, in arrival order
        assert time.monotonic() - start >= 0.55
        assert sorted(seen) == ["0", "1", "2"]
        assert all(b"one:" in o for o in outs)
        assert router.concurrency == 0
        avg, rps = router.sample()
        assert avg > 0 and rps > 0
        await router.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_router_balances_and_drains():
    async def main() -> None:
        seen_a: list[str] = []
        seen_b: list[str] = []
        sa, pa = await _fake_pod(0.2, seen_a)
        sb, pb = await _fake_pod(0.2, seen_b)
        router = Router("svc", limit=0, hold_timeout=10)
        port = await router.start(0)
        for name, p in (("a", pa), ("b", pb)):
            router.add(name, p)
            router.set_ready(name, True)
        await asyncio.gather(*(_post(port, b"x") for _ in range(4)))
        assert len(seen_a) == 2 and len(seen_b) == 2  # least loaded
        call = asyncio.ensure_future(_post(port, b"last"))
        await asyncio.sleep(0.05)
        busy = router.pods["a"] if router.pods["a"].inflight else router.pods["b"]
        router.set_draining(busy.name, True)
        assert not busy.drained.is_set()
        await call  # the draining pod finishes what it has
        await asyncio.wait_for(busy.drained.wait(), 1)
        await asyncio.gather(*(_post(port, b"y") for _ in range(2)))
        other = seen_b if busy.name == "a" else seen_a
        assert other.count("y") == 2  # nothing new for the draining pod
        await router.close()
        for server in (sa, sb):
            server.close()
            await server.wait_closed()

    asyncio.run(main())


# -- end to end ------------------------------------------------------------------------------

FAST = dict(
    min_scale=0, max_scale=3, target=1, target_utilization=100, window="6s", initial_scale=1
)


def _router_state(name: str) -> dict:
    return kt.lookup(name)._service.meta["router"]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.slow
def test_pool_scales_up_under_load_then_to_zero_and_back(hotpod_home):
    compute = kt.Compute(cpus="0.5").autoscale(**FAST)
    remote = kt.fn(slow_square, name="auto-square").to(compute)
    state = _router_state("auto-square")
    assert state["url"].startswith("http://127.0.0.1:") and state["actual"] == 1
    first = remote(3)
    assert isinstance(first, dict) and first["square"] == 9  # one answer, not a list

    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, len(kt.lookup("auto-square").pods))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with ThreadPoolExecutor(6) as pool:  # 6 callers, 0.3 s each, for about 6 s
        results = list(pool.map(slow_square_remote(remote), range(120)))
    stop.set()
    watcher.join()
    assert [r["square"] for r in results] == [i * i for i in range(120)]  # none failed
    pids = {r["pid"] for r in results}
    assert peak > 1 and len(pids) > 1, (peak, pids)

    _wait(lambda: not kt.lookup("auto-square").pods, 30, "the pool to scale to zero")
    assert _router_state("auto-square")["actual"] == 0
    shown = CliRunner().invoke(main, ["describe", "auto-square"])
    assert shown.exit_code == 0, shown.output
    assert f"Autoscale: {state['url']}: desired 0, actual 0" in shown.output
    start = time.monotonic()
    assert remote(5)["square"] == 25  # held at zero until a pod is ready
    from_zero = time.monotonic() - start
    assert from_zero < 20
    assert len(kt.lookup("auto-square").pods) == 1


def slow_square_remote(remote):
    return lambda i: remote(i)


@pytest.mark.slow
def test_async_calls_and_concurrency_limit(hotpod_home):
    compute = kt.Compute(cpus="0.5").autoscale(min_scale=1, max_scale=1, concurrency=1, window="6s")
    remote = kt.fn(slow_square, name="auto-limited").to(compute)

    async def main() -> list[dict]:
        return await asyncio.gather(*(remote.aio(i, 0.2) for i in range(4)))

    start = time.monotonic()
    results = asyncio.run(main())
    assert [r["square"] for r in results] == [0, 1, 4, 9]
    assert time.monotonic() - start >= 0.75  # one at a time on the single pod
    assert len({r["pid"] for r in results}) == 1


@pytest.mark.slow
def test_initial_scale_zero_deploys_no_pod_and_pods_start_with_the_last_launch(hotpod_home):
    compute = kt.Compute(cpus="0.5").autoscale(min_scale=0, initial_scale=0, window="6s")
    remote = kt.fn(slow_square, name="auto-zero").to(compute)
    assert remote.pods == []
    assert remote(4, 0.0)["square"] == 16  # the first call starts a pod
    assert len(kt.lookup("auto-zero").pods) == 1

    greeter = kt.cls(Greeter, name="auto-greet")
    greeter.to(compute, init_args={"word": "hi"})
    remote_cls = greeter.to(compute, init_args={"word": "bye"})  # redeployed at zero
    assert remote_cls.pods == []
    assert remote_cls.greet("you") == "bye you"  # the new pod resumed the last launch


class Greeter:
    def __init__(self, word: str) -> None:
        self.word = word

    def greet(self, name: str) -> str:
        return f"{self.word} {name}"
