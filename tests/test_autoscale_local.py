"""Autoscaling on the local backend: the KPA rule with a fake clock, the router in process, and
end to end (slow) a pool that scales up under load, back to zero when idle, and up from zero."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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
from hotpod.backends.local.controller import Pod
from hotpod.backends.local.router import Router
from hotpod.backends.local.scaling import plan_resize
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


async def _reading_pod(
    got: list[int], first: asyncio.Event, need: int
) -> tuple[asyncio.Server, int]:
    """A pod that reads a request's body as it comes (Content-Length or chunked), noting how
    much it has (``first`` once it has ``need`` bytes), then answers with the count."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).lower()
        total = 0
        if b"transfer-encoding: chunked" in head:
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                total += len(await reader.readexactly(size + 2)) - 2
                if size == 0:
                    break
                got.append(total)
        else:
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            while total < length:
                total += len(await reader.read(length - total))
                got.append(total)
                if total >= need:
                    first.set()
        body = b"%d" % total
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _whole_answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head + await reader.readexactly(length)


def test_router_streams_a_body_to_the_pod_as_it_arrives_and_names_the_pod():
    async def main() -> None:
        got: list[int] = []
        first = asyncio.Event()
        half = 4 << 20
        server, pod_port = await _reading_pod(got, first, half)
        router = Router("svc", limit=0, hold_timeout=10)
        port = await router.start(0)
        router.add("svc-3", pod_port)
        router.set_ready("svc-3", True)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /call HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % (2 * half))
        writer.write(b"a" * half)
        await writer.drain()
        # the pod has the first half while the client still holds the second (no whole read)
        await asyncio.wait_for(first.wait(), 5)
        writer.write(b"b" * half)
        answer = await asyncio.wait_for(_whole_answer(reader), 5)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\nx-hotpod-pod: svc-3\r\n"), answer[:80]
        assert answer.endswith(b"%d" % (2 * half))
        writer.close()

        got.clear()  # a chunked body is passed on chunked, as it comes
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /call HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        for part in (b"x" * 1000, b"y" * 24):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
        writer.write(b"0\r\n\r\n")
        answer = await asyncio.wait_for(_whole_answer(reader), 5)
        assert answer.endswith(b"\r\n\r\n1024"), answer
        writer.close()
        await router.close()
        server.close()

    asyncio.run(main())


def test_an_apply_never_gives_two_pods_one_rank():
    def pods(*ranks: int) -> list[Pod]:
        return [Pod(service="s", rank=r, name=f"s-{r}", port=1000 + r) for r in ranks]

    def ranks(extra: list[Pod]) -> list[int]:
        return [p.rank for p in extra]

    # back to a fixed size after the autoscaler left a gap (rank 1 scaled down, 2 stayed)
    extra, missing = plan_resize(pods(0, 2), 3, autoscaled=False, stopping=set())
    assert (ranks(extra), missing) == ([], [1])  # not a second rank 2
    extra, missing = plan_resize(pods(0, 2), 2, autoscaled=False, stopping=set())
    assert (ranks(extra), missing) == ([2], [1])  # ranks 0..replicas-1
    extra, missing = plan_resize(pods(0, 1, 2, 5), 2, autoscaled=False, stopping=set())
    assert (ranks(extra), missing) == ([5, 2], [])
    # autoscaled: the pods stay where they are; new ones take free ranks, not stopping ones
    assert plan_resize(pods(0, 2), 2, autoscaled=True, stopping=set()) == ([], [])
    extra, missing = plan_resize(pods(2), 3, autoscaled=True, stopping={0})
    assert (ranks(extra), missing) == ([], [1, 3])
    assert plan_resize([], 2, autoscaled=True, stopping=set()) == ([], [0, 1])


def test_controller_switching_an_autoscaled_pool_with_gaps_to_a_fixed_size(tmp_path):
    """The controller's apply, with pods that are records only (no processes)."""
    from hotpod.backends.local.controller import Controller
    from hotpod.config import Settings

    ctl = Controller(Settings(home=tmp_path, backend="local", in_pod=False))

    def start_pod(pod: Pod) -> None:
        pod.status = "running"

    async def stop_pod(pod: Pod) -> None:
        pod.status = "stopped"

    ctl.start_pod = start_pod  # type: ignore[method-assign]
    ctl.stop_pod = stop_pod  # type: ignore[method-assign]
    auto = {"autoscale": {"min_scale": 0, "max_scale": 5, "initial_scale": 3, "window": "6s"}}

    async def main() -> None:
        await ctl.apply("gappy", {"replicas": 1, "template": auto})
        assert [p.rank for p in ctl.pods["gappy"]] == [0, 1, 2]
        ctl.pods["gappy"] = [p for p in ctl.pods["gappy"] if p.rank != 1]  # scaled down at 1
        ctl.pods["gappy"][1].status = "draining"  # and rank 2 was on its way out
        for size, want in ((3, [0, 1, 2]), (2, [0, 1]), (4, [0, 1, 2, 3])):
            await ctl.apply("gappy", {"replicas": size, "template": {"cpus": 1}})
            assert [p.rank for p in ctl.pods["gappy"]] == want
            assert {p.status for p in ctl.pods["gappy"]} == {"running"}
        assert "gappy" not in ctl.scalers.services  # no router, no autoscaler left
        await ctl.scalers.stop()

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


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_router_still_refusing_after_the_controller_restart_says_what_to_do(monkeypatch):
    from hotpod import routing
    from hotpod.backends import ServiceInfo
    from hotpod.client import CallOptions, PodClient
    from hotpod.module import RemoteFn

    router = {"url": f"http://127.0.0.1:{_closed_port()}"}
    info = ServiceInfo("gone-router", "tok", 1, (), 0.0, meta={"router": router})
    asked: list[str] = []

    class Backend:
        def get(self, name: str) -> ServiceInfo:  # (the local backend starts its controller)
            asked.append(name)
            return info

    monkeypatch.setattr(routing, "get_backend", lambda: Backend())
    monkeypatch.setattr(routing, "ROUTER_WAIT", 0.2)
    remote = RemoteFn(info, PodClient.shared(info.name, info.token), CallOptions())
    start = time.monotonic()
    with pytest.raises(kt.PodUnreachableError, match=r"started again.*controller\.log") as err:
        remote(1)
    assert asked == ["gone-router"]  # brought back once, then the call was sent once more
    assert "hotpod describe gone-router" in str(err.value)
    assert time.monotonic() - start < 5  # refused at once: no waiting as for a pod


FLAKY_V1 = "VERSION = 'v1'\n\n\ndef version():\n    print('version asked', flush=True)\n    return VERSION\n"


@pytest.mark.slow
def test_a_failed_launch_is_not_given_to_pods_started_later(hotpod_home, tmp_path, monkeypatch):
    from hotpod.services import describe

    project = tmp_path / "flaky"
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\nname = 'flaky'\n")
    module = project / "hp_flaky_mod.py"
    module.write_text(FLAKY_V1)
    monkeypatch.syspath_prepend(str(project))
    import hp_flaky_mod

    compute = kt.Compute(cpus="0.5").autoscale(
        min_scale=0, max_scale=1, initial_scale=0, window="6s"
    )
    remote = kt.fn(hp_flaky_mod.version, name="auto-flaky").to(compute)
    assert remote() == "v1"  # the first pod resumed the launch the .to() handed over
    good = describe("auto-flaky")["pods"][0]["launch_id"]
    _wait(lambda: _router_state("auto-flaky")["launch"] == good, 10, "the launch to be served")
    _wait(lambda: not kt.lookup("auto-flaky").pods, 30, "the pool to scale to zero")

    module.write_text("raise RuntimeError('broken at import')\n")
    kt.fn(hp_flaky_mod.version, name="auto-flaky").to(compute)  # at zero: nothing to fail yet
    bad = _router_state("auto-flaky")["pending"]
    assert bad and bad != good
    assert remote() == "v1"  # the new pod tried the new launch, failed, fell back to the good one
    _wait(lambda: _router_state("auto-flaky")["failed"], 10, "the failure to be seen")
    state = _router_state("auto-flaky")
    assert (state["launch"], state["pending"], state["failed"]["launch_id"]) == (good, None, bad)
    assert "broken at import" in state["failed"]["message"]
    shown = CliRunner().invoke(main, ["describe", "auto-flaky"])
    failed_on = state["failed"]["pod"]
    assert f"New pods:  launch {good}; launch {bad} failed on {failed_on}" in shown.output

    with pytest.raises(kt.DeployError, match="broken at import"):  # with a pod running
        kt.fn(hp_flaky_mod.version, name="auto-flaky").to(compute)
    _wait(lambda: _router_state("auto-flaky")["pending"] is None, 10, "the failure to be seen")
    assert _router_state("auto-flaky")["launch"] == good
    pod = kt.lookup("auto-flaky")._service.pods[0]
    log = Path(pod.log_path or "")
    tried = log.read_text().count("could not load launch")
    os.kill(pod.pid or 0, signal.SIGKILL)  # the controller starts the pod again
    restarted = f"pod {pod.name} starting (restarts {pod.restarts + 1})"
    _wait(lambda: restarted in log.read_text(), 10, "a restart")
    assert remote() == "v1"
    assert log.read_text().count("could not load launch") == tried  # not even tried again


@pytest.mark.slow
# (httpcore leaves the socket of a refused connect to the dead controller's Unix socket to the GC)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_routed_calls_show_the_pods_name_and_survive_a_killed_controller(hotpod_home, capsys):
    compute = kt.Compute(cpus="0.5").autoscale(min_scale=1, max_scale=1, window="6s")
    remote = kt.fn(talk, name="auto-talk").to(compute)
    capsys.readouterr()
    assert remote("one") == "said one"
    assert "(auto-talk-0) saying one" in capsys.readouterr().out  # not (auto-talk-router)

    state = _router_state("auto-talk")
    os.kill(state["pid"], signal.SIGKILL)  # the controller, and the router in it, are gone
    _wait(lambda: not _alive(state["pid"]), 10, "the controller to die")
    start = time.monotonic()
    assert remote("two") == "said two"  # the handle started the controller again
    assert time.monotonic() - start < 15
    again = _router_state("auto-talk")
    assert again["url"] == state["url"] and again["pid"] != state["pid"]  # the port kept
    assert asyncio.run(remote.aio("three")) == "said three"
    assert "(auto-talk-0) saying three" in capsys.readouterr().out


def talk(word: str) -> str:
    print(f"saying {word}", flush=True)
    return f"said {word}"


def _alive(pid: int) -> bool:
    try:
        import psutil

        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except Exception:
        return False
