"""Compute -> Kubernetes manifests: the workload, its Services and its claims, as plain dicts."""

from __future__ import annotations

import re
from typing import Any

from hotpod.autoscale import Autoscale
from hotpod.compute import Compute
from hotpod.distribute import Distribute
from hotpod.errors import SpecError
from hotpod.k8s import byo
from hotpod.k8s.pod import (
    RUNTIME_COMMAND,
    PodOptions,
    object_meta,
    pod_template,
    selector_labels,
)
from hotpod.k8s.service import headless_name, service

KNATIVE_API = "serving.knative.dev/v1"
RAY_API = "ray.io/v1"
ROLE_LABEL = "hotpod.dev/role"
_NAME_RE = re.compile(r"^[a-z]([a-z0-9-]*[a-z0-9])?$")
_NAME_MAX = 54  # leaves room for the "-headless" Service of a distributed pool


def check_service_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or len(name) > _NAME_MAX:
        raise SpecError(
            f"name={name!r}: expected a DNS label of at most {_NAME_MAX} characters: lowercase "
            "letters, digits and '-', starting with a letter (e.g. 'train-model')"
        )
    return name


def _claims(compute: Compute) -> list[dict[str, Any]]:
    claims = []
    for volume in compute.volumes:
        if not volume.creates_claim:
            continue
        spec: dict[str, Any] = {
            "accessModes": [volume.access_mode],
            "resources": {"requests": {"storage": volume.size}},
        }
        if volume.storage_class is not None:
            spec["storageClassName"] = volume.storage_class
        meta = {
            "name": volume.claim_name,
            "namespace": compute.namespace,
            "labels": {**dict(compute.labels), **MANAGED_LABELS},
        }
        claims.append(
            {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec}
        )
    return claims


# A claim outlives the services that mount it: it carries no service label, so that tearing a
# service down by its label leaves the data.
MANAGED_LABELS = {"app.kubernetes.io/managed-by": "hotpod"}


def _distribution_env(
    name: str, compute: Compute, dist: Distribute, *, peers: bool = True
) -> tuple[tuple[str, str], ...]:
    env = [("HOTPOD_DISTRIBUTE", dist.kind), ("HOTPOD_NUM_PROC", str(dist.procs_per_pod))]
    if peers:  # the headless Service through which the pods find each other
        env.append(("HOTPOD_PEERS", f"{headless_name(name)}.{compute.namespace}.svc"))
    if dist.rendezvous_port is not None:
        env.append(("HOTPOD_DIST_PORT", str(dist.rendezvous_port)))
    return tuple(env)


def _deployment(name: str, compute: Compute, runtime_image: str | None) -> list[dict[str, Any]]:
    dist = compute.distribution
    extra_env = () if dist is None else _distribution_env(name, compute, dist)
    template = pod_template(name, compute, runtime_image, PodOptions(extra_env=extra_env))
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(name, compute),
        "spec": {
            "replicas": compute.replicas,
            "selector": {"matchLabels": selector_labels(name)},
            "template": template,
        },
    }
    objects = [deployment, service(name, compute, selector_labels(name))]
    if dist is not None:
        extra = []
        if dist.rendezvous_port is not None:
            port = dist.rendezvous_port
            extra = [{"name": "rendezvous", "port": port, "targetPort": port, "protocol": "TCP"}]
            template["spec"]["containers"][0]["ports"].append(
                {"name": "rendezvous", "containerPort": port, "protocol": "TCP"}
            )
        objects.append(
            service(name, compute, selector_labels(name), headless=True, extra_ports=extra)
        )
    return objects


def knative_annotations(auto: Autoscale) -> dict[str, str]:
    """The revision-template annotations of an Autoscale (every field but ``concurrency``)."""
    keys = {
        "autoscaler_class": "autoscaling.knative.dev/class",
        "metric": "autoscaling.knative.dev/metric",
        "target": "autoscaling.knative.dev/target",
        "target_utilization": "autoscaling.knative.dev/target-utilization-percentage",
        "min_scale": "autoscaling.knative.dev/min-scale",
        "max_scale": "autoscaling.knative.dev/max-scale",
        "initial_scale": "autoscaling.knative.dev/initial-scale",
        "window": "autoscaling.knative.dev/window",
        "scale_down_delay": "autoscaling.knative.dev/scale-down-delay",
        "scale_to_zero_retention": "autoscaling.knative.dev/scale-to-zero-pod-retention-period",
        "progress_deadline": "serving.knative.dev/progress-deadline",
    }
    notes = {}
    for field, key in keys.items():
        value = getattr(auto, field)
        if value is not None:
            notes[key] = format(value, "g") if isinstance(value, float) else str(value)
    return notes


def _knative(name: str, compute: Compute, runtime_image: str | None) -> list[dict[str, Any]]:
    auto = compute.autoscaling
    assert auto is not None
    template = pod_template(
        name,
        compute,
        runtime_image,
        PodOptions(knative=True),
        annotations=knative_annotations(auto),
    )
    if auto.concurrency is not None:
        template["spec"] = {"containerConcurrency": auto.concurrency, **template["spec"]}
    service = {
        "apiVersion": KNATIVE_API,
        "kind": "Service",
        "metadata": object_meta(name, compute),
        "spec": {"template": template},
    }
    return [service]


def ray_head_address(name: str, compute: Compute, port: int) -> str:
    """The head's GCS address: KubeRay's head Service ``NAME-head-svc``."""
    return f"{name}-head-svc.{compute.namespace}.svc.cluster.local:{port}"


def _ray(name: str, compute: Compute, runtime_image: str | None) -> list[dict[str, Any]]:
    dist = compute.distribution
    assert dist is not None and dist.rendezvous_port is not None
    port = dist.rendezvous_port
    supervisor = " ".join(RUNTIME_COMMAND)
    env = _distribution_env(name, compute, dist, peers=False)  # Ray has its own discovery
    address = ray_head_address(name, compute, port)

    def group(role: str, start: str) -> dict[str, Any]:
        options = PodOptions(
            extra_env=(*env, ("HOTPOD_RAY_ADDRESS", address), ("HOTPOD_RAY_ROLE", role)),
            command=("/bin/bash", "-c", f"{start} && exec {supervisor}"),
        )
        template = pod_template(name, compute, runtime_image, options)
        template["metadata"]["labels"][ROLE_LABEL] = role
        if role == "head":  # what KubeRay's head Service exposes
            template["spec"]["containers"][0]["ports"] += [
                {"name": "gcs-server", "containerPort": port, "protocol": "TCP"},
                {"name": "dashboard", "containerPort": 8265, "protocol": "TCP"},
            ]
        return template

    head_start = f"ray start --head --port={port} --dashboard-host=0.0.0.0 --disable-usage-stats"
    worker_start = 'ray start --address="$HOTPOD_RAY_ADDRESS" --disable-usage-stats'
    workers = max(compute.replicas - 1, 0)
    cluster = {
        "apiVersion": RAY_API,
        "kind": "RayCluster",
        "metadata": object_meta(
            name,
            compute,
            # hotpod starts Ray itself, then its runtime: KubeRay must not rewrite the command
            annotations={"ray.io/overwrite-container-cmd": "true"},
        ),
        "spec": {
            "headGroupSpec": {
                "rayStartParams": {"port": str(port), "dashboard-host": "0.0.0.0"},
                "template": group("head", head_start),
            },
            "workerGroupSpecs": [
                {
                    "groupName": "workers",
                    "replicas": workers,
                    "minReplicas": workers,
                    "maxReplicas": workers,
                    "rayStartParams": {},
                    "template": group("worker", worker_start),
                }
            ],
        },
    }
    head = {**selector_labels(name), ROLE_LABEL: "head"}
    return [cluster, service(name, compute, head)]


def compile_manifests(
    name: str, compute: Compute, *, runtime_image: str | None = None
) -> list[dict[str, Any]]:
    """The objects a deploy of service ``name`` on ``compute`` applies, in apply order.

    Pure and deterministic. ``runtime_image`` is the image pods run when the Compute has no
    image of its own (default ``python:3.11-slim``: see the package docstring on what it needs).
    """
    check_service_name(name)
    if not isinstance(compute, Compute):
        raise SpecError(f"compute={compute!r}: expected a Compute")
    objects = _claims(compute)
    if compute.manifest is not None:
        return objects + byo.compile_byo(name, compute, runtime_image)
    if compute.uses_existing_pods:
        assert compute.selector is not None
        return [service(name, compute, dict(compute.selector))]
    if compute.autoscaling is not None:
        objects += _knative(name, compute, runtime_image)
    elif compute.distribution is not None and compute.distribution.kind == "ray":
        objects += _ray(name, compute, runtime_image)
    else:
        objects += _deployment(name, compute, runtime_image)
    return objects


__all__ = [
    "KNATIVE_API",
    "RAY_API",
    "ROLE_LABEL",
    "check_service_name",
    "compile_manifests",
    "knative_annotations",
    "ray_head_address",
]
