"""Broadcast latency: a trivial call on 1, 2, 4 and 8 pods, each beside 1 pod in the same run.

One service per pool size (``cpus="0.25"`` per pod, so 8 pods fit on a 2-core machine), all
deployed at once; a round times ``--calls`` calls of each size in turn, one call at a time over
warm keep-alive connections, and the pool sizes are visited in a new order each round so that
machine noise hits them alike. Each figure is the median over rounds of that round's p50 (p99);
each ratio is against the 1-pod figure of the same run. CPU per call (far less noisy than wall
time on a shared machine): the pods' worker processes (``psutil`` CPU times, summed over the
pool's pods) and this client (``time.process_time``), over each round's calls.

    python bench/broadcast.py [--calls 1000] [--rounds 5] [--sizes 1,2,4,8] [--cpus 0.25]
        [--tree N]      (pools of more than N pods broadcast down a tree; 0: never)
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def echo(x: Any) -> Any:  # the function hotpod deploys
    return x


def percentiles(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return s[len(s) // 2] * 1e3, s[min(int(len(s) * 0.99), len(s) - 1)] * 1e3


def time_calls(handle: Callable[[int], Any], calls: int, pods: int) -> list[float]:
    out = []
    expected = 1 if pods == 1 else [1] * pods
    for _ in range(calls):
        t = time.perf_counter()
        result = handle(1)
        out.append(time.perf_counter() - t)
        assert result == expected, result
    return out


def worker_processes(handle: Any) -> list[Any]:
    """The worker process of each pod of ``handle``'s service (the pid ``/health`` names)."""
    import psutil

    client = handle._client
    return [psutil.Process(client.health(pod)["pid"]) for pod in handle._service.pods]


def cpu_seconds(procs: list[Any]) -> float:
    total = 0.0
    for p in procs:
        t = p.cpu_times()
        total += t.user + t.system
    return total


def measure(handle: Any, procs: list[Any], calls: int, pods: int) -> tuple[float, ...]:
    """(p50 ms, p99 ms, pod CPU µs per call, client CPU µs per call) of one round."""
    pod0, client0 = cpu_seconds(procs), time.process_time()
    samples = time_calls(handle, calls, pods)
    pod_us = (cpu_seconds(procs) - pod0) / calls * 1e6
    client_us = (time.process_time() - client0) / calls * 1e6
    return (*percentiles(samples), pod_us, client_us)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default="1,2,4,8")
    parser.add_argument("--cpus", default="0.25", help="cpus per pod (0.1 for 16 or 32 pods)")
    parser.add_argument(
        "--tree", type=int, help="HOTPOD_FANOUT_TREE for this run: 0 flat, 2 a tree from 3 pods"
    )
    opts = parser.parse_args()
    if opts.tree is not None:
        os.environ["HOTPOD_FANOUT_TREE"] = str(opts.tree)
    sizes = sorted({int(s) for s in opts.sizes.split(",")} | {1})

    with tempfile.TemporaryDirectory(prefix="hotpod-bench-") as tmpdir:
        os.environ["HOTPOD_HOME"] = str(Path(tmpdir) / "home")
        import hotpod as kt

        try:
            handles = {
                n: kt.fn(echo, name=f"bench-bcast-{n}")
                .to(kt.Compute(cpus=opts.cpus, replicas=n))
                .with_options(stream_logs=False)
                for n in sizes
            }
            for n, h in handles.items():
                time_calls(h, 200, n)  # warm connections and call threads
            procs = {n: worker_processes(h) for n, h in handles.items()}
            rounds: list[dict[int, tuple[float, ...]]] = []
            for _ in range(opts.rounds):
                order = list(sizes)
                random.shuffle(order)
                rounds.append({n: measure(handles[n], procs[n], opts.calls, n) for n in order})
        finally:
            from hotpod.backends import get_backend

            get_backend().teardown_all()
            get_backend().stop_controller()  # type: ignore[attr-defined]

    print(
        f"broadcast of a trivial call, cpus={opts.cpus} per pod, JSON, warm connections, "
        f"{os.cpu_count()} cores; {opts.rounds} rounds x {opts.calls} calls"
    )
    print(
        f"{'pods':>6}{'p50 ms':>10}{'p99 ms':>10}{'p50 / 1 pod':>14}"
        f"{'pod CPU us':>12}{'client CPU us':>15}   per round"
    )
    for n in sizes:
        p50, p99, pod_us, client_us = (statistics.median(r[n][k] for r in rounds) for k in range(4))
        ratios = [r[n][0] / r[1][0] for r in rounds]
        per_round = ", ".join(f"{x:.2f}" for x in ratios)
        print(
            f"{n:>6}{p50:>10.3f}{p99:>10.3f}{statistics.median(ratios):>13.2f}x"
            f"{pod_us:>12.0f}{client_us:>15.0f}   {per_round}"
        )
    print("(CPU per call: the pool's pod workers together, and this client)")
    if 4 in sizes:
        ratio4 = statistics.median(r[4][0] / r[1][0] for r in rounds)
        print(f"4 pods p50 / 1 pod p50: {ratio4:.2f}x (target <= 1.5x, limit 2x)")


if __name__ == "__main__":
    main()
