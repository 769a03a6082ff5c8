"""End to end: check, describe, logs that outlive teardown, metrics, top and shell."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

import hotpod as kt
import remote_code as rc
from hotpod.backends import get_backend
from hotpod.cli import main

pytestmark = pytest.mark.slow

HALF = kt.Compute(cpus="0.5")


def cli(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, result.output
    return result.output


def test_check_names_the_failing_setup_step_and_shows_its_output(hotpod_home):
    image = kt.Image("python:3.11").run_bash("echo boom-output; exit 3")
    with pytest.raises(kt.DeployError):
        kt.fn(rc.echo, name="check-boom").to(HALF.replace(image=image))
    out = cli("check", "check-boom", code=1)
    assert "NOT HEALTHY" in out
    assert "setup step 'run_bash echo boom-output; exit 3'" in out
    assert "boom-output" in out.split("Output:")[1]
    assert "Fix: fix that step of the Image" in out
    kt.fn(rc.echo, name="check-boom").to(HALF)  # the fix: the service becomes healthy
    assert "healthy (1/1 pods ready)" in cli("check", "check-boom")


def test_logs_outlive_teardown_and_filter_one_call(hotpod_home):
    remote = kt.fn(rc.train, name="logs-kept").to(kt.Compute(cpus="0.5", replicas=2))
    remote([1], epochs=7)
    remote([1], epochs=8)
    assert kt.teardown("logs-kept") == ["logs-kept"]
    out = cli("logs", "logs-kept")
    for rank in (0, 1):
        assert f"rank={rank} pod=logs-kept-{rank} | training on rank {rank} for 7 epochs" in out
        assert f"training on rank {rank} for 8 epochs" in out
    assert "service logs-kept deleted; the log is kept until purged" in out
    call = next(line for line in out.splitlines() if "for 8 epochs" in line)
    request = call.split(" r=")[1].split()[0]
    only = cli("logs", "logs-kept", "--request", request).splitlines()
    assert call in only  # (a broadcast's pods may share one request id, or each have one)
    assert all(f"r={request}" in line and "for 8 epochs" in line for line in only)
    assert cli("logs", "logs-kept", "--since", "1d", "--tail", "1", "--pod", "logs-kept-0")
    assert "its logs are kept" in cli("describe", "logs-kept", code=1)
    assert "deleted the logs of logs-kept" in cli("logs", "logs-kept", "--purge")
    assert "no logs for service 'logs-kept'" in cli("logs", "logs-kept", code=1)


def test_metrics_parse_and_count_the_calls(hotpod_home):
    remote = kt.fn(rc.fail_on_rank, name="metered").to(HALF)
    for _ in range(5):
        assert remote(9) == 0
    for _ in range(2):
        with pytest.raises(RuntimeError):
            remote(0)
    info = get_backend().get("metered")
    url = f"{info.pods[0].url}/metrics"
    assert httpx.get(url).status_code == 401
    text = httpx.get(url, headers={"Authorization": f"Bearer {info.token}"}).text
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    call = (("method", "__call__"),)
    assert values[("hotpod_calls_total", (*call, ("outcome", "ok")))] == 5
    assert values[("hotpod_calls_total", (("method", "__call__"), ("outcome", "error")))] == 2
    assert values[("hotpod_call_errors_total", (("exception", "RuntimeError"), *call))] == 2
    assert values[("hotpod_call_duration_seconds_count", call)] == 7
    assert values[("hotpod_calls_in_flight", ())] == 0
    assert values[("process_resident_memory_bytes", ())] > 0


def test_describe_shows_steps_and_how_to_call_and_top_shows_use(hotpod_home):
    image = kt.Image("python:3.11").set_env_vars({"STAGE": "test"}).run_bash("true")
    kt.cls(rc.Model, name="described").to(HALF.replace(image=image), init_args=["m"])
    out = cli("describe", "described")
    assert "Replicas:  1 (1 ready)" in out
    assert "1. set_env_vars STAGE  (applied" in out and "2. run_bash true  (applied" in out
    assert "kt.lookup('described').METHOD(...)" in out
    assert "hotpod call described METHOD" in out
    out = cli("top", "described", "--interval", "0.2")
    assert "described-0" in out and "CPU%" in out and "Mi" in out


def test_shell_runs_in_the_pod_environment(hotpod_home):
    compute = kt.Compute(cpus="0.5", replicas=2, env_vars={"SHELL_TEST": "yes"})
    kt.fn(rc.echo, name="shelled").to(compute)
    script = 'pwd; echo "$SHELL_TEST $HOTPOD_POD_NAME ${HOTPOD_TOKEN:-no-token}"; exit 4'
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hotpod.cli",
            "shell",
            "shelled",
            "--pod",
            "shelled-1",
            "-c",
            script,
        ],
        env={**os.environ, "HOTPOD_HOME": str(hotpod_home)},
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 4, done.stderr
    cwd, values = done.stdout.splitlines()
    assert cwd.endswith("shelled/shelled-1/.hotpod/code/current")
    assert values == "yes shelled-1 no-token"
