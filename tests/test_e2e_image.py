"""Image steps applied live on local pods: the ledger, failures, reloads, zero downtime."""

from __future__ import annotations

import importlib
import sys
import threading
import time
from pathlib import Path

import pytest

import hotpod as kt
import image_code as ic
from wheels import make_wheel

pytestmark = pytest.mark.slow

NO_INDEX = {"PIP_NO_INDEX": "1"}  # pip never reaches a package index in these tests


def pod_log(home: Path, service: str, pod: str | None = None) -> str:
    return (home / "logs" / service / f"{pod or service + '-0'}.log").read_text()


def test_live_update_runs_only_the_new_pip_step(hotpod_home, tmp_path):
    wa = make_wheel(tmp_path / "w", "hp_pkg_alpha", "1.0", "VERSION = 'alpha 1.0'\n")
    wb = make_wheel(tmp_path / "w", "hp_pkg_beta", "1.0", "VERSION = 'beta 1.0'\n")
    # Initial deployment
    image = kt.Image("python:3.11").pip_install([str(wa)])
    compute = kt.Compute(cpus="0.5", replicas=2, env_vars=NO_INDEX, image=image)
    remote_fn = kt.fn(ic.versions, name="live-update").to(compute)
    assert remote_fn("hp_pkg_alpha") == [{"hp_pkg_alpha": "alpha 1.0"}] * 2
    # Later, add a package - only this step runs on redeploy
    image = image.pip_install([str(wb)])
    marker = len(pod_log(hotpod_home, "live-update"))
    compute = kt.Compute(cpus="0.5", replicas=2, env_vars=NO_INDEX, image=image)
    remote_fn = kt.fn(ic.versions, name="live-update").to(compute)
    assert (
        remote_fn("hp_pkg_alpha", "hp_pkg_beta")
        == [{"hp_pkg_alpha": "alpha 1.0", "hp_pkg_beta": "beta 1.0"}] * 2
    )
    setup_log = pod_log(hotpod_home, "live-update")[marker:]
    assert "[2/2] pip_install" in setup_log and "hp_pkg_beta" in setup_log
    assert "[1/2]" not in setup_log  # the first step is in the ledger: it did not run again


def test_failing_pip_step_names_the_step_and_keeps_the_previous_version(hotpod_home):
    compute = kt.Compute(cpus="0.5", env_vars=NO_INDEX)
    good = kt.fn(ic.env, name="pip-fails").to(compute)
    assert good("PIP_NO_INDEX") == "1"
    bad = compute.replace(image=kt.Image("python:3.11").pip_install(["no-such-package-xyz"]))
    with pytest.raises(kt.DeployError) as info:
        kt.fn(ic.env, name="pip-fails").to(bad)
    message = str(info.value)
    assert "pip_install no-such-package-xyz" in message and "pip-fails-0" in message
    assert "No matching distribution" in message or "no-such-package-xyz" in message
    assert good("PIP_NO_INDEX") == "1"  # the previous version still answers
    ledger = hotpod_home / "pods" / "pip-fails" / "pip-fails-0" / ".hotpod" / "ledger.json"
    assert "no-such-package-xyz" not in (ledger.read_text() if ledger.exists() else "")


def test_run_bash_copy_workdir_sync_package_and_env(hotpod_home, tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "app.yaml").write_text("lr: 0.1\n")
    pkg = tmp_path / "hp_synced_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("VERSION = 'synced 1'\n")
    image = (
        kt.Image("python:3.11")
        .set_env_vars({"STAGE": "test"})
        .copy(str(configs), "/app/configs")
        .workdir("/app")
        .run_bash("echo $STAGE > stage.txt")
        .sync_package(str(pkg))
    )
    remote = kt.fn(ic.read, name="steps").to(kt.Compute(cpus="0.5", image=image))
    assert remote("/app/configs/app.yaml") == "lr: 0.1\n"
    assert remote("/app/stage.txt") == "test\n"
    assert (
        kt.fn(ic.cwd, name="steps-cwd").to(kt.Compute(cpus="0.5", image=image))().endswith("/app")
    )  # the image's WORKDIR is the code's working directory
    assert kt.fn(ic.versions, name="steps").to(kt.Compute(cpus="0.5", image=image))(
        "hp_synced_pkg"
    ) == {"hp_synced_pkg": "synced 1"}
    # the copied content is part of the step's identity: changing it reruns the step
    (configs / "app.yaml").write_text("lr: 0.2\n")
    remote = kt.fn(ic.read, name="steps").to(kt.Compute(cpus="0.5", image=image))
    assert remote("/app/configs/app.yaml") == "lr: 0.2\n"


def test_upgrading_an_imported_package_restarts_the_worker(hotpod_home, tmp_path):
    w1 = make_wheel(tmp_path / "w1", "hp_pkg_gamma", "1.0", "VERSION = '1.0'\n")
    w2 = make_wheel(tmp_path / "w2", "hp_pkg_gamma", "2.0", "VERSION = '2.0'\n")
    compute = kt.Compute(
        cpus="0.5",
        replicas=2,
        env_vars=NO_INDEX,
        image=kt.Image("python:3.11").pip_install([str(w1)]),
    )
    holder = kt.cls(ic.Holder, name="upgrade").to(compute, init_args=["hp_pkg_gamma"])
    before = holder.version()
    assert [v for v, _ in before] == ["1.0", "1.0"]
    compute = compute.replace(image=compute.image.pip_install([str(w2)]))
    holder = kt.cls(ic.Holder, name="upgrade").to(compute, init_args=["hp_pkg_gamma"])
    after = holder.version()
    assert [v for v, _ in after] == ["2.0", "2.0"]  # the pod that found it installed too
    assert all(a[1] != b[1] for a, b in zip(after, before, strict=True))  # new workers


def _project(tmp_path: Path, version: int) -> Path:
    root = tmp_path / "zdproj"
    root.mkdir(exist_ok=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'zd'\n")
    (root / "hp_zero_down.py").write_text(f"def version():\n    return {version}\n")
    return root


def test_redeploys_under_load_fail_no_call(hotpod_home, tmp_path, monkeypatch):
    root = _project(tmp_path, 0)
    monkeypatch.syspath_prepend(str(root))
    import hp_zero_down

    compute = kt.Compute(cpus="0.5", replicas=2)
    handle = kt.fn(hp_zero_down.version, name="zero-down").to(compute)
    errors: list[BaseException] = []
    calls = 0
    stop = threading.Event()
    lock = threading.Lock()

    def hammer() -> None:
        nonlocal calls
        while not stop.is_set():
            try:
                handle()
                with lock:
                    calls += 1
            except BaseException as exc:  # every failure counts
                errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        for i in range(1, 11):
            version = i % 2
            _project(tmp_path, version)
            importlib.reload(hp_zero_down)
            kt.fn(hp_zero_down.version, name="zero-down").to(compute)
            assert handle() == [version, version]  # new code answers as soon as .to() returns
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert errors == [], errors[:3]
    assert calls > 100
    sys.modules.pop("hp_zero_down", None)


def test_pod_template_change_replaces_pods_one_at_a_time(hotpod_home):
    first = kt.fn(ic.worker_pid, name="rolling").to(kt.Compute(cpus="0.5", replicas=2))
    before = first()
    seen: list[list[int]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                seen.append(first())
            except kt.HotpodError as exc:
                failures.append(exc)
            time.sleep(0.01)

    t = threading.Thread(target=watch)
    t.start()
    try:
        second = kt.fn(ic.worker_pid, name="rolling").to(
            kt.Compute(cpus="0.5", replicas=2, env_vars={"ROLL": "1"})
        )
    finally:
        stop.set()
        t.join(10)
    after = second()
    assert set(after).isdisjoint(before)  # every pod was replaced
    mixed = [s for s in seen if s[0] != before[0] and s[1] == before[1]]
    assert mixed, "pod 0 was replaced while pod 1 still served: one at a time"
    assert failures == [], [str(f.errors) for f in failures]  # rollout calls waited


def test_calls_keep_succeeding_while_the_worker_is_replaced(hotpod_home, tmp_path):
    w1 = make_wheel(tmp_path / "w1", "hp_pkg_delta", "1.0", "VERSION = '1.0'\n")
    w2 = make_wheel(tmp_path / "w2", "hp_pkg_delta", "2.0", "VERSION = '2.0'\n")
    compute = kt.Compute(
        cpus="0.5", env_vars=NO_INDEX, image=kt.Image("python:3.11").pip_install([str(w1)])
    )
    holder = kt.cls(ic.Holder, name="swap").to(compute, init_args=["hp_pkg_delta"])
    versions: list[str] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                versions.append(holder.version()[0])
            except BaseException as exc:
                failures.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        upgraded = compute.replace(image=compute.image.pip_install([str(w2)]))
        kt.cls(ic.Holder, name="swap").to(upgraded, init_args=["hp_pkg_delta"])
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == [], failures[:3]
    assert versions[0] == "1.0" and versions[-1] == "2.0"


def test_a_successor_that_cannot_load_fails_the_deploy_promptly(hotpod_home, tmp_path):
    w1 = make_wheel(tmp_path / "w1", "hp_pkg_eps", "1.0", "VERSION = '1.0'\n")
    w2 = make_wheel(tmp_path / "w2", "hp_pkg_eps", "2.0", "raise ImportError('2.0 is broken')\n")
    compute = kt.Compute(
        cpus="0.5", env_vars=NO_INDEX, image=kt.Image("python:3.11").pip_install([str(w1)])
    )
    holder = kt.cls(ic.Holder, name="bad-successor").to(compute, init_args=["hp_pkg_eps"])
    assert holder.version()[0] == "1.0"
    t0 = time.monotonic()
    with pytest.raises(kt.DeployError, match=r"2\.0 is broken"):
        broken = compute.replace(image=compute.image.pip_install([str(w2)]))
        kt.cls(ic.Holder, name="bad-successor").to(broken, init_args=["hp_pkg_eps"])
    assert time.monotonic() - t0 < 30  # not the 300 s launch timeout
    assert holder.version()[0] == "1.0"  # the old worker goes on serving
