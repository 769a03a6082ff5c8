"""End to end on the Kubernetes backend: a fake API server, pods as local processes
(``tests/k8sfake``), and the backend's real code path: apply, watch, ship code, launch, call,
broadcast, redeploy, list/describe/logs, teardown, in both reach modes (pod IPs, API proxy)."""

from __future__ import annotations

import contextlib
import importlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import CliRunner

import hotpod as kt
from frameworks import need
from hotpod.backends import get_backend
from hotpod.config import reload_settings

pytestmark = pytest.mark.slow

SMALL = {"cpus": "0.1", "memory": "256Mi", "launch_timeout": 60}
APP_V1 = """
import os

def hello(x):
    print(f"hello {x} from {os.environ.get('HOTPOD_POD_NAME')}")
    return {"v": 1, "x": x, "pod": os.environ.get("HOTPOD_POD_NAME")}

def dist_env():
    keys = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "HOTPOD_PEERS", "HOTPOD_RANK")
    return {k: os.environ.get(k) for k in keys}

def whoami(x):
    return {"x": x, "host": os.environ.get("HOSTNAME"), "pod": os.environ.get("HOTPOD_POD_NAME")}

def where_hotpod():
    import hotpod

    return {"file": hotpod.__file__, "dir": os.environ.get("HOTPOD_RUNTIME_DIR")}

def ray_env():
    keys = ("RAY_ADDRESS", "HOTPOD_RAY_ROLE", "RANK", "WORLD_SIZE")
    return {k: os.environ.get(k) for k in keys}

def all_reduce(x):
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    t = torch.tensor([float(x)])
    dist.all_reduce(t)
    return {"sum": t.item(), "rank": dist.get_rank(), "world": dist.get_world_size()}

class Counter:
    def __init__(self, start):
        self.n = start

    def incr(self):
        self.n += 1
        return self.n
"""


@contextlib.contextmanager
def _on_kubernetes(monkeypatch: pytest.MonkeyPatch, reach: str | None) -> Iterator[None]:
    """The Kubernetes backend (reach ``direct``/``proxy``; None: the default) while the test
    runs; afterwards every service it made torn down and the settings restored."""
    monkeypatch.setenv("HOTPOD_BACKEND", "kubernetes")
    if reach is None:
        monkeypatch.delenv("HOTPOD_K8S_REACH", raising=False)
    else:
        monkeypatch.setenv("HOTPOD_K8S_REACH", reach)
    monkeypatch.delenv("HOTPOD_NAMESPACE", raising=False)
    reload_settings()
    try:
        yield
    finally:
        backend = get_backend()
        try:
            backend.teardown_all()
        finally:
            backend.close()  # type: ignore[attr-defined]
            monkeypatch.undo()
            reload_settings()


@pytest.fixture(params=["direct", "proxy"])
def cluster(
    request: pytest.FixtureRequest,
    fake_cluster: Any,
    hotpod_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Any]:
    with _on_kubernetes(monkeypatch, request.param):
        yield fake_cluster


@pytest.fixture
def k8s(fake_cluster: Any, hotpod_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The Kubernetes backend on the fake, reached as from outside (the API proxy)."""
    with _on_kubernetes(monkeypatch, None):
        yield fake_cluster


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, ModuleType]]:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "pyproject.toml").write_text("[project]\nname='proj'\n")
    name = f"k8s_app_{tmp_path.name.replace('-', '_')}"
    (root / f"{name}.py").write_text(APP_V1)
    monkeypatch.syspath_prepend(str(root))
    module = importlib.import_module(name)
    yield root / f"{name}.py", module
    sys.modules.pop(name, None)


def _gone(cluster: Any, service: str, timeout: float = 10.0) -> bool:
    """No pod of ``service`` left, and no container process (the test's only service)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = cluster.pods(cluster.namespace, {"hotpod.dev/service": service})
        if not pods and not cluster.processes():
            return True
        time.sleep(0.1)
    return False


def test_deploy_broadcast_redeploy_and_teardown(
    cluster: Any, project: tuple[Path, ModuleType]
) -> None:
    path, module = project
    remote = kt.fn(module.hello, name="hello").to(kt.Compute(replicas=2, **SMALL))
    results = remote(7)
    pods = remote.pods
    assert len(pods) == 2 and len(set(pods)) == 2
    assert [r["pod"] for r in results] == pods  # one result per pod, in rank order
    assert {r["v"] for r in results} == {1} and {r["x"] for r in results} == {7}

    path.write_text(APP_V1.replace('"v": 1', '"v": 2'))
    importlib.reload(module)
    again = kt.fn(module.hello, name="hello").to(kt.Compute(replicas=2, **SMALL))
    assert again.pods == pods  # the code changed, the pods stayed
    assert [r["v"] for r in again(8)] == [2, 2]

    assert kt.teardown("hello") == ["hello"]
    assert _gone(cluster, "hello")
    with pytest.raises(kt.ServiceNotFoundError):
        kt.lookup("hello")


def test_a_class_keeps_its_state(cluster: Any, project: tuple[Path, ModuleType]) -> None:
    _, module = project
    counter = kt.cls(module.Counter, name="counter").to(
        kt.Compute(replicas=1, **SMALL), init_args={"start": 10}
    )
    assert counter.incr() == 11
    assert counter.incr() == 12
    same = kt.cls(module.Counter, name="counter").to(
        kt.Compute(replicas=1, **SMALL), init_args={"start": 10}
    )
    assert same.incr() == 13  # an unchanged redeploy keeps the instance


def test_list_describe_and_logs_through_the_api(
    cluster: Any, project: tuple[Path, ModuleType]
) -> None:
    from hotpod.cli import main

    _, module = project
    remote = kt.fn(module.hello, name="greeter").to(kt.Compute(replicas=1, **SMALL))
    remote("logged")
    runner = CliRunner()
    deadline = time.monotonic() + 5
    while True:  # (Ready is the readiness probe's word: it may lag the first answer a little)
        listed = runner.invoke(main, ["list"])
        if "1/1" in listed.output or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert listed.exit_code == 0 and "greeter" in listed.output and "1/1" in listed.output
    described = runner.invoke(main, ["describe", "greeter"])
    assert described.exit_code == 0, described.output
    assert "Backend:   kubernetes" in described.output and remote.pods[0] in described.output
    assert "ready" in described.output
    deadline = time.monotonic() + 5
    while True:
        logs = runner.invoke(main, ["logs", "greeter", "--tail", "50"])
        if "hello logged from" in logs.output or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert logs.exit_code == 0 and "hello logged from" in logs.output
    assert runner.invoke(main, ["teardown", "greeter"]).exit_code == 0
    assert "greeter" not in runner.invoke(main, ["list"]).output


def test_a_gpu_pod_left_pending_fails_the_deploy_promptly(k8s: Any, project: Any) -> None:
    k8s.set_node(gpus=0)
    _, module = project
    t0 = time.monotonic()
    with pytest.raises(kt.DeployError) as caught:
        kt.fn(module.hello, name="gpu-job").to(kt.Compute(gpus=1, cpus="0.1", launch_timeout=16))
    message = str(caught.value)
    assert "gpu-job-" in message and "is Pending" in message
    assert "Insufficient nvidia.com/gpu" in message
    assert time.monotonic() - t0 < 12  # after the grace (16 s / 4), not at the timeout


def test_an_image_that_cannot_be_pulled_fails_the_deploy(k8s: Any, project: Any) -> None:
    k8s.missing_images.add("my-team/nope:1")
    _, module = project
    with pytest.raises(kt.DeployError, match=r"cannot pull its image 'my-team/nope:1'"):
        kt.fn(module.hello, name="no-image").to(
            kt.Compute(image=kt.Image("my-team/nope:1"), cpus="0.1", launch_timeout=30)
        )


def test_a_crash_loop_fails_the_deploy_with_the_last_log_lines(k8s: Any, project: Any) -> None:
    _, module = project
    broken = {"PYTHONHOME": "/nonexistent"}  # the container's python cannot even start
    with pytest.raises(kt.DeployError) as caught:
        kt.fn(module.hello, name="crashy").to(
            kt.Compute(cpus="0.1", launch_timeout=30, env_vars=broken)
        )
    message = str(caught.value)
    assert "crashy-" in message and "keeps crashing" in message
    assert "encodings" in message  # the last lines of its log


def test_a_missing_secret_fails_the_deploy(k8s: Any, project: Any) -> None:
    _, module = project
    secret = kt.Secret("not-in-the-cluster", values={"NOPE": "1"})
    with pytest.raises(kt.DeployError, match="CreateContainerConfigError"):
        kt.fn(module.hello, name="no-secret").to(
            kt.Compute(cpus="0.1", launch_timeout=30, secrets=[secret])
        )


# -- pods that come later, distributed pools -------------------------------------------------


def _until(check: Any, timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:  # (a pod on its way: ask again)
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what or check}: last {last!r}")


def _kube() -> Any:
    return get_backend().kube  # type: ignore[attr-defined]


def test_a_replaced_pod_and_a_scaled_up_pod_serve_the_current_code_without_a_client(
    k8s: Any, project: tuple[Path, ModuleType]
) -> None:
    path, module = project
    kt.fn(module.hello, name="later").to(kt.Compute(replicas=2, **SMALL))
    path.write_text(APP_V1.replace('"v": 1', '"v": 2'))
    importlib.reload(module)
    first = kt.fn(module.hello, name="later").to(kt.Compute(replicas=2, **SMALL)).pods
    kube = _kube()
    kube.delete(f"/api/v1/namespaces/default/pods/{first[0]}")

    def replaced() -> Any:
        service = kt.lookup("later")
        pods = service.pods
        if len(pods) != 2 or first[0] in pods:
            return None
        results = service(3)
        return results if all(r["v"] == 2 for r in results) else None

    results = _until(replaced, what="the replacement pod to serve v2")
    new = {r["pod"] for r in results} - set(first)
    assert len(new) == 1  # the replacement, with the code of the last .to(): no client sent it

    kube.request(
        "PATCH",
        "/apis/apps/v1/namespaces/default/deployments/later",
        body={"spec": {"replicas": 3}},
        content_type="application/merge-patch+json",
    )

    def scaled() -> Any:
        service = kt.lookup("later")
        if len(service.pods) != 3:
            return None
        results = service(4)
        return results if [r["v"] for r in results] == [2, 2, 2] else None

    assert len({r["pod"] for r in _until(scaled, what="the third pod to serve v2")}) == 3


def _free_port() -> int:
    from hotpod._ports import free_port  # (outside the ephemeral range: pods share this host)

    return free_port()


def test_a_distributed_pool_gives_each_pod_its_rank_and_the_peers(
    k8s: Any, project: tuple[Path, ModuleType]
) -> None:
    _, module = project
    pool = kt.Compute(**SMALL).distribute("spmd", workers=2)
    remote = kt.fn(module.dist_env, name="ranks").to(pool)
    results = remote()
    pods = k8s.pods(k8s.namespace, {"hotpod.dev/service": "ranks"})
    ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}
    peers = ",".join(f"{ips[name]}:32300" for name in remote.pods)
    assert [r["RANK"] for r in results] == ["0", "1"]
    assert [r["HOTPOD_RANK"] for r in results] == ["0", "1"]
    assert {r["WORLD_SIZE"] for r in results} == {"2"}
    assert {r["HOTPOD_PEERS"] for r in results} == {peers}  # rank order, as the backend sees it


def test_a_replaced_pod_of_a_distributed_pool_says_to_re_form_it_then_joins_at_the_next_to(
    k8s: Any, project: tuple[Path, ModuleType]
) -> None:
    _, module = project
    pool = kt.Compute(**SMALL).distribute("spmd", workers=2)
    first = kt.fn(module.dist_env, name="reform").to(pool).pods
    _kube().delete(f"/api/v1/namespaces/default/pods/{first[1]}")

    def refused() -> Any:
        service = kt.lookup("reform")
        if len(service.pods) != 2 or first[1] in service.pods:
            return None
        try:
            service()
        except kt.BroadcastError as exc:  # (the new pod answers, but has no rank in the pool)
            return str(exc) if "re-form the pool" in str(exc) else None
        return None

    message = _until(refused, what="the replacement pod to refuse the call")
    assert "call .to() again" in message and "no rank in it" in message
    remote = kt.fn(module.dist_env, name="reform").to(pool)
    assert first[1] not in remote.pods and first[0] in remote.pods
    assert [r["RANK"] for r in remote()] == ["0", "1"]


def test_a_pytorch_pool_forms_a_gloo_group_across_two_pods(
    k8s: Any, project: tuple[Path, ModuleType]
) -> None:
    need("torch", "pip install torch==2.13.0")
    _, module = project
    pool = kt.Compute(**SMALL).distribute("pytorch", workers=2, port=_free_port())
    remote = kt.fn(module.all_reduce, name="gloo").to(pool)
    results = remote(3)
    assert results == [{"sum": 6.0, "rank": 0, "world": 2}, {"sum": 6.0, "rank": 1, "world": 2}]


def test_a_ray_pool_is_a_raycluster_whose_head_takes_the_calls(
    k8s: Any, project: tuple[Path, ModuleType], tmp_path: Path
) -> None:
    _, module = project
    stub = tmp_path / "bin"  # 'ray start' in the pods' commands: a stub (Ray is the image's part)
    stub.mkdir()
    (stub / "ray").write_text('#!/bin/sh\necho "ray $*"\n')
    (stub / "ray").chmod(0o755)
    path = f"{stub}:{Path(sys.executable).parent}:/usr/bin:/bin"
    pool = kt.Compute(env_vars={"PATH": path}, **SMALL).distribute("ray", workers=2)
    remote = kt.fn(module.ray_env, name="rayp").to(pool)
    pods = k8s.pods(k8s.namespace, {"hotpod.dev/service": "rayp"})
    head = next(p for p in pods if p["metadata"]["labels"]["ray.io/node-type"] == "head")
    assert len(pods) == 2 and remote.pods[0] == head["metadata"]["name"]
    result = remote()  # once, on the head
    assert result == {
        "RAY_ADDRESS": f"{head['status']['podIP']}:6379",
        "HOTPOD_RAY_ROLE": "head",
        "RANK": "0",
        "WORLD_SIZE": "2",
    }
    cluster = _kube().get("/apis/ray.io/v1/namespaces/default/rayclusters/rayp")
    assert cluster["spec"]["workerGroupSpecs"][0]["replicas"] == 1


def test_a_redeploy_drops_what_the_compute_no_longer_sets(
    k8s: Any, project: tuple[Path, ModuleType]
) -> None:
    _, module = project
    before = kt.Compute(labels={"team": "a"}, annotations={"owner": "x"}, **SMALL)
    kt.fn(module.hello, name="shrink").to(before.distribute("spmd", workers=2))
    deployment = k8s.get("deployments", "shrink", group="apps")
    assert deployment["metadata"]["labels"]["team"] == "a"
    assert k8s.get("services", "shrink-headless") is not None
    kube = _kube()  # a label somebody else put on the Deployment: not hotpod's to remove
    kube.request(
        "PATCH",
        "/apis/apps/v1/namespaces/default/deployments/shrink",
        body={"metadata": {"labels": {"theirs": "kept"}}},
        content_type="application/merge-patch+json",
    )
    remote = kt.fn(module.hello, name="shrink").to(kt.Compute(replicas=2, **SMALL))
    assert [r["x"] for r in remote(1)] == [1, 1]
    deployment = k8s.get("deployments", "shrink", group="apps")
    labels = deployment["metadata"]["labels"]
    assert "team" not in labels and labels["theirs"] == "kept"
    assert "owner" not in deployment["metadata"].get("annotations", {})
    template = deployment["spec"]["template"]["metadata"]
    assert "team" not in template["labels"] and "owner" not in template.get("annotations", {})
    assert k8s.get("services", "shrink-headless") is None  # the pool is no longer distributed
    assert k8s.get("services", "shrink") is not None
    assert "hotpod.dev/last-applied" in deployment["metadata"]["annotations"]
    launch = k8s.get("configmaps", "shrink-hotpod-launch")  # (rewritten whole: no copy of it)
    assert "hotpod.dev/last-applied" not in (launch["metadata"].get("annotations") or {})


def _user_deployment(name: str, labels: dict[str, str], pod: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


def test_from_manifest_deploys_the_users_deployment_with_the_runtime_merged_in(
    k8s: Any, project: tuple[Path, ModuleType]
) -> None:
    _, module = project
    box = {
        "name": "main",
        "image": "team/app:1",
        "command": ["python", "serve.py"],
        "env": [{"name": "MODE", "value": "mine"}],
    }
    manifest = _user_deployment("workers", {"app": "workers"}, {"containers": [box]})
    compute = kt.Compute.from_manifest(manifest, cpus="0.1", memory="256Mi", launch_timeout=60)
    remote = kt.fn(module.hello, name="byo").to(compute)
    assert [r["v"] for r in remote(1)] == [1, 1] and len(set(remote.pods)) == 2
    applied = _kube().get("/apis/apps/v1/namespaces/default/deployments/workers")
    template = applied["spec"]["template"]
    main = template["spec"]["containers"][0]
    assert main["name"] == "main" and main["command"][-1] == "hotpod.runtime.supervisor"
    assert {"name": "MODE", "value": "mine"} in main["env"]
    assert '"serve.py"' in template["metadata"]["annotations"]["hotpod.dev/replaced-command"]
    assert kt.teardown("byo") == ["byo"]
    assert _gone(k8s, "byo")


def test_a_selector_adopts_pods_that_already_run_the_runtime(
    k8s: Any, project: tuple[Path, ModuleType]
) -> None:
    import base64

    _, module = project
    kube = _kube()
    with pytest.raises(kt.DeployError, match="no pod in namespace 'default' has these labels"):
        kt.fn(module.hello, name="adopt").to(kt.Compute(selector={"app": "mine"}))
    token = base64.b64encode(b"users-token").decode()
    kube.request(  # the user's pods read the service token from the Secret hotpod would make
        "POST",
        "/api/v1/namespaces/default/secrets",
        body={"metadata": {"name": "adopt-hotpod-token"}, "data": {"token": token}},
    )
    env = {
        "HOTPOD_HOST": "0.0.0.0",
        "HOTPOD_PORT": "32300",
        "HOTPOD_POD_ROOT": "/hotpod",
        "HOTPOD_STORE": "/hotpod/store",
    }
    box = {
        "name": "runtime",
        "image": "team/hotpod-runtime:1",
        "command": ["python", "-m", "hotpod.runtime.supervisor"],
        "env": [{"name": k, "value": v} for k, v in env.items()]
        + [
            {"name": "HOTPOD_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "HOTPOD_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": "adopt-hotpod-token", "key": "token"}},
            },
        ],
        "volumeMounts": [{"name": "root", "mountPath": "/hotpod"}],
    }
    pod = {"containers": [box], "volumes": [{"name": "root", "emptyDir": {}}]}
    kube.request(
        "POST",
        "/apis/apps/v1/namespaces/default/deployments",
        body=_user_deployment("mine", {"app": "mine"}, pod),
    )
    _until(lambda: len(k8s.pods(k8s.namespace, {"app": "mine"})) == 2, what="the user's pods")
    remote = kt.fn(module.hello, name="adopt").to(kt.Compute(selector={"app": "mine"}))
    assert [r["v"] for r in remote(2)] == [1, 1]
    assert {s.name: len(s.pods) for s in kt.list_services()} == {"adopt": 2}
    fresh = type(get_backend())(reload_settings())  # as 'hotpod logs adopt' in a new process
    try:
        logged = {line.pod for line in fresh.logs("adopt", tail=50)}
    finally:
        fresh.close()  # type: ignore[attr-defined]
    assert logged == set(remote.pods)  # the user's pods, found by their own labels
    assert kt.teardown("adopt") == ["adopt"]
    assert len(k8s.pods(k8s.namespace, {"app": "mine"})) == 2  # the user's pods stay
    kube.delete("/apis/apps/v1/namespaces/default/deployments/mine")
    _until(lambda: not k8s.processes(), what="the user's pods to stop")


def test_an_autoscaled_pool_is_a_knative_service_whose_calls_reach_one_pod_each(
    k8s: Any, project: tuple[Path, ModuleType]
) -> None:
    _, module = project
    kube = _kube()
    # what Knative's controller makes for revision 1 (the fake's Knative does not): a Service
    # over the revision's pods, through which the API server's proxy reaches them
    revision = {"serving.knative.dev/revision": "web-00001"}
    kube.request(
        "POST",
        "/api/v1/namespaces/default/services",
        body={
            "metadata": {"name": "web-00001"},
            "spec": {
                "selector": revision,
                "ports": [{"name": "http", "port": 80, "targetPort": 32300}],
            },
        },
    )
    compute = kt.Compute(**SMALL).autoscale(min_scale=2, max_scale=4, target=10)
    remote = kt.fn(module.whoami, name="web").to(compute)
    assert _kube().get("/apis/serving.knative.dev/v1/namespaces/default/services/web")
    assert len(remote.pods) == 2
    results = [remote(i) for i in range(4)]  # one result per call: one pod each
    assert [r["x"] for r in results] == [0, 1, 2, 3]
    assert {r["host"] for r in results} == set(remote.pods)  # spread over the pods
    assert {r["pod"] for r in results} == set(remote.pods)  # (no downward API: the hostname)
    kube.delete("/api/v1/namespaces/default/services/web-00001")


def test_logs_follow_picks_up_later_pods_and_teardown_volumes_deletes_the_claim(
    k8s: Any, project: tuple[Path, ModuleType]
) -> None:
    import threading

    from hotpod.cli import main

    _, module = project
    compute = kt.Compute(volumes=[kt.Volume("scratch", "/scratch", size="1Gi")], **SMALL)
    remote = kt.fn(module.hello, name="logf").to(compute)
    backend = get_backend()
    seen: list[str] = []
    follow = backend.logs("logf", follow=True)
    threading.Thread(target=lambda: [seen.append(line.pod) for line in follow], daemon=True).start()
    _kube().request(
        "PATCH",
        "/apis/apps/v1/namespaces/default/deployments/logf",
        body={"spec": {"replicas": 2}},
        content_type="application/merge-patch+json",
    )
    later = _until(
        lambda: set(seen) - set(remote.pods), what="a line from the pod that started later"
    )
    assert later and later <= {p["metadata"]["name"] for p in k8s.pods(k8s.namespace)}
    claims = "/api/v1/namespaces/default/persistentvolumeclaims"
    assert [c["metadata"]["name"] for c in _kube().items(claims)] == ["scratch"]
    result = CliRunner().invoke(main, ["teardown", "logf", "--volumes"])
    assert result.exit_code == 0 and "deleted logf" in result.output
    assert _kube().items(claims) == []


def test_the_init_bootstrap_runs_hotpod_copied_from_the_runtime_image(
    k8s: Any, monkeypatch: pytest.MonkeyPatch, project: Any, tmp_path: Path
) -> None:
    import json
    import shutil

    from hotpod.backends.k8s import bootstrap

    # the runtime image's tree (the fake runs images on this host): this hotpod and its info
    source = tmp_path / "runtime-image" / "opt" / "hotpod" / "runtime"
    host_hotpod = Path(kt.__file__).parent
    shutil.copytree(host_hotpod, source / "hotpod", ignore=shutil.ignore_patterns("__pycache__"))
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    info = {"python": python, "libc": "glibc", "hotpod": kt.__version__}
    (source / bootstrap.RUNTIME_INFO).write_text(json.dumps(info))
    monkeypatch.setattr(bootstrap, "RUNTIME_SOURCE", str(source))
    monkeypatch.setenv("HOTPOD_K8S_BOOTSTRAP", "init")
    monkeypatch.setenv("HOTPOD_K8S_BOOTSTRAP_IMAGE", "my-team/hotpod-runtime:1")
    reload_settings()
    _, module = project
    remote = kt.fn(module.where_hotpod, name="booted").to(
        kt.Compute(image=kt.Image("python:3.11"), **SMALL)
    )
    where = remote()
    # the pod's hotpod is the copy in its emptyDir, not this host's
    assert where["dir"].endswith("/hotpod-runtime")
    assert where["file"] == f"{where['dir']}/hotpod/__init__.py"
    assert not where["file"].startswith(str(host_hotpod))
    (pod,) = k8s.pods(k8s.namespace, {"hotpod.dev/service": "booted"})
    (init,) = pod["status"]["initContainerStatuses"]
    assert init["name"] == "hotpod-runtime" and init["image"] == "my-team/hotpod-runtime:1"
    assert init["state"]["terminated"]["exitCode"] == 0

    # a runtime image for another Python: the pod says so, and .to() shows it
    info["python"] = "3.9"
    (source / bootstrap.RUNTIME_INFO).write_text(json.dumps(info))
    with pytest.raises(kt.DeployError) as caught:
        kt.fn(module.where_hotpod, name="mismatched").to(kt.Compute(cpus="0.1", launch_timeout=30))
    message = str(caught.value)
    assert "keeps crashing" in message
    assert "it was built for Python 3.9 (glibc) and this image runs Python" in message


def test_an_init_bootstrap_that_cannot_run_fails_the_deploy_naming_the_init_container(
    k8s: Any, monkeypatch: pytest.MonkeyPatch, project: Any, tmp_path: Path
) -> None:
    from hotpod.backends.k8s import bootstrap

    monkeypatch.setattr(bootstrap, "RUNTIME_SOURCE", str(tmp_path / "no-such-runtime"))
    monkeypatch.setenv("HOTPOD_K8S_BOOTSTRAP", "init")
    monkeypatch.setenv("HOTPOD_K8S_BOOTSTRAP_IMAGE", "my-team/hotpod-runtime:1")
    reload_settings()
    _, module = project
    # the copy fails (nothing at the source): the init container's exit and log are named
    start = time.monotonic()
    with pytest.raises(kt.DeployError) as caught:
        kt.fn(module.where_hotpod, name="no-copy").to(kt.Compute(cpus="0.1", launch_timeout=60))
    message = str(caught.value)
    assert "init container 'hotpod-runtime' of pod no-copy-" in message, message
    assert "failed (exit code" in message and "no-such-runtime" in message, message
    assert time.monotonic() - start < 30
    # the runtime image cannot be pulled: said at once, naming it
    k8s.missing_images.add("my-team/hotpod-runtime:1")
    with pytest.raises(kt.DeployError) as caught:
        kt.fn(module.where_hotpod, name="no-pull").to(kt.Compute(cpus="0.1", launch_timeout=60))
    message = str(caught.value)
    assert "init container 'hotpod-runtime'" in message, message
    assert "cannot pull its image 'my-team/hotpod-runtime:1'" in message, message
