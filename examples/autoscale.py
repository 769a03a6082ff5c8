"""An autoscaled pool: a burst of concurrent calls makes it grow, each call goes to one pod.

python examples/autoscale.py

The pool starts with one pod (`initial_scale` is 1), wants one call in flight per pod
(`target=1` at 100% utilization) and may grow to 3 pods. A burst of 24 concurrent calls,
0.5 s each, sends it into Knative's panic mode: it scales up within a tick, and the calls
spread over the new pods as they become ready. The script prints which pods served the
burst and makes one more call on the scaled pool. With `window="6s"`, a pool left idle scales
back to zero about 6 s after its last call: the script waits for that, makes a call that
starts a pod again (the router holds it until the pod is ready), and tears the service down.

To watch it scale, run it and, in another terminal:

    watch -n 0.5 hotpod describe slow-square    # the "Autoscale:" line: desired, ready, in flight

`--keep` leaves the service running (`hotpod teardown slow-square` when done).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import hotpod as kt


def slow_square(x: int, seconds: float = 0.5) -> dict:
    """Takes `seconds` of wall time; says which process answered."""
    time.sleep(seconds)
    return {"x": x, "square": x * x, "pid": os.getpid()}


def main() -> None:
    compute = kt.Compute(cpus="0.25").autoscale(
        min_scale=0, max_scale=3, target=1, target_utilization=100, window="6s"
    )
    remote = kt.fn(slow_square, name="slow-square").to(compute).with_options(stream_logs=False)
    print(f"deployed: {len(kt.lookup('slow-square').pods)} pod(s)")
    print("one call ->", remote(3))  # load-balanced: one pod answers, not a list

    start = time.perf_counter()
    peak = 0
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(remote, i) for i in range(24)]
        while not all(f.done() for f in futures):
            peak = max(peak, len(kt.lookup("slow-square").pods))
            time.sleep(0.1)
        results = [f.result() for f in futures]
    took = time.perf_counter() - start
    assert [r["square"] for r in results] == [i * i for i in range(24)]
    per_pid = Counter(r["pid"] for r in results)
    print(f"burst: 24 calls, 6 at a time, in {took:.2f} s")
    print(f"burst: served by {len(per_pid)} pod process(es): {dict(per_pid)}")
    print(f"burst: the pool peaked at {peak} pod(s) (max_scale=3)")

    pods = kt.lookup("slow-square").pods
    after = remote(7)
    print(f"after the burst: {len(pods)} pod(s) {pods}; one call -> {after['square']}")

    idle = time.perf_counter()  # no calls now: a stable window later, the pool goes to zero
    while kt.lookup("slow-square").pods and time.perf_counter() - idle < 30:
        time.sleep(0.2)
    left = len(kt.lookup("slow-square").pods)
    print(f"idle: {left} pod(s) after {time.perf_counter() - idle:.1f} s")

    start = time.perf_counter()
    again = remote(8)  # held by the router until a new pod is ready
    took = time.perf_counter() - start
    now = len(kt.lookup("slow-square").pods)
    print(f"from zero: one call -> {again['square']} in {took:.2f} s; now {now} pod(s)")

    if "--keep" in sys.argv:
        print("left running: try 'hotpod describe slow-square'")
    else:
        remote.teardown()
        print("torn down (run with --keep to leave it running)")


if __name__ == "__main__":
    main()
