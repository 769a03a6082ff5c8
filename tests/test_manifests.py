"""Kubernetes manifests compiled from Computes (hotpod.k8s), autoscale() and distribute().

Compiled manifests are compared with golden YAML files under tests/golden/k8s/ (which
tests/test_manifest_validation.py checks against the real schemas). After an intended change,
regenerate them with:

    HOTPOD_UPDATE_GOLDEN=1 pytest tests/test_manifests.py
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

import hotpod as kt
from hotpod.autoscale import Autoscale
from hotpod.backends.k8s.bootstrap import Bootstrap
from hotpod.cli import main
from hotpod.compute import Compute
from hotpod.distribute import Distribute
from hotpod.errors import SpecError
from hotpod.k8s import compile_manifests, to_yaml
from hotpod.k8s.byo import REPLACED_COMMAND

GOLDEN = Path(__file__).parent / "golden" / "k8s"
UPDATE = os.environ.get("HOTPOD_UPDATE_GOLDEN") == "1"


# -- the Computes ------------------------------------------------------------------------------


def seed_full() -> Compute:
    return kt.Compute(
        cpus="4",
        gpus="1",
        memory="16Gi",
        disk_size="100Gi",
        replicas=3,
        node_selector={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
        secrets=[kt.Secret(name="hf-token", env_var="HF_TOKEN")],
        volumes=[kt.Volume(name="data", mount_path="/data", pvc="shared-data-pvc")],
        annotations={"prometheus.io/scrape": "true"},
        labels={"team": "ml-research"},
    )


def pod_template(command: list[str] | None = None, name: str = "main") -> dict[str, Any]:
    box: dict[str, Any] = {"name": name, "image": "example.com/team/trainer:1.0"}
    if command:
        box["command"] = command
        box["args"] = ["--epochs", "3"]
    box["env"] = [{"name": "MODE", "value": "train"}]
    return {"metadata": {"labels": {"app": "workers"}}, "spec": {"containers": [box]}}


def pytorchjob() -> dict[str, Any]:
    def replica(count: int) -> dict[str, Any]:
        template = pod_template(["torchrun", "train.py"], name="pytorch")
        return {"replicas": count, "restartPolicy": "OnFailure", "template": template}

    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": "trainer"},
        "spec": {"pytorchReplicaSpecs": {"Master": replica(1), "Worker": replica(3)}},
    }


def byo_deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "workers", "labels": {"app": "workers"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "workers"}},
            "template": pod_template(["python", "serve.py"]),
        },
    }


def byo_statefulset() -> dict[str, Any]:
    template = pod_template()
    template["spec"]["containers"][0]["volumeMounts"] = [{"name": "scratch", "mountPath": "/s"}]
    template["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "workers", "namespace": "ml"},
        "spec": {
            "serviceName": "workers",
            "replicas": 4,
            "selector": {"matchLabels": {"app": "workers"}},
            "template": template,
        },
    }


def byo_job() -> dict[str, Any]:
    template = pod_template(["python", "batch.py"])
    template["spec"]["restartPolicy"] = "Never"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "batch"},
        "spec": {
            "parallelism": 3,
            "completions": 3,
            "completionMode": "Indexed",
            "backoffLimit": 0,
            "template": template,
        },
    }


def byo_jobset() -> dict[str, Any]:
    template = pod_template(["python", "train.py"])
    template["spec"]["restartPolicy"] = "Never"
    job = {
        "name": "workers",
        "replicas": 2,
        "template": {"spec": {"parallelism": 2, "completions": 2, "template": template}},
    }
    return {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": "trainer"},
        "spec": {"replicatedJobs": [job]},
    }


def every_autoscale_field() -> Compute:
    return kt.Compute(cpus="1", memory="2Gi").autoscale(
        min_scale=0,
        max_scale=5,
        target=10,
        window="60s",
        metric="rps",
        concurrency=4,
        initial_scale=1,
        scale_down_delay="30s",
        scale_to_zero_retention="1m5s",
        target_utilization=70,
        autoscaler_class="kpa",
        progress_deadline="10m",
    )


CASES: dict[str, Callable[[], Compute]] = {
    "seed_resources": lambda: kt.Compute(cpus="4", gpus="1", memory="16Gi"),
    "seed_full": seed_full,
    "seed_selector": lambda: kt.Compute(selector={"app": "my-training-jobset"}),
    "seed_pytorchjob": lambda: kt.Compute.from_manifest(
        manifest=pytorchjob(),
        selector={"app": "workers"},
        endpoint=kt.Endpoint(url="my-lb.default.svc:8080"),
    ),
    "default": lambda: kt.Compute(),
    "byo_deployment": lambda: kt.Compute.from_manifest(byo_deployment(), cpus="2"),
    "byo_statefulset": lambda: kt.Compute.from_manifest(
        byo_statefulset(), image=kt.Image("python:3.12"), env_vars={"LOG": "debug"}
    ),
    "byo_job": lambda: kt.Compute.from_manifest(byo_job(), gpus=1, memory="8Gi"),
    "byo_jobset": lambda: kt.Compute.from_manifest(byo_jobset(), selector={"app": "workers"}),
    "autoscale_every_field": every_autoscale_field,
    "autoscale_hpa_cpu": lambda: kt.Compute(cpus="2", image=kt.Image("python:3.11")).autoscale(
        min_replicas=1, max_replicas=10, metric="cpu", target=80, autoscaler_class="hpa"
    ),
    "distribute_ray": lambda: kt.Compute(
        cpus="2", memory="4Gi", image=kt.Image("rayproject/ray:2.9.0")
    ).distribute("ray", workers=3),
    "distribute_pytorch": lambda: kt.Compute(cpus="4", gpus="1").distribute(
        "pytorch", workers=4, num_proc=2
    ),
    "distribute_spmd": lambda: kt.Compute(cpus="1").distribute("spmd", workers=2),
    "gpu": lambda: kt.Compute(
        gpus="2",
        gpu_type="NVIDIA-H100-80GB-HBM3",
        image=kt.Image("pytorch/pytorch:2.0.0-cuda11.7-cudnn8-runtime"),
        image_pull_policy="IfNotPresent",
    ),
    "volumes_with_size": lambda: kt.Compute(
        cpus="1",
        volumes=[
            kt.Volume("cache", "/cache", size="50Gi", storage_class="fast-ssd"),
            kt.Volume("shared", "/shared", size="1Ti", access_mode="ReadWriteMany"),
            kt.Volume("data", "/data", pvc="existing-claim"),
        ],
    ),
    "secrets_files": lambda: kt.Compute(
        cpus="1",
        secrets=[
            kt.Secret("aws-credentials"),
            kt.Secret("db", values={"DB_USER": "u", "DB_PASSWORD": "p"}),
            kt.Secret("tls.certs", path="~/certs"),
            kt.Secret("hf-token", env_var="HF_TOKEN"),
        ],
    ),
    "shared_memory": lambda: kt.Compute(
        cpus="8",
        memory="32Gi",
        shared_memory="8Gi",
        namespace="ml",
        service_account="trainer",
        env_vars={"MODE": "dev", "WORKERS": 4},
        image=kt.Image("python:3.11").pip_install(["numpy"]),
        image_pull_policy="Always",
    ),
}


#: Computes as a deploy applies them with a pod bootstrap (HOTPOD_K8S_BOOTSTRAP, the backend's)
BOOTSTRAPPED: dict[str, tuple[Callable[[], Compute], Bootstrap]] = {
    "bootstrap_init": (
        lambda: kt.Compute(
            cpus="2", gpus="1", image=kt.Image("pytorch/pytorch:2.3.1-cuda12.1-cudnn8-runtime")
        ),
        Bootstrap("init", "0.1.0", "registry.example.com/team/hotpod-runtime:0.1.0-py3.10"),
    ),
}


def compiled(case: str) -> str:
    if case in BOOTSTRAPPED:
        make, bootstrap = BOOTSTRAPPED[case]
        objs = compile_manifests(case.replace("_", "-"), make())
        bootstrap.apply_all(objs)
        return to_yaml(objs)
    return to_yaml(compile_manifests(case.replace("_", "-"), CASES[case]()))


@pytest.mark.parametrize("case", sorted([*CASES, *BOOTSTRAPPED]))
def test_golden(case: str) -> None:
    text = compiled(case)
    path = GOLDEN / f"{case}.yaml"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    assert path.exists(), f"no golden file {path}; write it with HOTPOD_UPDATE_GOLDEN=1 pytest"
    assert text == path.read_text(encoding="utf-8"), (
        f"the compiled manifests differ from {path}; if the change is intended, regenerate "
        "them with HOTPOD_UPDATE_GOLDEN=1 pytest tests/test_manifests.py"
    )


def test_every_golden_file_has_a_case() -> None:
    assert sorted(p.stem for p in GOLDEN.glob("*.yaml")) == sorted([*CASES, *BOOTSTRAPPED])


def objects(case: str) -> list[dict[str, Any]]:
    return compile_manifests("svc", CASES[case]())


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def main_container(template: dict[str, Any]) -> dict[str, Any]:
    box: dict[str, Any] = template["spec"]["containers"][0]
    return box


def env_of(box: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in box["env"]}


# -- determinism and purity --------------------------------------------------------------------


def test_compiling_is_deterministic_and_leaves_the_compute_alone() -> None:
    compute = CASES["seed_pytorchjob"]()
    before = compute.to_dict()
    first = compile_manifests("svc", compute)
    first[0]["metadata"]["name"] = "changed"
    assert compile_manifests("svc", compute) != first
    assert to_yaml(compile_manifests("svc", compute)) == to_yaml(compile_manifests("svc", compute))
    assert compute.to_dict() == before


def test_the_compiler_imports_no_kubernetes_client() -> None:
    code = (
        "import sys, hotpod.k8s; hotpod.k8s.compile_manifests('a', __import__('hotpod').Compute());"
        "print([m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'kr8s', 'lightkube')])"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- autoscale ---------------------------------------------------------------------------------


def test_autoscale_puts_every_field_in_the_knative_service() -> None:
    (service,) = objects("autoscale_every_field")
    assert (service["apiVersion"], service["kind"]) == ("serving.knative.dev/v1", "Service")
    template = service["spec"]["template"]
    assert template["metadata"]["annotations"] == {
        "autoscaling.knative.dev/class": "kpa.autoscaling.knative.dev",
        "autoscaling.knative.dev/metric": "rps",
        "autoscaling.knative.dev/target": "10",
        "autoscaling.knative.dev/target-utilization-percentage": "70",
        "autoscaling.knative.dev/min-scale": "0",
        "autoscaling.knative.dev/max-scale": "5",
        "autoscaling.knative.dev/initial-scale": "1",
        "autoscaling.knative.dev/window": "60s",
        "autoscaling.knative.dev/scale-down-delay": "30s",
        "autoscaling.knative.dev/scale-to-zero-pod-retention-period": "1m5s",
        "serving.knative.dev/progress-deadline": "10m",
    }
    assert template["spec"]["containerConcurrency"] == 4
    # every Autoscale field reached the manifest: 11 annotations + containerConcurrency
    fields = every_autoscale_field().autoscaling
    assert fields is not None and all(v is not None for v in fields.to_dict().values())
    assert len(fields.to_dict()) == len(template["metadata"]["annotations"]) + 1


def test_autoscale_is_copy_on_write_and_takes_the_upstream_aliases() -> None:
    base = kt.Compute(cpus="1")
    scaled = base.autoscale(min_replicas=1, max_replicas=3, initial_replicas=2, window=90)
    assert base.autoscaling is None
    assert scaled.autoscaling == Autoscale(min_scale=1, max_scale=3, initial_scale=2, window="90s")
    assert scaled.replace(cpus="2").autoscaling == scaled.autoscaling
    assert scaled != base and scaled.template_hash() != base.template_hash()
    assert "autoscale=Autoscale(min_scale=1" in repr(scaled)
    assert scaled.to_dict()["autoscale"]["max_scale"] == 3
    assert base.template_dict() == kt.Compute(cpus="1").template_dict()


def test_autoscale_rejects_unknown_arguments_with_a_suggestion() -> None:
    with pytest.raises(SpecError, match="did you mean 'max_scale'"):
        kt.Compute().autoscale(max_scal=3)
    with pytest.raises(SpecError, match="did you mean 'target'"):
        kt.Compute().autoscale(targt=3)
    with pytest.raises(SpecError, match="min_scale twice"):
        kt.Compute().autoscale(min_scale=1, min_replicas=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_scale": 3, "max_scale": 2}, "above max_scale"),
        ({"initial_scale": 9, "max_scale": 2}, "above max_scale"),
        ({"max_scale": 0}, "max_scale=0"),
        ({"min_scale": -1}, "min_scale=-1"),
        ({"target": 0}, "target=0"),
        ({"target": "10"}, "target='10'"),
        ({"target_utilization": 101}, "target_utilization=101"),
        ({"metric": "latency"}, "metric='latency'"),
        ({"metric": "cpu"}, "needs the HPA"),
        ({"metric": "rps", "autoscaler_class": "hpa"}, "Knative's own autoscaler"),
        ({"window": "60s", "autoscaler_class": "hpa"}, "window="),
        ({"window": "2s"}, "between 6s and 3600s"),
        ({"window": "soon"}, "a duration"),
        ({"scale_down_delay": "2h"}, "between 0s"),
        ({"concurrency": 1.5}, "concurrency=1.5"),
        ({"autoscaler_class": "keda"}, "autoscaler_class='keda'"),
    ],
)
def test_autoscale_validates(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        kt.Compute().autoscale(**kwargs)


def test_autoscale_and_distribute_only_apply_to_pools_hotpod_creates() -> None:
    with pytest.raises(SpecError, match="existing pods"):
        kt.Compute(selector={"app": "x"}).autoscale(max_scale=2)
    with pytest.raises(SpecError, match="manifest you bring"):
        CASES["byo_job"]().distribute("pytorch")
    with pytest.raises(SpecError, match="cannot autoscale"):
        kt.Compute().distribute("spmd").autoscale(max_scale=2)
    with pytest.raises(SpecError, match="autoscales"):
        kt.Compute().autoscale(max_scale=2).distribute("spmd")


# -- distribute --------------------------------------------------------------------------------


def test_distribute_sets_workers_as_replicas_and_validates() -> None:
    compute = kt.Compute(cpus="1").distribute("pytorch", workers=4, num_proc=2)
    assert compute.replicas == 4
    assert compute.distribution == Distribute("pytorch", workers=4, num_proc=2)
    assert compute.distribution.rendezvous_port == 29500
    assert kt.Compute(replicas=2).distribute("jax").replicas == 2
    assert kt.Compute().distribute("ray", port=7000).distribution == Distribute("ray", port=7000)
    with pytest.raises(SpecError, match="kind='mpi'"):
        kt.Compute().distribute("mpi")
    with pytest.raises(SpecError, match="workers=0"):
        kt.Compute().distribute("spmd", workers=0)
    with pytest.raises(SpecError, match="port=70000"):
        kt.Compute().distribute("jax", port=70000)


def test_distributed_pools_get_a_headless_service_and_peer_env() -> None:
    deployment, service, headless = objects("distribute_pytorch")
    assert deployment["spec"]["replicas"] == 4
    assert service["spec"]["type"] == "ClusterIP"
    assert headless["metadata"]["name"] == "svc-headless"
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert [p["port"] for p in headless["spec"]["ports"]] == [32300, 29500]
    env = env_of(main_container(deployment["spec"]["template"]))
    assert env["HOTPOD_DISTRIBUTE"] == "pytorch"
    assert env["HOTPOD_NUM_PROC"] == "2"
    assert env["HOTPOD_DIST_PORT"] == "29500"
    assert env["HOTPOD_PEERS"] == "svc-headless.default.svc"
    assert env["HOTPOD_WORLD_SIZE"] == "4"


def test_ray_compiles_to_a_raycluster_with_head_and_workers() -> None:
    cluster, service = objects("distribute_ray")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = cluster["spec"]
    (group,) = spec["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    head = main_container(spec["headGroupSpec"]["template"])
    worker = main_container(group["template"])
    assert "ray start --head --port=6379" in head["command"][-1]
    assert head["command"][-1].endswith("exec python -m hotpod.runtime.supervisor")
    assert "--address=" in worker["command"][-1]
    assert env_of(worker)["HOTPOD_RAY_ADDRESS"] == "svc-head-svc.default.svc.cluster.local:6379"
    assert service["spec"]["selector"] == {"hotpod.dev/service": "svc", "hotpod.dev/role": "head"}


# -- every Compute field -----------------------------------------------------------------------


def test_seed_compute_maps_every_field() -> None:
    deployment, service = objects("seed_full")
    meta = deployment["metadata"]
    assert meta["labels"] == {
        "team": "ml-research",
        "app.kubernetes.io/managed-by": "hotpod",
        "hotpod.dev/service": "svc",
    }
    assert meta["annotations"] == {"prometheus.io/scrape": "true"}
    template = deployment["spec"]["template"]
    assert template["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}
    pod = template["spec"]
    box = main_container(template)
    assert box["resources"] == {
        "requests": {"cpu": "4", "memory": "16Gi", "ephemeral-storage": "100Gi"},
        "limits": {
            "cpu": "4",
            "memory": "16Gi",
            "ephemeral-storage": "100Gi",
            "nvidia.com/gpu": "1",
        },
    }
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert env_of(box)["HF_TOKEN"] == {"secretKeyRef": {"name": "hf-token", "key": "hf_token"}}
    assert {"name": "data", "mountPath": "/data"} in box["volumeMounts"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "shared-data-pvc"}} in pod[
        "volumes"
    ]
    assert box["command"] == ["python", "-m", "hotpod.runtime.supervisor"]
    assert box["readinessProbe"]["httpGet"] == {"path": "/health", "port": 32300}
    env = env_of(box)
    assert env["HOTPOD_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["HOTPOD_PORT"] == "32300"
    assert env["HOTPOD_TOKEN"] == {"secretKeyRef": {"name": "svc-hotpod-token", "key": "token"}}
    assert service["spec"]["selector"] == {"hotpod.dev/service": "svc"}


def test_shared_memory_service_account_pull_policy_namespace_and_env() -> None:
    deployment, service = objects("shared_memory")
    assert deployment["metadata"]["namespace"] == service["metadata"]["namespace"] == "ml"
    pod = deployment["spec"]["template"]["spec"]
    box = pod["containers"][0]
    assert pod["serviceAccountName"] == "trainer"
    assert box["imagePullPolicy"] == "Always"
    assert box["image"] == "python:3.11"
    assert {"name": "hotpod-shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in pod[
        "volumes"
    ]
    assert {"name": "hotpod-shm", "mountPath": "/dev/shm"} in box["volumeMounts"]
    assert box["env"][:2] == [{"name": "MODE", "value": "dev"}, {"name": "WORKERS", "value": "4"}]


def test_volumes_with_a_size_create_claims_first() -> None:
    objs = objects("volumes_with_size")
    assert [o["kind"] for o in objs] == [
        "PersistentVolumeClaim",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
    ]
    cache, shared = objs[:2]
    assert cache["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "50Gi"}},
        "storageClassName": "fast-ssd",
    }
    assert shared["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "hotpod.dev/service" not in cache["metadata"]["labels"]  # outlives the service
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in objs[2]["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["cache", "shared", "existing-claim"]


def test_secrets_as_env_or_mounted_files() -> None:
    deployment, _ = objects("secrets_files")
    pod = deployment["spec"]["template"]["spec"]
    box = pod["containers"][0]
    env = env_of(box)
    assert env["DB_USER"] == {"secretKeyRef": {"name": "db", "key": "db_user"}}
    assert env["DB_PASSWORD"] == {"secretKeyRef": {"name": "db", "key": "db_password"}}
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf-token", "key": "hf_token"}}
    assert env["HOTPOD_SECRETS_DIR"] == "/etc/hotpod/secrets"
    assert '"p"' not in json.dumps(deployment)
    assert {
        "name": "hotpod-secret-aws-credentials",
        "mountPath": "/etc/hotpod/secrets/aws-credentials",
        "readOnly": True,
    } in box["volumeMounts"]
    assert {
        "name": "hotpod-secret-tls-certs",
        "secret": {"secretName": "tls.certs"},
    } in pod["volumes"]


def test_gpu_type_becomes_a_node_selector() -> None:
    deployment, _ = objects("gpu")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": "2"}}
    with pytest.raises(SpecError, match="gpu_type"):
        compile_manifests("svc", kt.Compute(gpus=1, gpu_type="A100/80GB!"))


def test_selector_only_compiles_to_just_a_service() -> None:
    (service,) = objects("seed_selector")
    assert service["kind"] == "Service"
    assert service["spec"]["selector"] == {"app": "my-training-jobset"}


def test_reserved_names_are_rejected() -> None:
    with pytest.raises(SpecError, match="HOTPOD_PORT is reserved"):
        compile_manifests("svc", kt.Compute(env_vars={"HOTPOD_PORT": "1"}))
    with pytest.raises(SpecError, match="'hotpod-"):
        compile_manifests("svc", kt.Compute(volumes=[kt.Volume("hotpod-root", "/x")]))
    for bad in ["Svc", "1svc", "a" * 55, "a_b", ""]:
        with pytest.raises(SpecError, match="expected a DNS label"):
            compile_manifests(bad, kt.Compute())


# -- bring your own manifest -------------------------------------------------------------------


def test_pytorchjob_gets_the_runtime_in_every_replica_template() -> None:
    job, service = objects("seed_pytorchjob")
    assert job["metadata"]["name"] == "trainer"
    assert job["metadata"]["namespace"] == "default"
    for role, count in (("Master", 1), ("Worker", 3)):
        spec = job["spec"]["pytorchReplicaSpecs"][role]
        assert spec["replicas"] == count
        template = spec["template"]
        box = main_container(template)
        assert box["name"] == "pytorch"
        assert box["image"] == "example.com/team/trainer:1.0"
        assert box["command"] == ["python", "-m", "hotpod.runtime.supervisor"]
        assert "args" not in box
        assert json.loads(template["metadata"]["annotations"][REPLACED_COMMAND]) == {
            "command": ["torchrun", "train.py"],
            "args": ["--epochs", "3"],
        }
        env = env_of(box)
        assert env["MODE"] == "train" and env["HOTPOD_WORLD_SIZE"] == "4"
        assert template["metadata"]["labels"]["app"] == "workers"
        assert {"name": "hotpod", "containerPort": 32300, "protocol": "TCP"} in box["ports"]
    assert service["spec"]["selector"] == {"app": "workers"}


def test_byo_deployment_and_statefulset_merge_and_keep_their_own() -> None:
    deployment, _ = objects("byo_deployment")
    assert deployment["spec"]["replicas"] == 2
    box = main_container(deployment["spec"]["template"])
    assert box["resources"] == {"requests": {"cpu": "2"}, "limits": {"cpu": "2"}}
    statefulset, service = objects("byo_statefulset")
    assert statefulset["metadata"]["namespace"] == service["metadata"]["namespace"] == "ml"
    assert statefulset["spec"]["replicas"] == 4
    template = statefulset["spec"]["template"]
    box = main_container(template)
    assert box["image"] == "python:3.12"  # the Compute's image wins
    assert box["volumeMounts"][0] == {"name": "scratch", "mountPath": "/s"}
    assert [v["name"] for v in template["spec"]["volumes"]] == [
        "scratch",
        "hotpod-root",
        "hotpod-launch",
    ]
    assert env_of(box)["LOG"] == "debug"
    assert REPLACED_COMMAND not in template["metadata"].get("annotations", {})


def test_byo_jobset_and_job() -> None:
    (jobset, _) = objects("byo_jobset")
    template = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    assert main_container(template)["command"][-1] == "hotpod.runtime.supervisor"
    assert template["metadata"]["labels"]["hotpod.dev/service"] == "svc"
    job, _ = objects("byo_job")
    pod = job["spec"]["template"]["spec"]
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["containers"][0]["resources"]["limits"] == {"memory": "8Gi", "nvidia.com/gpu": "1"}


def test_a_manifest_without_a_pod_template_is_refused() -> None:
    compute = kt.Compute.from_manifest({"apiVersion": "v1", "kind": "ConfigMap", "data": {}})
    with pytest.raises(SpecError, match="no pod template found in the ConfigMap"):
        compile_manifests("svc", compute)


# -- YAML and the CLI --------------------------------------------------------------------------


def test_manifests_returns_yaml_that_loads_back() -> None:
    compute = seed_full()
    text = compute.manifests("train")
    assert text.startswith("---\napiVersion: apps/v1\nkind: Deployment\n")
    assert list(yaml.safe_load_all(text)) == compile_manifests("train", compute)


def test_cli_manifest_prints_the_yaml(tmp_path: Path) -> None:
    file = tmp_path / "pool.py"
    file.write_text(
        "import hotpod as kt\n"
        "my_pool = kt.Compute(cpus='1').autoscale(max_scale=3)\n"
        "image = kt.Image('python:3.11')\n"
    )
    runner = CliRunner()
    result = runner.invoke(main, ["manifest", f"{file}:my_pool"])
    assert result.exit_code == 0, result.output
    assert result.output == kt.Compute(cpus="1").autoscale(max_scale=3).manifests("my-pool")
    result = runner.invoke(main, ["manifest", f"{file}:my_pool", "--name", "web"])
    assert "  name: web\n" in result.output
    result = runner.invoke(main, ["manifest", f"{file}:image"])
    assert result.exit_code == 1
    assert "not a Compute" in result.output
    result = runner.invoke(main, ["manifest", f"{file}:my_pool", "--name", "Web!"])
    assert result.exit_code == 1 and "expected a DNS label" in result.output
