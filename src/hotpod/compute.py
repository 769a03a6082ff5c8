"""``Compute``: a pool of pods, as an immutable value.

Three ways to describe the pool:

- resources (``Compute(cpus="4", gpus="1", memory="16Gi", replicas=3, image=...)``): hotpod
  creates the pods (a Deployment and a Service on Kubernetes, processes locally);
- ``Compute(selector={"app": "my-training-jobset"})``: pods that already exist and carry those
  labels; resources may be left out (a cluster backend's case: the local backend refuses it);
- ``Compute.from_manifest(manifest, selector=..., endpoint=...)``: a workload you bring (a
  Deployment, a Kubeflow PyTorchJob, a JobSet...), applied as given on a cluster (the local
  backend only takes its replica count).

``template_dict()`` is everything that defines the pod template, so a change in it means the
pods must be replaced, while a change of ``replicas`` only scales.

Two copy-on-write additions describe how the pool behaves: ``compute.autoscale(...)`` (an
:class:`~hotpod.autoscale.Autoscale`: a Knative Service on Kubernetes) and
``compute.distribute(kind, ...)`` (a :class:`~hotpod.distribute.Distribute`: pytorch, jax, ray
or spmd). ``compute.manifests(name)`` shows the Kubernetes manifests a deploy would apply.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hotpod._quantity import (
    FrozenMap,
    check_annotation_map,
    check_dns_label,
    check_dns_subdomain,
    check_env_map,
    check_label_map,
    cpu_quantity,
    memory_quantity,
    parse_cpu,
    parse_memory,
    short_repr,
    spec_error,
)
from hotpod.autoscale import Autoscale
from hotpod.distribute import Distribute
from hotpod.endpoint import Endpoint
from hotpod.errors import SpecError
from hotpod.image import Image
from hotpod.secret import Secret
from hotpod.volume import Volume

IMAGE_PULL_POLICIES = ("Always", "IfNotPresent", "Never")

#: Constructor arguments and their defaults, in signature order (``replace`` and ``__repr__``).
_DEFAULTS: dict[str, Any] = {
    "cpus": None,
    "gpus": None,
    "memory": None,
    "disk_size": None,
    "replicas": 1,
    "node_selector": None,
    "secrets": None,
    "volumes": None,
    "annotations": None,
    "labels": None,
    "image": None,
    "selector": None,
    "env_vars": None,
    "namespace": "default",
    "gpu_type": None,
    "shared_memory": None,
    "service_account": None,
    "image_pull_policy": None,
    "launch_timeout": 300,
}


def _count(value: object, arg: str, *, allow_str: bool) -> int:
    if allow_str and isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        expected = "a whole number >= 0" + (" like 1 or '1'" if allow_str else " like 1 or 3")
        raise spec_error(arg, value, expected)
    return value


def _list_of(value: object, arg: str, example: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise spec_error(arg, value, f"a list like {example}")
    return list(value)


def _secrets(value: object) -> tuple[Secret, ...]:
    example = "[Secret('hf-token', env_var='HF_TOKEN')] or ['hf-token']"
    result: list[Secret] = []
    for item in _list_of(value, "secrets", example):
        if isinstance(item, str):
            item = Secret(item)
        if not isinstance(item, Secret):
            raise spec_error("secrets", value, f"a list of Secret or secret names like {example}")
        result.append(item)
    return tuple(result)


def _volumes(value: object) -> tuple[Volume, ...]:
    example = "[Volume(name='data', mount_path='/data')]"
    result: list[Volume] = []
    for item in _list_of(value, "volumes", example):
        if not isinstance(item, Volume):
            raise spec_error("volumes", value, f"a list of Volume like {example}")
        for other in result:
            if other.name == item.name or other.mount_path == item.mount_path:
                raise SpecError(
                    f"volumes: {other!r} and {item!r} share a name or a mount_path; "
                    "give each volume its own"
                )
        result.append(item)
    return tuple(result)


def _map(value: object, check: Any, arg: str) -> FrozenMap[str, str]:
    return FrozenMap() if value is None else FrozenMap(check(value, arg))


def _manifest_replicas(manifest: Mapping[str, Any]) -> int:
    """The number of pods a manifest asks for, best effort; 1 when it cannot tell."""

    def num(value: Any, default: int = 1) -> int:
        return value if isinstance(value, int) and not isinstance(value, bool) else default

    spec = manifest.get("spec")
    if not isinstance(spec, Mapping):
        return 1
    kind = manifest.get("kind")
    if kind == "JobSet" and isinstance(spec.get("replicatedJobs"), list):
        total = 0
        for job in spec["replicatedJobs"]:
            if not isinstance(job, Mapping):
                continue
            template = job.get("template")
            job_spec = template.get("spec") if isinstance(template, Mapping) else None
            parallelism = num(job_spec.get("parallelism")) if isinstance(job_spec, Mapping) else 1
            total += num(job.get("replicas")) * parallelism
        return total
    for key, value in spec.items():  # PyTorchJob, TFJob, MPIJob...: xxxReplicaSpecs
        if key.endswith("ReplicaSpecs") and isinstance(value, Mapping):
            return sum(num(s.get("replicas")) for s in value.values() if isinstance(s, Mapping))
    if kind == "RayCluster":
        groups = spec.get("workerGroupSpecs")
        workers = groups if isinstance(groups, list) else []
        return 1 + sum(num(g.get("replicas")) for g in workers if isinstance(g, Mapping))
    if "replicas" in spec:
        return num(spec["replicas"])
    if kind == "Job":
        return num(spec.get("parallelism"))
    return 1


def _strip_replicas(manifest: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``manifest`` without the replica counts ``_manifest_replicas`` reads."""
    stripped = copy.deepcopy(manifest)
    spec = stripped.get("spec")
    if not isinstance(spec, dict):
        return stripped
    spec.pop("replicas", None)
    for key, value in spec.items():
        if key.endswith("ReplicaSpecs") and isinstance(value, dict):
            for replica_spec in value.values():
                if isinstance(replica_spec, dict):
                    replica_spec.pop("replicas", None)
    for name in ("replicatedJobs", "workerGroupSpecs"):
        for job in spec.get(name) or []:
            if isinstance(job, dict):
                job.pop("replicas", None)
    return stripped


@dataclass(frozen=True, init=False, repr=False)
class Compute:
    """A pool of pods: their resources, environment, storage, image and number.

    Quantities are kept in Kubernetes spelling (``cpus="500m"``, ``memory="16Gi"``; numbers
    become ``"2"`` / ``"500m"`` / bytes) and exposed as numbers by ``cpu_cores``,
    ``memory_bytes``, ``gpu_count``. Maps are read-only :class:`FrozenMap` (empty when not
    given; only ``selector`` is ``None`` when not given); lists are tuples.
    """

    cpus: str | None
    gpus: int | None
    memory: str | None
    disk_size: str | None
    replicas: int
    node_selector: FrozenMap[str, str]
    secrets: tuple[Secret, ...]
    volumes: tuple[Volume, ...]
    annotations: FrozenMap[str, str]
    labels: FrozenMap[str, str]
    image: Image | None
    selector: FrozenMap[str, str] | None
    env_vars: FrozenMap[str, str]
    namespace: str
    gpu_type: str | None
    shared_memory: str | None
    service_account: str | None
    image_pull_policy: str | None
    launch_timeout: float
    _manifest_json: str | None
    _endpoint: Endpoint | None
    _autoscale: Autoscale | None
    _distribute: Distribute | None

    def __init__(
        self,
        cpus: str | float | None = None,
        gpus: str | int | None = None,
        memory: str | int | None = None,
        disk_size: str | int | None = None,
        replicas: int = 1,
        *,
        node_selector: Mapping[str, str] | None = None,
        secrets: Iterable[Secret | str] | None = None,
        volumes: Iterable[Volume] | None = None,
        annotations: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        image: Image | None = None,
        selector: Mapping[str, str] | None = None,
        env_vars: Mapping[str, Any] | None = None,
        namespace: str = "default",
        gpu_type: str | None = None,
        shared_memory: str | int | None = None,
        service_account: str | None = None,
        image_pull_policy: str | None = None,
        launch_timeout: float = 300,
    ) -> None:
        if image is not None and not isinstance(image, Image):
            raise spec_error("image", image, "an Image like Image('python:3.11'), or None")
        if gpu_type is not None and (
            not isinstance(gpu_type, str)
            or not gpu_type.strip()
            or any(c.isspace() for c in gpu_type.strip())
        ):
            raise spec_error("gpu_type", gpu_type, "a GPU model like 'A100' or 'H100', or None")
        if image_pull_policy is not None and image_pull_policy not in IMAGE_PULL_POLICIES:
            raise spec_error(
                "image_pull_policy", image_pull_policy, f"one of {', '.join(IMAGE_PULL_POLICIES)}"
            )
        if (
            not isinstance(launch_timeout, (int, float))
            or isinstance(launch_timeout, bool)
            or not math.isfinite(launch_timeout)
            or launch_timeout <= 0
        ):
            raise spec_error("launch_timeout", launch_timeout, "a number of seconds > 0, like 300")

        values: dict[str, Any] = {
            "cpus": None if cpus is None else cpu_quantity(cpus, "cpus"),
            "gpus": None if gpus is None else _count(gpus, "gpus", allow_str=True),
            "memory": None if memory is None else memory_quantity(memory, "memory"),
            "disk_size": None if disk_size is None else memory_quantity(disk_size, "disk_size"),
            "replicas": _count(replicas, "replicas", allow_str=False),
            "node_selector": _map(node_selector, check_label_map, "node_selector"),
            "secrets": _secrets(secrets),
            "volumes": _volumes(volumes),
            "annotations": _map(annotations, check_annotation_map, "annotations"),
            "labels": _map(labels, check_label_map, "labels"),
            "image": image,
            "selector": None if selector is None else _map(selector, check_label_map, "selector"),
            "env_vars": _map(env_vars, check_env_map, "env_vars"),
            "namespace": check_dns_label(namespace, "namespace"),
            "gpu_type": None if gpu_type is None else gpu_type.strip(),
            "shared_memory": (
                None if shared_memory is None else memory_quantity(shared_memory, "shared_memory")
            ),
            "service_account": (
                None
                if service_account is None
                else check_dns_subdomain(service_account, "service_account")
            ),
            "image_pull_policy": image_pull_policy,
            "launch_timeout": launch_timeout,
            "_manifest_json": None,
            "_endpoint": None,
            "_autoscale": None,
            "_distribute": None,
        }
        if values["selector"] is not None and not values["selector"]:
            raise spec_error("selector", selector, "a non-empty dict like {'app': 'workers'}")
        for key, value in values.items():
            object.__setattr__(self, key, value)

    # -- bring your own ------------------------------------------------------------------------

    @classmethod
    def from_manifest(
        cls,
        manifest: Mapping[str, Any],
        selector: Mapping[str, str] | None = None,
        endpoint: Endpoint | None = None,
        **overrides: Any,
    ) -> Compute:
        """A pool from a workload manifest you bring (Deployment, PyTorchJob, JobSet, ...).

        The manifest is deep-copied and must be JSON-like with ``apiVersion`` and ``kind``.
        ``selector`` picks its pods by label, ``endpoint`` says how to reach them. ``replicas``
        is read from the manifest (best effort) unless given in ``overrides``, which take any
        other constructor argument too.
        """
        if not isinstance(manifest, Mapping):
            raise spec_error("manifest", manifest, "a dict with 'apiVersion' and 'kind'")
        for key in ("apiVersion", "kind"):
            if not isinstance(manifest.get(key), str) or not manifest[key]:
                raise SpecError(
                    f"manifest: {key!r} is missing or not a string (got "
                    f"{short_repr(manifest.get(key))}); expected a Kubernetes object like "
                    "{'apiVersion': 'apps/v1', 'kind': 'Deployment', 'metadata': ..., 'spec': ...}"
                )
        try:
            text = json.dumps(manifest, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise SpecError(
                f"manifest: {exc}; expected plain data (dicts, lists, strings, numbers, bools, "
                "None), as yaml.safe_load returns"
            ) from exc
        if endpoint is not None and not isinstance(endpoint, Endpoint):
            raise spec_error("endpoint", endpoint, "an Endpoint like Endpoint(url='svc:8080')")
        overrides.setdefault("replicas", _manifest_replicas(manifest))
        compute = cls(selector=selector, **overrides)
        object.__setattr__(compute, "_manifest_json", text)
        object.__setattr__(compute, "_endpoint", endpoint)
        return compute

    @property
    def manifest(self) -> dict[str, Any] | None:
        """A fresh copy of the manifest given to ``from_manifest``, else ``None``."""
        return None if self._manifest_json is None else json.loads(self._manifest_json)

    @property
    def endpoint(self) -> Endpoint | None:
        return self._endpoint

    # -- numbers -------------------------------------------------------------------------------

    @property
    def cpu_cores(self) -> float | None:
        return None if self.cpus is None else parse_cpu(self.cpus, "cpus")

    @property
    def memory_bytes(self) -> int | None:
        return None if self.memory is None else parse_memory(self.memory, "memory")

    @property
    def disk_bytes(self) -> int | None:
        return None if self.disk_size is None else parse_memory(self.disk_size, "disk_size")

    @property
    def shared_memory_bytes(self) -> int | None:
        if self.shared_memory is None:
            return None
        return parse_memory(self.shared_memory, "shared_memory")

    @property
    def gpu_count(self) -> int:
        return self.gpus or 0

    @property
    def uses_existing_pods(self) -> bool:
        """True for ``Compute(selector=...)`` without a manifest: hotpod creates no pods."""
        return self.selector is not None and self._manifest_json is None

    # -- copies and views ----------------------------------------------------------------------

    def _arguments(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _DEFAULTS}

    def replace(self, **changes: Any) -> Compute:
        """A copy with ``changes`` applied and validated; a manifest and endpoint carry over."""
        unknown = sorted(set(changes) - set(_DEFAULTS))
        if unknown:
            raise TypeError(f"Compute.replace() got unexpected keyword argument(s): {unknown}")
        new = Compute(**{**self._arguments(), **changes})
        object.__setattr__(new, "_manifest_json", self._manifest_json)
        object.__setattr__(new, "_endpoint", self._endpoint)
        object.__setattr__(new, "_autoscale", self._autoscale)
        object.__setattr__(new, "_distribute", self._distribute)
        return new

    # -- how the pool behaves --------------------------------------------------------------------

    @property
    def autoscaling(self) -> Autoscale | None:
        """The :class:`Autoscale` given by :meth:`autoscale`, else ``None``."""
        return self._autoscale

    @property
    def distribution(self) -> Distribute | None:
        """The :class:`Distribute` given by :meth:`distribute`, else ``None``."""
        return self._distribute

    def _check_creates_pods(self, method: str) -> None:
        if self._manifest_json is not None or self.selector is not None:
            raise SpecError(
                f"{method}() applies to pools hotpod creates; this Compute uses "
                + ("a manifest you bring" if self._manifest_json is not None else "existing pods")
                + ": configure scaling or distribution in that workload instead"
            )

    def autoscale(self, **settings: Any) -> Compute:
        """A copy that autoscales with its traffic, calls going to one pod each (load-balanced):
        on Kubernetes a Knative Service; on the local backend a router in the local controller
        applies Knative's rule (docs/autoscaling.md). ``replicas`` is not used.

        Takes the fields of :class:`~hotpod.autoscale.Autoscale` (``min_scale``, ``max_scale``,
        ``initial_scale``, ``target``, ``target_utilization``, ``metric``, ``window``,
        ``concurrency``, ``scale_down_delay``, ``scale_to_zero_retention``, ``autoscaler_class``,
        ``progress_deadline``) and the aliases ``min_replicas``, ``max_replicas``,
        ``initial_replicas``, ``scale_to_zero_pod_retention_period`` and
        ``container_concurrency``.
        """
        self._check_creates_pods("autoscale")
        if self._distribute is not None:
            raise SpecError(
                f"autoscale(): this Compute is distributed ({self._distribute!r}); a distributed "
                "pool keeps a fixed set of pods, so it cannot autoscale"
            )
        new = self.replace()
        object.__setattr__(new, "_autoscale", Autoscale.from_kwargs(**settings))
        return new

    def distribute(
        self,
        kind: str,
        workers: int | None = None,
        num_proc: int | None = None,
        port: int | None = None,
    ) -> Compute:
        """A copy whose pods cooperate as ``kind`` ("spmd", "pytorch", "jax" or "ray").

        ``workers`` (the number of pods) sets ``replicas``; ``num_proc`` is the processes per
        pod, ``port`` the rendezvous port (each framework's usual one by default).
        """
        self._check_creates_pods("distribute")
        if self._autoscale is not None:
            raise SpecError(
                "distribute(): this Compute autoscales; a distributed pool keeps a fixed set of "
                "pods, so build it from a Compute without autoscale()"
            )
        spec = Distribute(kind, workers=workers, num_proc=num_proc, port=port)
        new = self.replace() if workers is None else self.replace(replicas=workers)
        object.__setattr__(new, "_distribute", spec)
        return new

    def pod_names(self, service: str | None = None) -> list[str]:
        """The running pods of ``service`` in rank order, as the backend sees them now.

        ``service`` defaults to the service this Compute was last deployed as (``.to()``
        records it on the Compute it was given), or, in a pod, the pod's own service.
        """
        import os

        name = service or self.__dict__.get("_service_name") or os.environ.get("HOTPOD_SERVICE")
        if not name:
            raise SpecError(
                "pod_names(): this Compute has not been deployed: call kt.fn(f).to(compute) "
                "first, or name the service: compute.pod_names('my-service')"
            )
        from hotpod.backends import get_backend

        pods = sorted(get_backend().get(name).pods, key=lambda p: p.rank)
        return [p.name for p in pods if p.status == "running"]

    def _deployed_as(self, service: str) -> None:
        """Remember the service ``.to()`` deployed on this Compute (not part of its value)."""
        object.__setattr__(self, "_service_name", service)

    def manifests(self, name: str, *, runtime_image: str | None = None) -> str:
        """The Kubernetes manifests a deploy of service ``name`` would apply, as YAML text."""
        from hotpod.k8s import compile_manifests, to_yaml

        return to_yaml(compile_manifests(name, self, runtime_image=runtime_image))

    def template_dict(self) -> dict[str, Any]:
        """What defines the pod template, JSON-serialisable: a change here replaces the pods.

        Leaves out ``replicas`` (and replica counts inside a manifest), the image's setup steps
        (applied live), the namespace, the endpoint and ``launch_timeout``. Secrets appear by
        name, env_var and source only: their values are read at deploy time.
        """

        manifest = self.manifest
        return {
            "cpus": self.cpus,
            "gpus": self.gpus,
            "gpu_type": self.gpu_type,
            "memory": self.memory,
            "disk_size": self.disk_size,
            "shared_memory": self.shared_memory,
            "image_id": None if self.image is None else self.image.image_id,
            "image_pull_policy": self.image_pull_policy,
            "env_vars": dict(self.env_vars),
            "secrets": [
                {"name": s.name, "env_var": s.env_var, "source": s.source, "path": s.path}
                for s in self.secrets
            ],
            "volumes": [v.to_dict() for v in self.volumes],
            "node_selector": dict(self.node_selector),
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "selector": None if self.selector is None else dict(self.selector),
            "service_account": self.service_account,
            "manifest": None if manifest is None else _strip_replicas(manifest),
            # only when set, so that the hash of a Compute without them stays what it was
            **({"autoscale": self._autoscale.to_dict()} if self._autoscale else {}),
            **({"distribute": self._distribute.to_dict()} if self._distribute else {}),
        }

    def template_hash(self) -> str:
        """A sha256 hex digest of ``template_dict()`` (canonical JSON)."""
        text = json.dumps(self.template_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-serialisable (secrets without their values)."""
        data = {
            name: dict(value) if isinstance(value, FrozenMap) else value
            for name, value in self._arguments().items()
        }
        data["secrets"] = [s.to_dict() for s in self.secrets]
        data["volumes"] = [v.to_dict() for v in self.volumes]
        data["image"] = None if self.image is None else self.image.to_dict()
        data["manifest"] = self.manifest
        data["endpoint"] = None if self._endpoint is None else self._endpoint.to_dict()
        data["autoscale"] = None if self._autoscale is None else self._autoscale.to_dict()
        data["distribute"] = None if self._distribute is None else self._distribute.to_dict()
        return data

    def __repr__(self) -> str:
        parts = [
            f"{name}={list(value) if isinstance(value, tuple) else value!r}"
            for name, value in self._arguments().items()
            if value != _DEFAULTS[name] and value not in ((), {})
        ]
        if self._manifest_json is not None:
            manifest = self.manifest or {}
            name = (manifest.get("metadata") or {}).get("name")
            parts.append(f"manifest=<{manifest['kind']}{f' {name}' if name else ''}>")
        if self._endpoint is not None:
            parts.append(f"endpoint={self._endpoint!r}")
        if self._autoscale is not None:
            parts.append(f"autoscale={self._autoscale!r}")
        if self._distribute is not None:
            parts.append(f"distribute={self._distribute!r}")
        return f"Compute({', '.join(parts)})"


__all__ = ["IMAGE_PULL_POLICIES", "Compute"]
