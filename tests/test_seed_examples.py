"""Every code block of the seed (seed/kubetorch-core-primitives.txt) on the local backend.

Only the import line changes (``import hotpod as kt``), and resources are sized for this machine
(no GPUs, 2 cores) where a block deploys.
"""

from __future__ import annotations

import pytest

import hotpod as kt
import seed_code
from seed_code import Model, my_fn, train
from wheels import make_wheel


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """pip finds stand-ins for the seed's packages in a local folder and asks no index:
    pip settings of the deploying machine reach the pods' pip steps."""
    wheels = tmp_path / "wheels"
    for name in ("transformers", "datasets"):
        make_wheel(wheels, name, "0.0.1", f"NAME = {name!r}\n")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    return wheels


MY_MANIFEST = {
    "apiVersion": "kubeflow.org/v1",
    "kind": "PyTorchJob",
    "metadata": {"name": "workers"},
    "spec": {
        "pytorchReplicaSpecs": {
            "Master": {"replicas": 1, "template": {"spec": {"containers": []}}},
            "Worker": {"replicas": 2, "template": {"spec": {"containers": []}}},
        }
    },
}


def test_compute_constructors_as_written():
    # This creates a pool of pods, each with 4 CPUs, 1 GPU, and 16GB memory
    compute = kt.Compute(
        cpus="4",
        gpus="1",
        memory="16Gi",
    )
    assert compute.gpu_count == 1 and compute.memory_bytes == 16 * 2**30
    # The compute constructor supports more complex configurations
    compute = kt.Compute(
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
    assert compute.replicas == 3 and compute.volumes[0].pvc == "shared-data-pvc"
    # This uses an existing pool of pods which match the selector
    compute = kt.Compute(selector={"app": "my-training-jobset"})
    assert dict(compute.selector) == {"app": "my-training-jobset"}
    # This uses a custom manifest (e.g. Kubeflow PyTorchJob, JobSet, etc.)
    my_manifest = MY_MANIFEST
    compute = kt.Compute.from_manifest(
        manifest=my_manifest,
        selector={"app": "workers"},
        endpoint=kt.Endpoint(url="my-lb.default.svc:8080"),
    )
    assert compute.replicas == 3 and compute.endpoint.base_url == "http://my-lb.default.svc:8080"


def test_image_chain_as_written():
    image = (
        kt.Image(image_id="pytorch/pytorch:2.0.0-cuda11.7-cudnn8-runtime")
        .pip_install(["transformers", "accelerate"])
        .set_env_vars({"HF_TOKEN": "..."})
        .run_bash("apt-get update && apt-get install -y git")
        .copy("./configs", "/app/configs")
    )
    assert [s.kind for s in image.steps] == [
        "pip_install",
        "set_env_vars",
        "run_bash",
        "copy",
    ]
    assert "..." not in repr(image)  # the token's value is not shown


@pytest.mark.slow
def test_live_updates_as_written(hotpod_home, local_index):
    # Initial deployment
    image = kt.Image("pytorch/pytorch:2.0.0").pip_install(["transformers"])
    remote_fn = kt.fn(my_fn).to(kt.Compute(image=image))
    assert remote_fn(3) == 6
    # Later, add a package - only this step runs on redeploy
    image = image.pip_install(["datasets"])
    remote_fn = kt.fn(my_fn).to(kt.Compute(image=image))  # Fast update
    assert remote_fn(4) == 8


@pytest.mark.slow
def test_module_example_as_written(hotpod_home):
    compute = kt.Compute(cpus="0.5", replicas=3)
    data = [1, 2, 3]
    # Wrap the function
    remote_train = kt.fn(train)
    # Deploy to compute - creates K8s Service
    remote_train = remote_train.to(compute)
    # Call it - makes HTTP request to the service
    model = remote_train(data, epochs=10)
    assert model == [{"data": [1, 2, 3], "epochs": 10}] * 3


@pytest.mark.slow
def test_putting_it_together_as_written(hotpod_home, local_index):
    # Define compute with image (cpus="4", gpus="1" in the seed; this machine has 2 cores)
    compute = kt.Compute(
        cpus="1",
        image=kt.Image("pytorch/pytorch:2.0.0").pip_install(["transformers"]),
    )
    # Deploy and call
    remote_model = kt.cls(Model).to(compute, init_args={"model_name": "bert-base"})
    result = remote_model.predict("Hello world")
    assert result == ("bert-base(Hello world)", 1)
    assert remote_model.predict("again")[1] == 2  # the instance keeps its state
    assert seed_code.Model is Model
