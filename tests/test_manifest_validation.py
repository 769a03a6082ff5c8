"""Every golden manifest (tests/golden/k8s/) checked against the real schemas.

- built-in kinds: ``kubernetes_validate`` strict (unknown fields rejected), Kubernetes 1.30 and
  the newest version it bundles;
- Knative Services: the npm package ``@kubernetes-models/knative`` run through node (installed
  by .ci/run with ``npm ci --prefix tests/k8s_validators``), plus the revision's pod template
  against the core ``PodTemplateSpec``;
- RayClusters: a small JSON Schema for the fields hotpod emits, each pod template checked
  against the core ``PodTemplateSpec`` from kubernetes_validate's bundled strict definitions;
- PyTorchJob and JobSet (no schema package exists for them): their pod templates against the
  core ``PodTemplateSpec``, a JobSet's job templates against ``JobTemplateSpec``.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kv_utils

from hotpod.k8s.byo import pod_templates

GOLDEN = Path(__file__).parent / "golden" / "k8s"
VALIDATORS = Path(__file__).parent / "k8s_validators"
KNATIVE_MODULE = VALIDATORS / "node_modules" / "@kubernetes-models" / "knative"
VERSIONS = ("1.30", kubernetes_validate.latest_version())
BUILT_IN_APIS = ("v1", "apps/v1", "batch/v1")


def golden_objects() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(GOLDEN.glob("*.yaml")):
        for index, obj in enumerate(yaml.safe_load_all(path.read_text(encoding="utf-8"))):
            found.append((f"{path.stem}[{index}]:{obj['kind']}", obj))
    return found


OBJECTS = golden_objects()


def of_kind(api_version: str, kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(i, o) for i, o in OBJECTS if (o["apiVersion"], o["kind"]) == (api_version, kind)]


def test_there_are_golden_manifests_of_every_kind() -> None:
    kinds = {(o["apiVersion"], o["kind"]) for _, o in OBJECTS}
    assert kinds == {
        ("v1", "Service"),
        ("v1", "PersistentVolumeClaim"),
        ("apps/v1", "Deployment"),
        ("apps/v1", "StatefulSet"),
        ("batch/v1", "Job"),
        ("serving.knative.dev/v1", "Service"),
        ("ray.io/v1", "RayCluster"),
        ("kubeflow.org/v1", "PyTorchJob"),
        ("jobset.x-k8s.io/v1alpha2", "JobSet"),
    }, "a new kind was added: give it a check below"


# -- built-in kinds: kubernetes-validate strict ------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("ident", "obj"), [(i, o) for i, o in OBJECTS if o["apiVersion"] in BUILT_IN_APIS]
)
def test_built_in_kinds_pass_kubernetes_validate_strict(
    ident: str, obj: dict[str, Any], version: str
) -> None:
    kubernetes_validate.validate(obj, version, strict=True)


def test_strict_validation_catches_a_misspelt_field() -> None:
    (_, deployment), *_ = of_kind("apps/v1", "Deployment")
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[-1], strict=True)


# -- core definitions for the custom resources -------------------------------------------------


@functools.cache
def core_defs() -> dict[str, Any]:
    """The bundled strict definitions of the newest Kubernetes version (``$defs``)."""
    version = kubernetes_validate.latest_version()
    path = f"kubernetes-json-schema/v{version}-local-strict/_definitions.json"
    defs: dict[str, Any] = kv_utils.schema_contents(path, version)["$defs"]
    return defs


def core_validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({**schema, "$defs": core_defs()})


def check_core(obj: Any, definition: str) -> None:
    core_validator({"$ref": f"#/$defs/io.k8s.{definition}"}).validate(obj)


# -- Knative Services: the npm validator -------------------------------------------------------


def run_knative_validator(objects: list[dict[str, Any]]) -> list[str | None]:
    node = shutil.which("node")
    if node is None or not KNATIVE_MODULE.is_dir():
        reason = (
            "the Knative validator is not installed: run 'npm ci --prefix tests/k8s_validators' "
            "(node and npm needed)"
        )
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; .ci/run must install it")
        pytest.skip(reason)
    done = subprocess.run(
        [node, str(VALIDATORS / "validate_knative.js")],
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    results: list[str | None] = json.loads(done.stdout)
    return results


KNATIVE = of_kind("serving.knative.dev/v1", "Service")


def test_knative_services_pass_the_knative_validator() -> None:
    assert KNATIVE
    results = run_knative_validator([obj for _, obj in KNATIVE])
    assert dict(zip([i for i, _ in KNATIVE], results, strict=True)) == {i: None for i, _ in KNATIVE}


def test_the_knative_validator_rejects_a_bad_service() -> None:
    _, service = KNATIVE[0]
    bad_concurrency = copy.deepcopy(service)
    bad_concurrency["spec"]["template"]["spec"]["containerConcurrency"] = "ten"
    no_port = copy.deepcopy(service)
    del no_port["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    first, second = run_knative_validator([bad_concurrency, no_port])
    assert first is not None and "containerConcurrency" in first
    assert second is not None and "containerPort" in second


@pytest.mark.parametrize(("ident", "obj"), KNATIVE)
def test_knative_revision_templates_are_core_pod_templates(ident: str, obj: dict[str, Any]) -> None:
    template = copy.deepcopy(obj["spec"]["template"])
    template["spec"].pop("containerConcurrency", None)  # Knative's addition to the pod spec
    check_core(template, "api.core.v1.PodTemplateSpec")
    check_core(obj["metadata"], "apimachinery.pkg.apis.meta.v1.ObjectMeta")


# -- RayClusters: a schema for the fields hotpod emits -----------------------------------------

_POD_TEMPLATE = {"$ref": "#/$defs/io.k8s.api.core.v1.PodTemplateSpec"}
_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}
RAY_CLUSTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayCluster"},
        "metadata": {"$ref": "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
        "spec": {
            "type": "object",
            "required": ["headGroupSpec"],
            "additionalProperties": False,
            "properties": {
                "headGroupSpec": {
                    "type": "object",
                    "required": ["rayStartParams", "template"],
                    "additionalProperties": False,
                    "properties": {"rayStartParams": _START_PARAMS, "template": _POD_TEMPLATE},
                },
                "workerGroupSpecs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": [
                            "groupName",
                            "minReplicas",
                            "maxReplicas",
                            "rayStartParams",
                            "template",
                        ],
                        "additionalProperties": False,
                        "properties": {
                            "groupName": {"type": "string", "minLength": 1},
                            "replicas": {"type": "integer", "minimum": 0},
                            "minReplicas": {"type": "integer", "minimum": 0},
                            "maxReplicas": {"type": "integer", "minimum": 0},
                            "rayStartParams": _START_PARAMS,
                            "template": _POD_TEMPLATE,
                        },
                    },
                },
            },
        },
    },
}

RAY = of_kind("ray.io/v1", "RayCluster")


@pytest.mark.parametrize(("ident", "obj"), RAY)
def test_rayclusters_pass_the_schema_with_core_pod_templates(
    ident: str, obj: dict[str, Any]
) -> None:
    core_validator(RAY_CLUSTER_SCHEMA).validate(obj)
    for group in obj["spec"].get("workerGroupSpecs", []):
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]


def test_the_raycluster_schema_rejects_bad_clusters() -> None:
    _, cluster = RAY[0]
    validator = core_validator(RAY_CLUSTER_SCHEMA)
    no_head = copy.deepcopy(cluster)
    del no_head["spec"]["headGroupSpec"]
    bad_pod = copy.deepcopy(cluster)
    bad_pod["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["imag"] = "x"
    bad_params = copy.deepcopy(cluster)
    bad_params["spec"]["headGroupSpec"]["rayStartParams"]["port"] = 6379
    for bad in (no_head, bad_pod, bad_params):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(bad)


# -- PyTorchJob and JobSet: their embedded core templates --------------------------------------

OTHER_CRDS = of_kind("kubeflow.org/v1", "PyTorchJob") + of_kind(
    "jobset.x-k8s.io/v1alpha2", "JobSet"
)


@pytest.mark.parametrize(("ident", "obj"), OTHER_CRDS)
def test_other_workloads_have_core_pod_templates(ident: str, obj: dict[str, Any]) -> None:
    check_core(obj["metadata"], "apimachinery.pkg.apis.meta.v1.ObjectMeta")
    templates = list(pod_templates(obj))
    assert templates
    for template in templates:
        check_core(template, "api.core.v1.PodTemplateSpec")
    for job in obj["spec"].get("replicatedJobs", []):
        check_core(job["template"], "api.batch.v1.JobTemplateSpec")
