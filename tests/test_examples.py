"""The scripts in examples/ run as a user runs them: a subprocess each, with a HOTPOD_HOME of its
own, exit code 0, and the output they promise.

torch comes from ``.ci/run`` (``pip install torch==2.13.0``): without it the torch example's
test fails when ``CI`` is set, and is skipped otherwise (as in test_distributed.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import hotpod_processes
from frameworks import need

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_example(tmp_path: Path) -> Iterator[Run]:
    """Runs examples/NAME in a fresh HOTPOD_HOME; stops everything it left there afterwards."""
    env = {**os.environ, "HOTPOD_HOME": str(tmp_path / "home"), "HOTPOD_BACKEND": "local"}
    cli = [sys.executable, "-c", "from hotpod.cli import main; main()"]

    def run(name: str, *, prelude: str = "") -> subprocess.CompletedProcess[str]:
        script = str(EXAMPLES / name)
        command = [sys.executable, script]
        if prelude:  # run the script after some setup code, as `python script` would
            code = f"{prelude}\nimport runpy; runpy.run_path({script!r}, run_name='__main__')"
            command = [sys.executable, "-c", code]
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        print(done.stdout, done.stderr)  # shown when the test fails
        return done

    yield run
    subprocess.run([*cli, "teardown", "--all"], env=env, capture_output=True, timeout=60)
    for proc in hotpod_processes(tmp_path / "home"):
        proc.kill()


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torn down" in done.stdout  # each example tears down what it made
    return done.stdout


def test_autoscale_spreads_a_burst_then_scales_to_zero_and_back(run_example: Run) -> None:
    out = ok(run_example("autoscale.py"))
    assert "deployed: 1 pod(s)" in out
    assert "one call -> {'x': 3, 'square': 9" in out
    served = re.search(r"burst: served by (\d+) pod process", out)
    peak = re.search(r"the pool peaked at (\d+) pod", out)
    assert served and peak, out
    assert 1 < int(served.group(1)) <= 3 and 1 < int(peak.group(1)) <= 3
    assert re.search(r"after the burst: [23] pod\(s\) .*one call -> 49", out)
    assert re.search(r"^idle: 0 pod\(s\) after", out, re.M)  # scaled to zero
    assert re.search(r"^from zero: one call -> 64 in [\d.]+ s; now 1 pod\(s\)", out, re.M)


def test_distributed_torch_all_reduces_across_two_pods(run_example: Run) -> None:
    need("torch", "pip install torch==2.13.0")
    out = ok(run_example("distributed_torch.py"))
    assert "ranks: [0, 1] pods: ['all-reduce-0', 'all-reduce-1']" in out
    assert "rank 0/2: sent [1.0, 2.0, 3.0] -> all_reduce [3.0, 6.0, 9.0]" in out
    assert "rank 1/2: sent [2.0, 4.0, 6.0] -> all_reduce [3.0, 6.0, 9.0]" in out


def test_distributed_torch_without_torch_says_what_to_install(run_example: Run) -> None:
    done = run_example("distributed_torch.py", prelude="import sys; sys.modules['torch'] = None")
    assert done.returncode == 1
    assert "pip install torch==2.13.0" in done.stderr
    assert "ranks:" not in done.stdout  # it stopped before deploying anything


def test_fastapi_app_answers_through_its_handle_and_logs(run_example: Run) -> None:
    out = ok(run_example("fastapi_app.py"))
    assert "POST /items/7 -> 200 {'item_id': 7, 'created': 'gpu', 'qty': 2" in out
    assert "GET  /items/7 -> 200 {'item_id': 7, 'item': {'name': 'gpu', 'qty': 2}}" in out
    assert "POST /items/8 (no name) -> 422" in out
    logs = out.split("last log lines", 1)[1]
    assert "pod=fastapi-service-0 | fastapi_service: read item 7" in logs


def test_streaming_first_item_arrives_before_the_last_is_produced(run_example: Run) -> None:
    out = ok(run_example("streaming.py"))
    for mode in ("sync: ", "async:"):
        items = re.findall(rf"^{mode} item (\d+) = (\d+)", out, re.M)
        assert items == [(str(i), str(i * i)) for i in range(5)], out
        ahead = re.search(rf"^{mode} first item arrived ([\d.]+) s before the last", out, re.M)
        assert ahead and float(ahead.group(1)) >= 0.5  # 4 items x 0.2 s were still to come
