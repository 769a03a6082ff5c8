"""The CLI, in process, against a live local backend."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import hotpod as kt
import remote_code as rc
from hotpod.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def services(hotpod_home):
    kt.fn(rc.train, name="cli-train").to(kt.Compute(cpus="0.5", replicas=2))
    kt.cls(rc.Model, name="cli-model").to(kt.Compute(cpus="0.5"), init_args=["m"])
    yield
    kt_teardown = CliRunner().invoke(main, ["teardown", "cli-train"])
    assert kt_teardown.exit_code == 0


def run(*args: str, code: int = 0, stdout: bool = False):
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, result.output
    return result.stdout if stdout else result.output


def test_list_and_describe(services):
    out = run("list")
    assert "cli-train" in out and "2/2" in out and "cli-model" in out
    out = run("describe", "cli-train")
    assert "cli-train-0" in out and "cli-train-1" in out and "ready" in out
    assert "remote_code:train" in out
    d = json.loads(run("describe", "cli-model", "--json"))
    assert d["kind"] == "cls" and d["pods"][0]["ready"] is True


def test_call_function_and_method(services):
    out = run("call", "cli-train", "--args", "[[2, 4]]", "--kwargs", '{"epochs": 1}', stdout=True)
    assert json.loads(out)[1]["rank"] == 1  # the pods' logs went to stderr
    assert json.loads(run("call", "cli-model", "predict", "--args", '["hi"]')) == "m:HI"


def test_logs_show_call_output(services):
    run("call", "cli-train", "--args", "[[1]]", "--kwargs", '{"epochs": 3}')
    out = run("logs", "cli-train", "--pod", "cli-train-1")
    assert "rank=1 pod=cli-train-1 | training on rank 1 for 3 epochs" in out
    assert "pod=cli-train-0" not in out


def test_errors_are_clear(services):
    assert "no service named 'nope'" in run("call", "nope", code=1)
    assert "not valid JSON" in run("call", "cli-train", "--args", "[1", code=2)
    assert "name the method" in run("call", "cli-model", code=2)
    assert "give a service NAME or --all" in run("teardown", code=2)
    assert "no service named 'ghost'" in run("teardown", "ghost", code=1)
    out = run("call", "cli-model", "nope", code=1)
    assert "no attribute 'nope'" in out


def test_token_prints_what_the_pods_accept(services):
    import httpx

    from hotpod.backends import get_backend

    token = run("token", "cli-train", stdout=True).strip()
    pod = get_backend().get("cli-train").pods[0]
    r = httpx.get(f"{pod.url}/metrics", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and "hotpod_calls_total" in r.text
    assert "no service named 'nope'" in run("token", "nope", code=1)


def test_python_m_hotpod_cli_has_every_command() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "hotpod.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert {"dockerfile", "manifest", "list"} <= set(main.commands)
    for command in main.commands:  # (they were registered after the __main__ guard)
        assert f"  {command} " in out, out


def test_teardown_volumes_on_the_local_backend_says_it_makes_no_claims(hotpod_home) -> None:
    result = CliRunner().invoke(main, ["teardown", "svc", "--volumes"])
    assert result.exit_code == 1
    assert "the local backend makes no volume claims" in result.output
    assert "'hotpod teardown svc'" in result.output
