"""The router of an autoscaled pool with a large argument: the controller's peak memory and the
call's time, beside the same call to a plain 1-pod service (no router) in the same run.

The local controller holds the routers; a call's request goes through it on its way to a pod.
This sends ``--mib`` MiB of bytes as the argument (pickled, so the array's buffer travels as
it is) and reads the controller's peak resident memory (``VmHWM`` in ``/proc/PID/status``)
before and after: the growth is what the router kept of the request at once.

    python bench/router_memory.py [--mib 256] [--reps 3]

Runs in a HOTPOD_HOME of its own (a temporary directory) and tears everything down at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

MODULE = "hp_router_mem_mod"
SOURCE = """
def size(data):
    return len(data)
"""


def peak_rss(pid: int) -> int:
    """A process's peak resident memory, in bytes (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise SystemExit("no VmHWM in /proc/PID/status: this measures on Linux only")


def controller_pid() -> int:
    from hotpod.backends import get_backend

    backend = get_backend()
    return int(backend._http().get("/ping").json()["pid"])  # type: ignore[attr-defined]


def timed(remote, data: bytes, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        assert remote(data) == len(data)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="hotpod-bench-router-mem-")
    os.environ["HOTPOD_HOME"] = home
    project = Path(tempfile.mkdtemp(prefix="hp-router-mem-proj-"))
    (project / "pyproject.toml").write_text("[project]\nname = 'bench'\n")
    (project / f"{MODULE}.py").write_text(SOURCE)
    sys.path.insert(0, str(project))
    os.chdir(project)
    import importlib

    import hotpod as kt

    mod = importlib.import_module(MODULE)
    data = os.urandom(1 << 20) * args.mib
    try:
        plain = kt.fn(mod.size, name="plain").to(kt.Compute(cpus="0.5"))
        auto = kt.fn(mod.size, name="routed").to(
            kt.Compute(cpus="0.5").autoscale(min_scale=1, max_scale=1, window="60s")
        )
        assert auto(b"warm") == 4 and plain(b"warm") == 4
        pid = controller_pid()
        before = peak_rss(pid)
        routed_s = timed(auto, data, args.reps)
        after = peak_rss(pid)
        plain_s = timed(plain, data, args.reps)
    finally:
        kt.teardown(all=True)
    mib = 1 << 20
    print(f"a {args.mib} MiB argument through the router, local backend, {os.cpu_count()} cores")
    print(f"controller peak RSS before   {before / mib:8.0f} MiB")
    print(f"controller peak RSS after    {after / mib:8.0f} MiB   (+{(after - before) / mib:.0f})")
    for label, samples in (("routed call", routed_s), ("plain call (no router)", plain_s)):
        rate = args.mib / statistics.median(samples)
        print(
            f"{label:28} {statistics.median(samples):6.2f} s  {rate:6.0f} MiB/s   "
            + ", ".join(f"{s:.2f}" for s in samples)
        )


if __name__ == "__main__":
    main()
