"""End to end on the local backend: real controller, real pod processes, real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import hotpod as kt
import remote_code as rc
from conftest import hotpod_processes

pytestmark = pytest.mark.slow

HALF = kt.Compute(cpus="0.5")


def test_seed_fn_on_three_replicas_returns_three_results(hotpod_home, capsys):
    remote_train = kt.fn(rc.train).to(kt.Compute(cpus="0.5", replicas=3))
    results = remote_train([1, 2, 3], epochs=10)
    assert [r["rank"] for r in results] == [0, 1, 2]
    assert results[0] == {"rank": 0, "loss": 0.6, "world": "3"}
    out = capsys.readouterr().out
    for rank in range(3):
        assert f"(train-{rank}) training on rank {rank} for 10 epochs" in out
    assert remote_train.pods == ["train-0", "train-1", "train-2"]


def test_seed_cls_keeps_state_and_survives_a_no_change_redeploy(hotpod_home):
    compute = kt.Compute(cpus="0.5")
    remote_model = kt.cls(rc.Model).to(compute, init_args={"model_name": "bert-base"})
    assert remote_model.predict("Hello world") == "bert-base:HELLO WORLD"
    assert remote_model.predict("again") == "bert-base:AGAIN"
    t0 = time.perf_counter()
    again = kt.cls(rc.Model).to(compute, init_args={"model_name": "bert-base"})
    assert time.perf_counter() - t0 < 2.0
    assert again.count() == 2  # same instance: nothing was reloaded
    rebuilt = kt.cls(rc.Model).to(compute, init_args={"model_name": "gpt"})
    assert rebuilt.count() == 0
    assert rebuilt.predict("x") == "gpt:X"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        rebuilt.nope()


def test_json_pickle_and_async(hotpod_home):
    remote = kt.fn(rc.echo).to(HALF)
    assert remote(1, "a", k=[1, 2]) == ((1, "a"), {"k": [1, 2]})  # a tuple comes back a tuple
    args, kwargs = remote((1, 2), when={1: "x"})  # tuples/int keys: pickle, unchanged
    assert args == ((1, 2),) and kwargs == {"when": {1: "x"}}
    with pytest.raises(TypeError, match="cannot be sent as JSON"):
        remote.with_options(serialization="json")((1, 2))
    assert kt.fn(rc.async_add).to(HALF)(2, 3) == 5


def test_remote_exceptions_keep_their_type_and_traceback(hotpod_home):
    remote = kt.fn(rc.fail).to(HALF)
    with pytest.raises(ValueError, match="bad value on the pod") as info:
        remote("value")
    assert "remote_code.py" in str(info.value.__cause__)
    with pytest.raises(rc.CustomError, match="custom failure"):
        remote("custom")
    with pytest.raises(kt.RemoteError, match="local failure") as info:
        remote("local")
    assert "Local" in info.value.type_name and info.value.pod == "fail-0"


def test_broadcast_partial_failure_names_pods_and_keeps_results(hotpod_home):
    remote = kt.fn(rc.fail_on_rank).to(kt.Compute(cpus="0.5", replicas=3))
    with pytest.raises(kt.BroadcastError, match="fail-on-rank-1") as info:
        remote(1)
    err = info.value
    assert err.results == [0, None, 2]
    assert isinstance(err.errors[1], RuntimeError)
    assert remote(7) == [0, 1, 2]


def test_timeout_raises_promptly(hotpod_home):
    remote = kt.fn(rc.sleep).to(HALF).with_options(timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(kt.CallTimeoutError, match=r"within 0\.5 s"):
        remote(5)
    assert time.monotonic() - t0 < 2
    assert remote(0.01) == 0.01


def test_kill_9_during_a_call_fails_fast_and_the_pod_comes_back(hotpod_home):
    remote = kt.fn(rc.sleep, name="victim").to(HALF)
    from hotpod.services import describe

    pid = describe("victim")["pods"][0]["pid"]
    import threading

    threading.Timer(0.5, os.killpg, (pid, signal.SIGKILL)).start()
    t0 = time.monotonic()
    with pytest.raises(kt.PodUnreachableError, match="victim-0") as exc:
        remote(30)
    assert time.monotonic() - t0 < 5
    assert exc.value.pod == "victim-0"
    assert isinstance(exc.value, kt.PodTerminatedError)  # it went away mid-call
    assert remote(0.01) == 0.01  # restarted by the controller, launch resumed
    pods = describe("victim")["pods"]
    assert pods[0]["restarts"] == 1 and pods[0]["pid"] != pid


def test_env_secrets_and_shared_volume(hotpod_home, monkeypatch):
    monkeypatch.setenv("HP_TEST_TOKEN", "s3cret")
    compute = kt.Compute(
        cpus="0.5",
        replicas=2,
        env_vars={"MODE": "dev"},
        secrets=[kt.Secret(name="hp-test-token", env_var="HP_TEST_TOKEN")],
        volumes=[kt.Volume(name="shared-data", mount_path="/data", size="1Gi")],
        image=kt.Image("python:3.11").set_env_vars({"FROM_IMAGE": "yes"}),
    )
    remote = kt.fn(rc.env).to(compute)
    assert (
        remote("MODE", "HP_TEST_TOKEN", "FROM_IMAGE")
        == [{"MODE": "dev", "HP_TEST_TOKEN": "s3cret", "FROM_IMAGE": "yes"}] * 2
    )
    writer = kt.fn(rc.volume_write).to(kt.Compute(cpus="0.5", volumes=compute.volumes))
    path = writer("/data", "hello.txt", "from pod 0")
    assert path.endswith("/data")
    reader = kt.fn(rc.volume_read).to(compute)
    assert reader("/data", "hello.txt") == ["from pod 0", "from pod 0"]


def test_gpu_request_fails_fast(hotpod_home, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    t0 = time.monotonic()
    with pytest.raises(
        kt.ResourceUnavailableError, match=r"1 GPU\(s\) per pod, but this machine has 0"
    ):
        kt.fn(rc.echo, name="gpu-echo").to(kt.Compute(gpus="1"))
    assert time.monotonic() - t0 < 5


def test_by_value_function_and_replica_scaling(hotpod_home):
    offset = 40

    def closure(x):
        return x + offset

    remote = kt.fn(closure, name="closure").to(HALF)
    assert remote(2) == 42
    remote = kt.fn(lambda x: x * 2, name="lam").to(kt.Compute(cpus="0.5", replicas=2))
    assert remote(4) == [8, 8]
    pids = kt.fn(rc.pid, name="lam").to(kt.Compute(cpus="0.5", replicas=2))()
    scaled = kt.fn(rc.pid, name="lam").to(kt.Compute(cpus="0.5", replicas=3))()
    assert scaled[:2] == pids  # scaling up kept the pods that stay
    assert len(set(scaled)) == 3


def test_code_change_redeploys_and_pods_keep_their_snapshot(hotpod_home, tmp_path, monkeypatch):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\nname='proj'\n")
    mod = project / "hp_snapshot_mod.py"
    mod.write_text("def version():\n    return 1\n")
    monkeypatch.syspath_prepend(str(project))
    import hp_snapshot_mod

    remote = kt.fn(hp_snapshot_mod.version).to(HALF)
    assert remote() == 1
    mod.write_text("def version():\n    return 2\n")
    assert remote() == 1  # edits after .to() do not reach the pod
    import importlib

    importlib.reload(hp_snapshot_mod)
    remote = kt.fn(hp_snapshot_mod.version).to(HALF)
    assert remote() == 2


def test_script_without_main_guard_deploys(hotpod_home, tmp_path):
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            """
            import hotpod as kt

            def double(x):
                return 2 * x

            remote = kt.fn(double, name="script-double").to(kt.Compute(cpus="0.5"))
            print("RESULT", remote(21))
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    )
    assert "RESULT 42" in out.stdout


def test_teardown_all_leaves_no_process(tmp_path):
    env = {**os.environ, "HOTPOD_HOME": str(tmp_path / "home")}
    code = textwrap.dedent(
        """
        import hotpod as kt
        import remote_code as rc
        kt.fn(rc.echo).to(kt.Compute(cpus="0.5", replicas=2))
        kt.cls(rc.Model).to(kt.Compute(cpus="0.5"), init_args={"model_name": "m"})
        """
    )
    subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=Path(__file__).parent,
        check=True,
        timeout=60,
        capture_output=True,
    )
    home = tmp_path / "home"
    assert len(hotpod_processes(home)) == 1 + 3 * 2  # controller + (supervisor, worker) per pod
    out = subprocess.run(
        [sys.executable, "-m", "hotpod.cli", "teardown", "--all"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "deleted echo" in out.stdout and "deleted model" in out.stdout
    deadline = time.monotonic() + 5
    while hotpod_processes(home) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hotpod_processes(home) == []
    listed = subprocess.run(
        [sys.executable, "-m", "hotpod.cli", "list"], env=env, capture_output=True, text=True
    )
    assert "No services" in listed.stdout
    assert hotpod_processes(home) == []  # listing nothing started no controller


def test_a_dead_controller_is_replaced_and_adopts_live_pods(tmp_path):
    env = {**os.environ, "HOTPOD_HOME": str(tmp_path / "home")}
    home = tmp_path / "home"

    def cli(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "hotpod.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout

    code = "import hotpod as kt, remote_code as rc; kt.fn(rc.pid).to(kt.Compute(cpus='0.5'))"
    subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=Path(__file__).parent, check=True, timeout=60
    )
    (controller,) = [p for p in hotpod_processes(home) if "controller" in " ".join(p.cmdline())]
    pod_pids = {p.pid for p in hotpod_processes(home)} - {controller.pid}
    controller.kill()
    controller.wait(5)
    assert "pid" in cli("list")  # a new controller answers, with the service
    assert pod_pids <= {p.pid for p in hotpod_processes(home)}  # the same pods, adopted
    assert "deleted pid" in cli("teardown", "--all")
    deadline = time.monotonic() + 5
    while hotpod_processes(home) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hotpod_processes(home) == []


def test_logs_stream_live_and_include_logging(hotpod_home, monkeypatch):
    import io

    seen: list[tuple[float, str]] = []

    class Recorder(io.StringIO):
        def write(self, s: str) -> int:
            seen.append((time.monotonic(), s))
            return len(s)

    remote = kt.fn(rc.log_then_sleep).to(HALF)
    monkeypatch.setattr(sys, "stdout", Recorder())
    assert remote(1.0) == "done"
    returned = time.monotonic()
    text = "".join(s for _, s in seen)
    assert "(log-then-sleep-0) first line" in text
    assert "(log-then-sleep-0) a warning from logging" in text
    first = next(t for t, s in seen if "first line" in s)
    assert returned - first > 0.8  # printed while the call was still running


def test_sync_calls_run_concurrently_on_one_pod(hotpod_home):
    import concurrent.futures

    remote = kt.fn(rc.blocking).to(HALF)
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        starts = list(pool.map(remote, [1.0] * 4))
    assert time.monotonic() - t0 < 2.5
    assert max(starts) - min(starts) < 0.5


def test_failed_deploy_names_the_pod_and_keeps_the_previous_version(hotpod_home):
    ok = kt.cls(rc.BadInit, name="bad-init").to(HALF, init_args={"fail": False})
    assert ok.ok() == "ok"
    with pytest.raises(kt.DeployError, match="bad-init-0") as info:
        kt.cls(rc.BadInit, name="bad-init").to(HALF, init_args={"fail": True})
    assert "init refused" in str(info.value) and "running __init__ failed" in str(info.value)
    assert ok.ok() == "ok"  # the previous instance still answers


def test_remote_sys_exit_does_not_end_the_caller(hotpod_home):
    remote = kt.fn(rc.exit_now).to(HALF)
    with pytest.raises(kt.RemoteError, match="SystemExit"):
        remote(3)
    assert remote.pods == ["exit-now-0"]


def test_lookup_list_and_teardown_are_public(hotpod_home):
    kt.fn(rc.echo, name="lookup-me").to(HALF)
    handle = kt.lookup("lookup-me")
    assert handle(1) == ((1,), {})
    assert "lookup-me" in [s.name for s in kt.list_services()]
    assert kt.teardown("lookup-me") == ["lookup-me"]
    with pytest.raises(kt.ServiceNotFoundError):
        kt.lookup("lookup-me")


def test_template_change_replaces_pods_and_says_so(hotpod_home, capsys):
    first = kt.fn(rc.pid, name="rollout").to(kt.Compute(cpus="0.5", env_vars={"V": "1"}))()
    capsys.readouterr()
    second = kt.fn(rc.pid, name="rollout").to(kt.Compute(cpus="0.5", env_vars={"V": "2"}))()
    assert "pods replaced" in capsys.readouterr().err
    assert first != second


def test_camel_case_class_names_become_dns_labels():
    from hotpod.deploy import service_name

    assert service_name("TrainModel") == "train-model"
    assert service_name("train_model") == "train-model"
    assert service_name("HTTPServer") == "httpserver"
    assert service_name("_private") == "private"


def test_image_env_change_reimports_and_scaling_updates_world_size(hotpod_home):
    def compute(mode: str, replicas: int) -> kt.Compute:
        image = kt.Image("python:3.11").set_env_vars({"MODE_AT_IMPORT": mode})
        return kt.Compute(cpus="0.5", replicas=replicas, image=image)

    assert kt.fn(rc.mode_at_import).to(compute("a", 2))() == [("a", "2")] * 2
    assert kt.fn(rc.mode_at_import).to(compute("b", 2))() == [("b", "2")] * 2
    assert kt.fn(rc.mode_at_import).to(compute("b", 3))() == [("b", "3")] * 3


def test_class_defined_interactively_travels_by_value(hotpod_home):
    class Tally:  # defined in a function: not importable by name, sent with cloudpickle
        def __init__(self, start):
            self.n = start

        def add(self, k):
            self.n += k
            return self.n

    remote = kt.cls(Tally).to(HALF, init_args=[10])
    assert remote.add(1) == 11 and remote.add(2) == 13
