"""Redeploy speed, each figure beside its baseline measured in the same run.

1. Code-change redeploy on 2 replicas, through the first call answered by the new code, beside
   ``python -c "import <the deployed module>"`` in a subprocess (the floor a reload approaches).
2. No-change redeploy beside a cold deploy (fresh pods).
3. A 5,000-file project with one file changed: redeploy time and bytes sent, beside a 10-file
   project.

    python bench/redeploy.py [--reps 7]
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODULE = "hp_bench_mod"


def write_project(root: Path, files: int, version: int) -> None:
    """A project with ``files`` files; the deployed module imports a few of its siblings."""
    pkg = root / "pkg"
    pkg.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'bench'\n")
    (pkg / "__init__.py").write_text("")
    for i in range(files - 3):
        f = pkg / f"m{i:05d}.py"
        if not f.exists():
            f.write_text(f"VALUE = {i}\n" + "# padding\n" * 20)
    (root / f"{MODULE}.py").write_text(
        "import json, dataclasses, pathlib\n"
        "from pkg import m00000, m00001\n"
        f"VERSION = {version}\n"
        "def version():\n"
        "    return VERSION\n"
    )


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def import_subprocess(root: Path, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {MODULE}"], cwd=root, check=True)
        out.append(time.perf_counter() - t)
    return out


def code_change_redeploys(kt, root: Path, name: str, reps: int, replicas: int = 2):
    """Time code-change redeploys through the first answer from new code; bytes sent too."""
    from hotpod.deploy import deploy

    sys.path.insert(0, str(root))
    mod = importlib.import_module(MODULE)
    compute = kt.Compute(cpus="0.5", replicas=replicas)
    handle = kt.fn(mod.version, name=name).to(compute)
    times, sent = [], []
    for i in range(reps):
        version = 1000 + i
        write_project(root, 0, version)  # rewrites only the module
        t = time.perf_counter()
        dep = deploy(mod.version, "fn", name, compute)
        result = handle()
        times.append(time.perf_counter() - t)
        expected = [version] * replicas if replicas > 1 else version
        assert result == expected, (result, expected)
        assert dep.sync is not None
        sent.append(dep.sync.uploaded_bytes + getattr(dep.sync, "manifest_bytes", 0))
    sys.path.remove(str(root))
    sys.modules.pop(MODULE, None)
    sys.modules.pop("pkg", None)
    return times, sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    opts = parser.parse_args()
    reps = opts.reps
    with tempfile.TemporaryDirectory(prefix="hotpod-bench-") as tmpdir:
        tmp = Path(tmpdir)
        os.environ["HOTPOD_HOME"] = str(tmp / "home")
        import hotpod as kt
        from hotpod.backends import get_backend

        try:
            small, large = tmp / "small", tmp / "large"
            write_project(small, 10, 0)
            write_project(large, 5000, 0)

            # 1. code change vs import subprocess
            floor = import_subprocess(small, reps)
            change, sent_small = code_change_redeploys(kt, small, "bench-small", reps)

            # 2. no change vs cold
            def echo(x):
                return x

            cold, warm = [], []
            for i in range(reps):
                t = time.perf_counter()
                h = kt.fn(echo, name=f"bench-cold-{i}").to(kt.Compute(cpus="0.5"))
                cold.append(time.perf_counter() - t)
                t = time.perf_counter()
                kt.fn(echo, name=f"bench-cold-{i}").to(kt.Compute(cpus="0.5"))
                warm.append(time.perf_counter() - t)
                h.teardown()

            # 3. 5,000 files, one changed
            big, sent_big = code_change_redeploys(kt, large, "bench-large", reps)
        finally:
            get_backend().teardown_all()
            get_backend().stop_controller()  # type: ignore[attr-defined]

    print(f"redeploy benchmarks, medians of {reps} repetitions (2 replicas where deployed)")
    r1 = statistics.median(change) / statistics.median(floor)
    print(
        f"  code-change redeploy → first new answer  {median_ms(change):8.1f} ms   "
        f"import subprocess {median_ms(floor):7.1f} ms   ratio {r1:.2f}x (target <= 1x, limit 2x)"
    )
    r2 = statistics.median(warm) / statistics.median(cold)
    print(
        f"  no-change redeploy                      {median_ms(warm):8.1f} ms   "
        f"cold deploy       {median_ms(cold):7.1f} ms   ratio {r2:.1%} (limit 5%)"
    )
    r3 = statistics.median(big) / statistics.median(change)
    print(
        f"  5,000-file project, 1 file changed      {median_ms(big):8.1f} ms   "
        f"10-file project   {median_ms(change):7.1f} ms   ratio {r3:.2f}x (limit 1.2x)"
    )
    print(
        f"  bytes sent, 1 file changed: 5,000 files {statistics.median(sent_big):8.0f} B    "
        f"10 files {statistics.median(sent_small):8.0f} B"
    )


if __name__ == "__main__":
    main()
