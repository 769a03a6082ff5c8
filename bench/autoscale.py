"""Autoscaling on the local backend, each figure beside its baseline measured in the same run.

1. From zero to the first response, beside a cold deploy. Cold deploy: ``.to()`` of a fresh
   1-pod service (a new name each rep) through its first answer. From zero: the latency of the
   first call to an autoscaled service (min_scale=0) whose pool has scaled to zero; the router
   holds the call until a pod is ready. Medians over ``--reps``; the ratio is printed
   (issue target: <= 1.5x).
2. Scale-up reaction under a step of load: a pool at 1 pod (min 1, max 3, target 1 at 100%
   utilization, window 6 s) gets 6 concurrent callers of a 0.5 s function at once; the time
   from the step to the 2nd and the 3rd pod serving (the first call a new pod starts), beside
   the cold deploy. Failed calls are counted (there must be none).

    python bench/autoscale.py [--reps 5] [--steps 3]

Runs in a HOTPOD_HOME of its own (a temporary directory) and tears everything down at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

MODULE = "hp_autoscale_mod"
CALL = 0.2  # seconds per call in the load step
SOURCE = """
import os, time

def echo(x):
    return x

def work(seconds):
    started = time.time()
    time.sleep(seconds)
    return {"pid": os.getpid(), "started": started}
"""


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def pod_count(kt, name: str) -> int:
    return len(kt.lookup(name).pods)


def cold_deploys(kt, mod, reps: int) -> list[float]:
    out = []
    for i in range(reps):
        t = time.perf_counter()
        remote = kt.fn(mod.echo, name=f"cold-{i}").to(kt.Compute(cpus="0.25"))
        assert remote(1) == 1
        out.append(time.perf_counter() - t)
        remote.teardown()
    return out


def from_zero(kt, mod, reps: int) -> list[float]:
    compute = kt.Compute(cpus="0.25").autoscale(
        min_scale=0, max_scale=1, initial_scale=0, window="6s"
    )
    remote = kt.fn(mod.echo, name="zero").to(compute)
    out = []
    for _ in range(reps):
        wait_until(lambda: pod_count(kt, "zero") == 0, 60, "the pool to scale to zero")
        time.sleep(0.5)  # the last pod fully stopped
        t = time.perf_counter()
        assert remote(1) == 1
        out.append(time.perf_counter() - t)
    remote.teardown()
    return out


def one_step(kt, remote, callers: int, seconds: float) -> dict[str, Any]:
    """``callers`` threads calling ``remote(CALL)`` in a loop for ``seconds``, all at once,
    while a watcher notes when the router counts 2 and 3 ready pods."""
    results: list[dict] = []
    errors: list[Exception] = []
    ready_at: list[float] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def caller() -> None:
        while time.monotonic() < end:
            try:
                r = remote(CALL)
            except Exception as exc:
                with lock:
                    errors.append(exc)
                continue
            with lock:
                results.append(r)

    def watch() -> None:
        while time.monotonic() < end and len(ready_at) < 2:
            ready = kt.lookup("step")._service.meta["router"]["ready"]
            while len(ready_at) < min(ready - 1, 2):
                ready_at.append(time.time())
            time.sleep(0.02)

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    threads.append(threading.Thread(target=watch))
    step = time.time()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    first: dict[int, float] = {}
    for r in results:
        first[r["pid"]] = min(first.get(r["pid"], r["started"]), r["started"])
    serving = sorted(first.values())
    return {
        "serving": [t - step for t in serving[1:3]],
        "ready": [t - step for t in ready_at],
        "calls": len(results) + len(errors),
        "failed": len(errors),
    }


def load_step(kt, mod, steps: int) -> dict[str, Any]:
    """Seconds from a step of load to the 2nd and 3rd pod ready (router) and serving (their
    first call), over ``steps`` steps; calls and failed calls."""
    compute = kt.Compute(cpus="0.25").autoscale(
        min_scale=1, max_scale=3, target=1, target_utilization=100, window="6s"
    )
    remote = kt.fn(mod.work, name="step").to(compute)
    out: dict[str, Any] = {"ready2": [], "ready3": [], "serving2": [], "serving3": []}
    out["calls"] = out["failed"] = 0
    for _ in range(steps):
        wait_until(lambda: pod_count(kt, "step") == 1, 60, "the pool to be back at 1 pod")
        time.sleep(0.5)
        assert remote(0.01)["pid"]  # a warm connection
        got = one_step(kt, remote, callers=6, seconds=6.0)
        for key, values in (("ready", got["ready"]), ("serving", got["serving"])):
            for n, value in zip((2, 3), values, strict=False):
                out[f"{key}{n}"].append(value)
        out["calls"] += got["calls"]
        out["failed"] += got["failed"]
    remote.teardown()
    return out


def row(label: str, samples: list[float]) -> str:
    median = f"{statistics.median(samples):.2f}" if samples else "-"
    return f"{label:38}{median:>9}   " + ", ".join(f"{x:.2f}" for x in samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="hotpod-bench-autoscale-")
    os.environ["HOTPOD_HOME"] = home
    project = Path(tempfile.mkdtemp(prefix="hp-autoscale-proj-"))
    (project / "pyproject.toml").write_text("[project]\nname = 'bench'\n")
    (project / f"{MODULE}.py").write_text(SOURCE)
    sys.path.insert(0, str(project))
    os.chdir(project)
    import importlib

    import hotpod as kt

    mod = importlib.import_module(MODULE)
    try:
        cold = cold_deploys(kt, mod, args.reps)
        zero = from_zero(kt, mod, args.reps)
        step = load_step(kt, mod, args.steps)
    finally:
        kt.teardown(all=True)
    print(f"autoscaling, local backend, cpus=0.25 per pod, {os.cpu_count()} cores")
    print(f"{'':38}{'median s':>9}   samples")
    print(row("cold deploy (.to() + first answer)", cold))
    print(row("from zero (first call, pool at 0)", zero))
    ratio = statistics.median(zero) / statistics.median(cold)
    print(f"from zero / cold deploy: {ratio:.2f}x (target <= 1.5x)")
    print(
        f"load step 1 -> 6 callers of a {CALL:g} s call, 6 s ({args.steps} steps, "
        f"{step['calls']} calls, {step['failed']} failed)"
    )
    print(row("  step -> 2nd pod ready (router)", step["ready2"]))
    print(row("  step -> 3rd pod ready (router)", step["ready3"]))
    print(row("  step -> 2nd pod serving (1st call)", step["serving2"]))
    print(row("  step -> 3rd pod serving (1st call)", step["serving3"]))


if __name__ == "__main__":
    main()
