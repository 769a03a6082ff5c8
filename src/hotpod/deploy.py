"""The deploy flow of ``.to()`` (DESIGN §3): resolve code, sync it, apply the pool, launch.

Every step is cheap when nothing changed: hashes come from a cache, the backend finds the pool
as asked, and pods that already serve the same code and init args keep their worker and state.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

from hotpod import coderef, codesync
from hotpod.backends import Backend, Plan, ServiceInfo, get_backend
from hotpod.client import PodClient
from hotpod.compute import Compute
from hotpod.errors import DeployError, SpecError
from hotpod.imagesync import prepare_steps
from hotpod.progress import Progress

log = logging.getLogger("hotpod")

_LABEL_MAX = 54  # room for "-<rank>" pod names and the "-headless" Service on Kubernetes
#: settings taken from the deploying client's environment: the pod runtime's, and pip's own
#: (``PIP_INDEX_URL``, ``PIP_FIND_LINKS``...), so pip steps install from where this machine does
_PASS_THROUGH = ("HOTPOD_MAX_BODY_BYTES", "HOTPOD_THREADS")
_PASS_THROUGH_PREFIXES = ("PIP_",)


def service_name(name: str) -> str:
    """A function or class name made a valid DNS label (``train_model`` -> ``train-model``)."""
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", name)  # TrainModel -> Train-Model
    out = re.sub(r"[^a-z0-9-]+", "-", name.replace("_", "-").lower()).strip("-")
    out = re.sub(r"-{2,}", "-", out)
    if out and not out[0].isalpha():
        out = f"svc-{out}"
    return out[:_LABEL_MAX].rstrip("-") or "service"


def check_name(name: str) -> str:
    if (
        not isinstance(name, str)
        or not re.fullmatch(r"[a-z]([a-z0-9-]*[a-z0-9])?", name)
        or len(name) > _LABEL_MAX
    ):
        raise SpecError(
            f"name={name!r}: expected a DNS label of at most {_LABEL_MAX} characters: lowercase "
            "letters, digits and '-', starting with a letter (e.g. 'train-model')"
        )
    return name


def pod_template(compute: Compute) -> dict[str, Any]:
    """What defines a pod on this machine: changing it replaces the pods."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k in _PASS_THROUGH or k.startswith(_PASS_THROUGH_PREFIXES)
    }
    env.update(compute.env_vars or {})
    for secret in compute.secrets:
        env.update(secret.resolve())
    tpl = dict(compute.template_dict())
    tpl.update(
        python=sys.executable,
        env=env,
        cpus=compute.cpu_cores,
        memory_bytes=compute.memory_bytes,
        gpus=compute.gpu_count,
        volumes=[{"name": v.claim_name, "mount_path": v.mount_path} for v in compute.volumes],
    )
    if compute.gpu_count:
        from hotpod.backends.local.backend import machine_gpus

        tpl["machine_gpus"] = machine_gpus()
    return tpl


def distribution_spec(compute: Compute, service: ServiceInfo) -> dict[str, Any]:
    """What the pods of a distributed pool need to (re)compute their distribution environment
    (``hotpod.distribute.worker_env``): the kind, the rendezvous port the backend gave the pool
    unless ``port=`` named one, and the pods' addresses in rank order, as the backend knows them.
    """
    dist = compute.distribution
    assert dist is not None
    port = dist.port
    if port is None and dist.kind != "spmd":
        port = service.meta.get("dist_port")
    pods = sorted(service.pods, key=lambda p: p.rank)
    return {
        "kind": dist.kind,
        "port": port,
        "peers": [p.peer for p in pods],
    }


@dataclass
class Deployment:
    service: ServiceInfo
    client: PodClient
    spec: dict[str, Any]
    reloaded: int
    seconds: float
    steps_run: int = 0  # setup steps that ran (on the pod that ran most)
    sync: codesync.SyncResult | None = None  # what the code sync found and sent


def deploy(
    obj: Any,
    kind: str,
    name: str,
    compute: Compute,
    init_args: tuple[tuple, dict] | None = None,
    backend: Backend | None = None,
    ref: coderef.CodeRef | None = None,
    extra: dict[str, Any] | None = None,
) -> Deployment:
    """Deploy ``obj`` (a function or class) as service ``name`` on ``compute``.

    An app (kind ``"app"``) has no object: ``ref`` says which project to sync and ``extra``
    adds its fields (``app``, ``timeout``) to the launch spec.
    """
    t0 = time.perf_counter()
    if not isinstance(compute, Compute):
        raise SpecError(f"compute={compute!r}: expected a hotpod.Compute")
    dist = compute.distribution
    if dist is not None and dist.kind == "ray" and dist.procs_per_pod > 1:  # (every backend)
        raise DeployError(
            f"service {name!r}: distribute('ray', num_proc={dist.num_proc}): a Ray pool runs one "
            "Ray node per pod, which starts Ray's own workers; use num_proc=1 (Ray schedules "
            "tasks on the node's cpus)"
        )
    backend = backend or get_backend()
    if compute.uses_existing_pods and not backend.adopts_pods:
        raise DeployError(
            f"Compute(selector={dict(compute.selector or {})!r}) points at an existing pool of "
            "pods, which the local backend cannot adopt yet; drop selector= to let hotpod start "
            "the pool (e.g. kt.Compute(cpus='1', replicas=2))"
        )
    if compute.manifest is not None and not backend.applies_manifests:
        log.warning(
            "hotpod: the local backend does not apply Kubernetes manifests; it starts %d local "
            "pod(s) with the manifest's replica count and this Compute's env vars instead.",
            compute.replicas,
        )
    ref = ref or coderef.resolve(obj)
    store = backend.store()
    synced = codesync.sync(ref.root, store) if ref.root is not None else None
    manifest = synced.manifest_id if synced is not None else None
    by_value = store.put_bytes(ref.by_value) if ref.by_value is not None else None
    init = None
    if init_args is not None:
        import cloudpickle

        init = store.put_bytes(cloudpickle.dumps(init_args, protocol=5))
    image = compute.image
    image_spec = prepare_steps(image, store)
    plan = Plan(
        name=name,
        replicas=compute.replicas,
        template=pod_template(compute),
        labels=dict(compute.labels or {}),
        meta={
            "kind": kind,
            "qualname": ref.qualname,
            "module": ref.module or ref.script or ("<app>" if kind == "app" else "<by value>"),
        },
        compute=compute,
    )
    backend.check(plan)
    service = backend.apply(plan)
    spec = {
        "launch_id": uuid.uuid4().hex[:12],
        "service": name,
        "kind": kind,
        "code": ref.spec(manifest, by_value),
        "init": init,
        "env": dict(image.env_vars) if image is not None else {},
        "world_size": compute.replicas,
        "image": image_spec,
    }
    spec.update(extra or {})
    if compute.distribution is not None:
        spec["distribute"] = distribution_spec(compute, service)
    if compute.autoscaling is not None:  # pods the autoscaler starts later resume it
        service = dataclasses.replace(backend.set_launch(name, spec), rollout=service.rollout)
    client = PodClient.shared(name, service.token)
    if service.rollout != "unchanged" or any(p.status != "running" for p in service.pods):
        service = dataclasses.replace(
            wait_ready(backend, client, service, compute.launch_timeout), rollout=service.rollout
        )  # (pods that were up answer the launch itself; one that is not is waited for there)
        if compute.distribution is not None:  # the peers as they are now that the pods are up
            spec["distribute"] = distribution_spec(compute, service)
    backend.ship(service, client, spec)  # what the pods lack of the code (when not shared)
    progress = Progress(name, [p.name for p in service.pods])
    try:
        results = client.launch(service.pods, spec, compute.launch_timeout, progress)
    finally:
        progress.close()
    backend.launched(service, spec)  # pods that start later load it (when the backend can)
    for note in sorted({n for r in results for n in r.get("reported", [])}):
        log.warning("hotpod: %s: %s", name, note)
    reloaded = sum(1 for r in results if r.get("reloaded"))
    ran = max((len(r.get("ran", [])) for r in results), default=0)
    return Deployment(service, client, spec, reloaded, time.perf_counter() - t0, ran, synced)


def wait_ready(
    backend: Backend, client: PodClient, service: ServiceInfo, timeout: float
) -> ServiceInfo:
    """Wait until the service has its pods and every pod's server answers; fail early when the
    backend sees a pod that will not come up (``Backend.diagnose``), late on a timeout."""
    deadline = time.monotonic() + timeout
    restarts0 = {p.name: p.restarts for p in service.pods}
    pending = list(service.pods)
    up: set[str] = set()  # pods that answered
    started = time.monotonic()
    next_check = started + 1.0
    next_report = started + 2.0
    fresh = False  # whether `service` is the backend's view since the pods answered
    while True:
        up.update(p.name for p in pending if client.health(p) is not None)
        pending = [p for p in pending if p.name not in up]
        if not pending and len(service.pods) >= service.replicas:
            if fresh:
                break
            # what apply() returned may predate the pods' addresses (a pod answers through the
            # API server's proxy before its IP is read back): the peers come from this view
            service = backend.get(service.name)
            pending = [p for p in service.pods if p.name not in up]
            fresh = True
            continue
        fresh = False
        now = time.monotonic()
        if now > next_check:  # pods appear, go, restart: ask the backend how they are
            service = backend.get(service.name)
            pending = [p for p in service.pods if p.name not in up]
            for p in service.pods:
                restarts0.setdefault(p.name, p.restarts)
            backend.diagnose(service, pending, restarts0, now - started, timeout)
            next_check = now + 1.0
        if now > next_report:
            waiting = ", ".join(f"{p.name} ({p.status})" for p in pending) or "pods to be made"
            print(
                f"hotpod: {service.name!r}: {len(service.pods) - len(pending)}/"
                f"{service.replicas} pods up after {now - started:.0f} s; waiting for {waiting}",
                file=sys.stderr,
                flush=True,
            )
            next_report = now + 5.0
        if now > deadline:
            backend.diagnose(service, pending, restarts0, now - started, timeout)  # (why, if known)
            names = ", ".join(f"{p.name} ({p.status})" for p in pending) or "no pods made yet"
            raise DeployError(
                f"service {service.name!r}: {len(service.pods) - len(pending)}/{service.replicas} "
                f"pods ready after {timeout:g} s; not ready: {names}. "
                f"Run 'hotpod describe {service.name}' and 'hotpod logs {service.name}'."
            )
        time.sleep(0.02)
    return service
