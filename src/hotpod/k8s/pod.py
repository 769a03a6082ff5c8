"""The pod a Compute describes: labels, the runtime container, volumes, scheduling.

Pure functions from a :class:`~hotpod.compute.Compute` to plain dicts in the Kubernetes API's
own field names. :mod:`hotpod.k8s.compile` wraps what these return in workloads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hotpod._quantity import check_label_map
from hotpod.compute import Compute
from hotpod.errors import SpecError
from hotpod.secret import Secret, kube_key

#: The port the pod runtime listens on in every pod (``HOTPOD_PORT``).
RUNTIME_PORT = 32300
#: The image a pool runs when its Compute has no image and no ``runtime_image`` is given.
DEFAULT_RUNTIME_IMAGE = "python:3.11-slim"
RUNTIME_COMMAND = ["python", "-m", "hotpod.runtime.supervisor"]
CONTAINER_NAME = "hotpod"
#: Where the pod runtime keeps its state (code, setup ledger, logs): an emptyDir.
POD_ROOT = "/hotpod"
#: Where Secrets without a known variable name are mounted, one directory per Secret.
SECRETS_DIR = "/etc/hotpod/secrets"
#: Where the service's last launch (ConfigMap ``NAME-hotpod-launch``) is mounted: a pod that
#: starts later (a replacement, a scale-up) loads it and fetches its code from a peer pod.
LAUNCH_DIR = "/etc/hotpod/launch"
LAUNCH_KEY = "launch.json"

MANAGED_BY = {"app.kubernetes.io/managed-by": "hotpod"}
SERVICE_LABEL = "hotpod.dev/service"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}

_ROOT_VOLUME = "hotpod-root"
_SHM_VOLUME = "hotpod-shm"
_LAUNCH_VOLUME = "hotpod-launch"


def token_secret_name(name: str) -> str:
    """The Secret holding a service's token (key ``token``), which the backend creates."""
    return f"{name}-hotpod-token"


def launch_config_name(name: str) -> str:
    """The ConfigMap holding a service's last launch (key ``launch.json``), which the backend
    writes after each deploy; optional in the pods, so they start before it exists."""
    return f"{name}-hotpod-launch"


def selector_labels(name: str) -> dict[str, str]:
    """The labels that pick the pods of service ``name``."""
    return {SERVICE_LABEL: name}


def object_labels(name: str, compute: Compute) -> dict[str, str]:
    """The user's labels plus hotpod's own (hotpod's win on a clash)."""
    return {**dict(compute.labels), **MANAGED_BY, **selector_labels(name)}


def object_meta(
    name: str, compute: Compute, *, annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": compute.namespace,
        "labels": object_labels(name, compute),
    }
    notes = {**dict(compute.annotations), **(annotations or {})}
    if notes:
        meta["annotations"] = notes
    return meta


@dataclass(frozen=True)
class PodOptions:
    """What differs between the pods of a Deployment, a Knative revision and a Ray node."""

    #: Knative forbids ``fieldRef`` env (without a feature flag) and names its port ``http1``.
    knative: bool = False
    #: Extra environment (distribution settings, Ray's role), after hotpod's own.
    extra_env: tuple[tuple[str, str], ...] = ()
    #: The container command; the runtime supervisor unless a Ray node wraps it.
    command: tuple[str, ...] = tuple(RUNTIME_COMMAND)
    #: The name of the runtime's container port (Knative's is always ``http1``).
    port_name: str = "http"


def _secret_env(secret: Secret) -> list[dict[str, Any]]:
    names = [secret.env_var] if secret.env_var is not None else list(secret.values or ())
    return [
        {"name": n, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": kube_key(n)}}}
        for n in names
    ]


def _mounts_secret(secret: Secret) -> bool:
    """A Secret whose variable names are not known here is mounted as files."""
    return secret.env_var is None and secret.values is None


def _secret_volume(secret: Secret) -> str:
    return f"hotpod-secret-{secret.name.replace('.', '-')}"[:63].rstrip("-")


def runtime_env(name: str, compute: Compute, options: PodOptions) -> list[dict[str, Any]]:
    """The container's environment: the user's variables, then the pod runtime's."""
    for key in compute.env_vars:
        if key.startswith("HOTPOD_"):
            raise SpecError(
                f"env_vars: {key} is reserved for hotpod's pod runtime; rename the variable"
            )
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in compute.env_vars.items()]
    for secret in compute.secrets:
        if not _mounts_secret(secret):
            env.extend(_secret_env(secret))
    env += [
        {"name": "HOTPOD_POD", "value": "1"},
        {"name": "HOTPOD_SERVICE", "value": name},
        {"name": "HOTPOD_HOST", "value": "0.0.0.0"},
        {"name": "HOTPOD_PORT", "value": str(RUNTIME_PORT)},
        {"name": "HOTPOD_POD_ROOT", "value": POD_ROOT},
        {"name": "HOTPOD_STORE", "value": f"{POD_ROOT}/store"},
        {"name": "HOTPOD_LAUNCH_FILE", "value": f"{LAUNCH_DIR}/{LAUNCH_KEY}"},
    ]
    if not options.knative:  # an autoscaled pool has no fixed size, nor downward-API env
        env.append({"name": "HOTPOD_WORLD_SIZE", "value": str(compute.replicas)})
        for var, field in (
            ("HOTPOD_POD_NAME", "metadata.name"),
            ("HOTPOD_NAMESPACE", "metadata.namespace"),
            ("HOTPOD_POD_IP", "status.podIP"),
        ):
            env.append({"name": var, "valueFrom": {"fieldRef": {"fieldPath": field}}})
    if any(_mounts_secret(s) for s in compute.secrets):
        env.append({"name": "HOTPOD_SECRETS_DIR", "value": SECRETS_DIR})
    env.append(
        {
            "name": "HOTPOD_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": token_secret_name(name), "key": "token"}},
        }
    )
    env += [{"name": k, "value": v} for k, v in options.extra_env]
    env.append({"name": "PYTHONUNBUFFERED", "value": "1"})
    return env


def resources(compute: Compute) -> dict[str, Any]:
    """Requests and limits: cpu, memory, ephemeral storage (disk_size), GPUs (limits only)."""
    amounts: dict[str, str] = {}
    if compute.cpus is not None:
        amounts["cpu"] = compute.cpus
    if compute.memory is not None:
        amounts["memory"] = compute.memory
    if compute.disk_size is not None:
        amounts["ephemeral-storage"] = compute.disk_size
    limits: dict[str, Any] = dict(amounts)
    if compute.gpus:
        limits[GPU_RESOURCE] = str(compute.gpus)
    result: dict[str, Any] = {}
    if amounts:
        result["requests"] = amounts
    if limits:
        result["limits"] = limits
    return result


def image_ref(compute: Compute, runtime_image: str | None) -> str:
    if compute.image is not None and compute.image.image_id:
        return compute.image.image_id
    return runtime_image or DEFAULT_RUNTIME_IMAGE


def container(
    name: str, compute: Compute, runtime_image: str | None, options: PodOptions
) -> dict[str, Any]:
    """The pod runtime's container."""
    port_name = "http1" if options.knative else options.port_name
    port = {"name": port_name, "containerPort": RUNTIME_PORT, "protocol": "TCP"}
    # Knative accepts a probe port only when it is the serving port, as here
    probe_get: dict[str, Any] = {"path": "/health", "port": RUNTIME_PORT}
    spec: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image_ref(compute, runtime_image),
        "command": list(options.command),
        "ports": [port],
        "env": runtime_env(name, compute, options),
        "readinessProbe": {"httpGet": probe_get, "periodSeconds": 2, "failureThreshold": 3},
        "volumeMounts": volume_mounts(compute),
    }
    if compute.image_pull_policy is not None:
        spec["imagePullPolicy"] = compute.image_pull_policy
    res = resources(compute)
    if res:
        spec["resources"] = res
    return spec


def volume_mounts(compute: Compute) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"name": _ROOT_VOLUME, "mountPath": POD_ROOT},
        {"name": _LAUNCH_VOLUME, "mountPath": LAUNCH_DIR, "readOnly": True},
    ]
    if compute.shared_memory is not None:
        mounts.append({"name": _SHM_VOLUME, "mountPath": "/dev/shm"})
    for secret in compute.secrets:
        if _mounts_secret(secret):
            mounts.append(
                {
                    "name": _secret_volume(secret),
                    "mountPath": f"{SECRETS_DIR}/{secret.name}",
                    "readOnly": True,
                }
            )
    for volume in compute.volumes:
        mounts.append({"name": volume.name, "mountPath": volume.mount_path})
    return mounts


def volumes(name: str, compute: Compute) -> list[dict[str, Any]]:
    """The pod's volumes: the runtime's root and launch, shared memory, Secrets, claims."""
    result: list[dict[str, Any]] = [
        {"name": _ROOT_VOLUME, "emptyDir": {}},
        {
            "name": _LAUNCH_VOLUME,
            "configMap": {"name": launch_config_name(name), "optional": True},
        },
    ]
    if compute.shared_memory is not None:
        result.append(
            {
                "name": _SHM_VOLUME,
                "emptyDir": {"medium": "Memory", "sizeLimit": compute.shared_memory},
            }
        )
    for secret in compute.secrets:
        if _mounts_secret(secret):
            result.append({"name": _secret_volume(secret), "secret": {"secretName": secret.name}})
    own = {v["name"] for v in result}
    for volume in compute.volumes:
        if volume.name in own or volume.name.startswith("hotpod-"):
            raise SpecError(
                f"Volume {volume.name!r}: names starting with 'hotpod-' are hotpod's own; "
                "rename the volume"
            )
        result.append(
            {"name": volume.name, "persistentVolumeClaim": {"claimName": volume.claim_name}}
        )
    return result


def node_selector(compute: Compute) -> dict[str, str]:
    selector = dict(compute.node_selector)
    if compute.gpu_type is not None and GPU_PRODUCT_LABEL not in selector:
        selector.update(check_label_map({GPU_PRODUCT_LABEL: compute.gpu_type}, "gpu_type"))
    return selector


def pod_spec(
    name: str, compute: Compute, runtime_image: str | None, options: PodOptions
) -> dict[str, Any]:
    """The pod spec: the runtime container, its volumes, and where it may be scheduled."""
    spec: dict[str, Any] = {"containers": [container(name, compute, runtime_image, options)]}
    if compute.service_account is not None:
        spec["serviceAccountName"] = compute.service_account
    selector = node_selector(compute)
    if selector:
        spec["nodeSelector"] = selector
    if compute.gpus:
        spec["tolerations"] = [dict(GPU_TOLERATION)]
    spec["volumes"] = volumes(name, compute)
    return spec


def pod_template(
    name: str,
    compute: Compute,
    runtime_image: str | None,
    options: PodOptions,
    *,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A ``PodTemplateSpec``: labels (the selector's included), annotations and the spec."""
    meta: dict[str, Any] = {"labels": object_labels(name, compute)}
    notes = {**dict(compute.annotations), **(annotations or {})}
    if notes:
        meta["annotations"] = notes
    return {"metadata": meta, "spec": pod_spec(name, compute, runtime_image, options)}


__all__ = [
    "CONTAINER_NAME",
    "DEFAULT_RUNTIME_IMAGE",
    "GPU_RESOURCE",
    "GPU_TOLERATION",
    "LAUNCH_DIR",
    "LAUNCH_KEY",
    "MANAGED_BY",
    "POD_ROOT",
    "PodOptions",
    "RUNTIME_COMMAND",
    "RUNTIME_PORT",
    "SECRETS_DIR",
    "SERVICE_LABEL",
    "container",
    "image_ref",
    "launch_config_name",
    "node_selector",
    "object_labels",
    "object_meta",
    "pod_spec",
    "pod_template",
    "resources",
    "runtime_env",
    "selector_labels",
    "token_secret_name",
    "volume_mounts",
    "volumes",
]
