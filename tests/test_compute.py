from __future__ import annotations

import copy
import json
import pickle
from typing import Any

import pytest

from hotpod.compute import Compute
from hotpod.endpoint import Endpoint
from hotpod.errors import SpecError
from hotpod.image import Image
from hotpod.secret import Secret
from hotpod.volume import Volume


class kt:  # the seed's spelling, without importing hotpod/__init__.py
    Compute = Compute
    Endpoint = Endpoint
    Image = Image
    Secret = Secret
    Volume = Volume


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


def deployment(replicas: int = 2) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "workers"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "workers"}},
            "template": {
                "metadata": {"labels": {"app": "workers"}},
                "spec": {"containers": [{"name": "main", "image": "python:3.11"}]},
            },
        },
    }


def pytorchjob(workers: int = 3) -> dict[str, Any]:
    pod = {"spec": {"containers": [{"name": "pytorch", "image": "pytorch/pytorch:2.0.0"}]}}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": "train"},
        "spec": {
            "pytorchReplicaSpecs": {
                "Master": {"replicas": 1, "template": pod},
                "Worker": {"replicas": workers, "template": pod},
            }
        },
    }


def test_seed_simple() -> None:
    compute = kt.Compute(cpus="4", gpus="1", memory="16Gi")
    assert compute.cpus == "4"
    assert compute.cpu_cores == 4.0
    assert compute.gpus == 1
    assert compute.gpu_count == 1
    assert compute.memory_bytes == 16 * 2**30
    assert compute.replicas == 1
    assert compute.namespace == "default"
    assert repr(compute) == "Compute(cpus='4', gpus=1, memory='16Gi')"


def test_seed_full() -> None:
    compute = seed_full()
    assert compute.replicas == 3
    assert compute.disk_bytes == 100 * 2**30
    assert compute.node_selector == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert compute.secrets == (Secret("hf-token", "HF_TOKEN"),)
    assert compute.volumes == (Volume("data", "/data", pvc="shared-data-pvc"),)
    assert compute.annotations == {"prometheus.io/scrape": "true"}
    assert compute.labels == {"team": "ml-research"}
    assert compute == seed_full()
    assert hash(compute) == hash(seed_full())


def test_seed_selector() -> None:
    compute = kt.Compute(selector={"app": "my-training-jobset"})
    assert compute.selector == {"app": "my-training-jobset"}
    assert compute.uses_existing_pods
    assert compute.cpu_cores is None and compute.memory_bytes is None and compute.gpu_count == 0


def test_seed_from_manifest() -> None:
    my_manifest = pytorchjob()
    compute = kt.Compute.from_manifest(
        manifest=my_manifest,
        selector={"app": "workers"},
        endpoint=kt.Endpoint(url="my-lb.default.svc:8080"),
    )
    assert compute.manifest == my_manifest
    assert compute.selector == {"app": "workers"}
    assert compute.endpoint == Endpoint(url="my-lb.default.svc:8080")
    assert compute.replicas == 4
    assert not compute.uses_existing_pods


def test_seed_image_examples() -> None:
    image = kt.Image("pytorch/pytorch:2.0.0").pip_install(["transformers"])
    compute = kt.Compute(image=image)
    assert compute.image is image
    compute = kt.Compute(
        cpus="4", gpus="1", image=kt.Image("pytorch/pytorch:2.0.0").pip_install(["transformers"])
    )
    assert compute.image == image


def test_design_example() -> None:
    compute = kt.Compute(
        cpus="1",
        memory="2Gi",
        replicas=2,
        image=kt.Image("python:3.11").pip_install(["numpy"]).set_env_vars({"MODE": "dev"}),
    )
    assert compute.replicas == 2
    assert compute.image is not None and compute.image.env_vars == {"MODE": "dev"}


def test_numbers_are_normalised() -> None:
    compute = Compute(cpus=0.5, gpus=2, memory=1024, shared_memory="1Gi")
    assert compute.cpus == "500m"
    assert compute.cpu_cores == 0.5
    assert compute.memory == "1024"
    assert compute.shared_memory_bytes == 2**30
    assert Compute(cpus=2).cpus == "2"
    assert Compute(gpus="0").gpu_count == 0


def test_positional_resources() -> None:
    assert Compute("2", 1, "4Gi", "10Gi", 2) == Compute(
        cpus="2", gpus=1, memory="4Gi", disk_size="10Gi", replicas=2
    )


def test_secret_names_become_secrets() -> None:
    compute = Compute(secrets=["hf-token", Secret("aws", values={"A": "1"})])
    assert compute.secrets[0] == Secret("hf-token")
    assert compute.secrets[1].name == "aws"


def test_immutable() -> None:
    compute = seed_full()
    with pytest.raises(AttributeError):
        compute.cpus = "8"  # type: ignore[misc]
    with pytest.raises(TypeError):
        compute.labels["team"] = "x"  # type: ignore[index]
    assert isinstance(compute.secrets, tuple) and isinstance(compute.volumes, tuple)


def test_inputs_are_copied() -> None:
    labels = {"team": "a"}
    secrets = [Secret("s1")]
    compute = Compute(labels=labels, secrets=secrets)
    labels["team"] = "b"
    secrets.append(Secret("s2"))
    assert compute.labels == {"team": "a"}
    assert len(compute.secrets) == 1


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"cpus": "four"}, "cpus='four': expected a number of cores like '4', '0.5' or '500m'"),
        ({"cpus": -1}, "cpus=-1: expected a number of cores"),
        ({"gpus": "one"}, "gpus='one': expected a whole number >= 0"),
        ({"gpus": 1.5}, "gpus=1.5: expected a whole number"),
        ({"gpus": -1}, "gpus=-1"),
        ({"gpus": True}, "gpus=True"),
        ({"memory": "16GB"}, "memory='16GB': expected a quantity of bytes"),
        ({"disk_size": "big"}, "disk_size='big': expected a quantity of bytes"),
        ({"shared_memory": "x"}, "shared_memory='x'"),
        ({"replicas": "3"}, "replicas='3': expected a whole number >= 0"),
        ({"replicas": -1}, "replicas=-1"),
        ({"replicas": 2.0}, "replicas=2.0"),
        ({"node_selector": {"gpu": "A100 80GB"}}, "node_selector['gpu']='A100 80GB'"),
        ({"secrets": "hf-token"}, "secrets='hf-token': expected a list"),
        ({"secrets": [3]}, "secrets=[3]: expected a list of Secret"),
        ({"secrets": ["HF_TOKEN"]}, "name='HF_TOKEN': expected a DNS-1123 subdomain"),
        ({"volumes": Volume("d", "/d")}, "volumes=Volume(name='d', mount_path='/d')"),
        ({"volumes": ["/data"]}, "volumes=['/data']: expected a list of Volume"),
        ({"volumes": [Volume("d", "/d"), Volume("e", "/d")]}, "share a name or a mount_path"),
        ({"annotations": {"a": 1}}, "annotations['a']=1"),
        ({"labels": {"Team Name": "x"}}, "labels key 'Team Name'"),
        ({"image": "python:3.11"}, "image='python:3.11': expected an Image"),
        ({"selector": {}}, "selector={}: expected a non-empty dict"),
        ({"selector": "app=x"}, "selector='app=x': expected a dict"),
        ({"env_vars": {"MY-VAR": "x"}}, "env_vars key 'MY-VAR'"),
        ({"namespace": "My_NS"}, "namespace='My_NS': expected a DNS-1123 label"),
        ({"gpu_type": ""}, "gpu_type='': expected a GPU model"),
        ({"service_account": "SA"}, "service_account='SA': expected a DNS-1123 subdomain"),
        ({"image_pull_policy": "always"}, "image_pull_policy='always': expected one of Always"),
        ({"launch_timeout": 0}, "launch_timeout=0: expected a number of seconds > 0"),
        ({"launch_timeout": "300"}, "launch_timeout='300'"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        Compute(**kwargs)
    assert fragment in str(info.value)


def test_unknown_keyword_is_rejected() -> None:
    with pytest.raises(TypeError, match="cpu"):
        Compute(cpu="4")  # type: ignore[call-arg]


def test_from_manifest_deployment_copies_deeply() -> None:
    manifest = deployment(replicas=5)
    compute = Compute.from_manifest(manifest)
    assert compute.replicas == 5
    manifest["spec"]["template"]["spec"]["containers"][0]["image"] = "changed"
    assert compute.manifest is not None
    assert compute.manifest["spec"]["template"]["spec"]["containers"][0]["image"] == "python:3.11"
    compute.manifest["kind"] = "Mutated"
    assert compute.manifest["kind"] == "Deployment"
    assert repr(compute) == "Compute(replicas=5, manifest=<Deployment workers>)"


def test_from_manifest_pytorchjob_and_overrides() -> None:
    assert Compute.from_manifest(pytorchjob(workers=7)).replicas == 8
    compute = Compute.from_manifest(pytorchjob(), replicas=2, namespace="ml", gpus=1)
    assert (compute.replicas, compute.namespace, compute.gpu_count) == (2, "ml", 1)


@pytest.mark.parametrize(
    ("manifest", "replicas"),
    [
        (
            {
                "apiVersion": "jobset.x-k8s.io/v1alpha2",
                "kind": "JobSet",
                "spec": {
                    "replicatedJobs": [
                        {"name": "w", "replicas": 2, "template": {"spec": {"parallelism": 4}}},
                        {"name": "d", "template": {"spec": {}}},
                    ]
                },
            },
            9,
        ),
        ({"apiVersion": "batch/v1", "kind": "Job", "spec": {"parallelism": 3}}, 3),
        (
            {"apiVersion": "ray.io/v1", "kind": "RayCluster", "spec": {"workerGroupSpecs": [{}]}},
            2,
        ),
        ({"apiVersion": "v1", "kind": "Pod", "spec": {}}, 1),
        ({"apiVersion": "v1", "kind": "ConfigMap"}, 1),
    ],
)
def test_manifest_replicas(manifest: dict[str, Any], replicas: int) -> None:
    assert Compute.from_manifest(manifest).replicas == replicas


@pytest.mark.parametrize(
    ("manifest", "fragment"),
    [
        ({"kind": "Deployment"}, "manifest: 'apiVersion' is missing"),
        ({"apiVersion": "v1"}, "manifest: 'kind' is missing"),
        ({"apiVersion": "v1", "kind": 3}, "'kind' is missing or not a string (got 3)"),
        ("kind: Deployment", "manifest='kind: Deployment': expected a dict"),
        ({"apiVersion": "v1", "kind": "Pod", "x": object()}, "expected plain data"),
    ],
)
def test_from_manifest_rejects(manifest: Any, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        Compute.from_manifest(manifest)
    assert fragment in str(info.value)


def test_from_manifest_rejects_a_bad_endpoint() -> None:
    with pytest.raises(SpecError, match="endpoint='svc:80': expected an Endpoint"):
        Compute.from_manifest(deployment(), endpoint="svc:80")  # type: ignore[arg-type]


def test_replace() -> None:
    compute = seed_full()
    scaled = compute.replace(replicas=5)
    assert scaled.replicas == 5 and compute.replicas == 3
    assert scaled.replace(replicas=3) == compute
    with pytest.raises(SpecError, match="cpus='x'"):
        compute.replace(cpus="x")
    with pytest.raises(TypeError, match="cpu"):
        compute.replace(cpu="4")


def test_replace_keeps_the_manifest_and_endpoint() -> None:
    endpoint = Endpoint(url="svc:8080")
    compute = Compute.from_manifest(deployment(), endpoint=endpoint).replace(replicas=9)
    assert compute.manifest == deployment()
    assert compute.endpoint == endpoint
    assert compute.replicas == 9


def test_template_dict_changes_with_env_not_replicas() -> None:
    base = Compute(cpus="1", replicas=2, env_vars={"MODE": "dev"})
    assert base.template_dict() == base.replace(replicas=7).template_dict()
    assert base.template_hash() == base.replace(replicas=7).template_hash()
    assert base.template_dict() != base.replace(env_vars={"MODE": "prod"}).template_dict()
    assert base.template_hash() != base.replace(env_vars={"MODE": "prod"}).template_hash()
    assert base.template_dict() != base.replace(memory="1Gi").template_dict()
    assert base.template_dict() != base.replace(secrets=["hf-token"]).template_dict()


def test_template_dict_ignores_image_steps_but_not_image_id() -> None:
    image = Image("python:3.11").pip_install("numpy")
    base = Compute(image=image)
    assert base.template_dict() == base.replace(image=image.pip_install("pandas")).template_dict()
    assert base.template_dict() != base.replace(image=Image("python:3.12")).template_dict()
    assert base.template_dict()["image_id"] == "python:3.11"


def test_template_dict_of_a_manifest_ignores_its_replica_counts() -> None:
    small = Compute.from_manifest(pytorchjob(workers=1))
    big = Compute.from_manifest(pytorchjob(workers=9))
    assert small.replicas != big.replicas
    assert small.template_dict() == big.template_dict()
    assert small.template_dict() != Compute.from_manifest(deployment()).template_dict()
    assert Compute.from_manifest(deployment(1)).template_hash() == (
        Compute.from_manifest(deployment(4)).template_hash()
    )


def test_template_dict_and_to_dict_are_json_and_hide_secret_values() -> None:
    compute = seed_full().replace(
        secrets=[Secret("aws", values={"AWS_SECRET_ACCESS_KEY": "s3cr3t-value"})],
        image=Image("python:3.11").pip_install("numpy"),
    )
    for data in [compute.template_dict(), compute.to_dict()]:
        text = json.dumps(data)
        assert "s3cr3t-value" not in text
    full = compute.to_dict()
    assert "replicas" not in compute.template_dict()
    assert full["replicas"] == 3
    assert full["image"]["steps"][0]["packages"] == ["numpy"]
    assert full["secrets"][0]["value_names"] == ["AWS_SECRET_ACCESS_KEY"]
    assert "s3cr3t-value" not in repr(compute)


def test_repr_shows_only_non_defaults() -> None:
    assert repr(Compute()) == "Compute()"
    text = repr(seed_full())
    assert text.startswith("Compute(cpus='4', gpus=1, memory='16Gi', disk_size='100Gi', replicas=3")
    assert "secrets=[Secret('hf-token', env_var='HF_TOKEN')]" in text
    assert "namespace" not in text and "launch_timeout" not in text


def test_pickle_and_deepcopy() -> None:
    compute = Compute.from_manifest(
        deployment(), selector={"app": "workers"}, endpoint=Endpoint(url="svc:80")
    ).replace(image=Image("python:3.11").set_env_vars({"A": "1"}), secrets=["hf-token"])
    assert pickle.loads(pickle.dumps(compute)) == compute
    assert copy.deepcopy(compute) == compute


def test_maps_default_to_empty_and_selector_to_none() -> None:
    compute = Compute()
    assert compute.env_vars == {} and compute.labels == {} and compute.annotations == {}
    assert compute.node_selector == {}
    assert dict(compute.env_vars) == {}
    assert compute.selector is None
    assert compute.secrets == () and compute.volumes == ()
    assert Compute(labels={}) == Compute()
