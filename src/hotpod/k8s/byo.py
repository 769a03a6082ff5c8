"""``Compute.from_manifest``: the workload you bring, with hotpod's pod runtime merged in.

Every pod template in the manifest (a Deployment's, StatefulSet's or Job's ``spec.template``, each
replica type's of a Kubeflow PyTorchJob, each replicated job's of a JobSet, and any other object
that nests ``PodTemplateSpec``\\s) gets, in its first container:

- the runtime's command (``python -m hotpod.runtime.supervisor``); a ``command``/``args`` it had
  are kept in the pod annotation ``hotpod.dev/replaced-command`` (JSON), never dropped silently;
- the Compute's image if it has one, else the container's own;
- the runtime's environment, port (``hotpod``), readiness probe on ``/health`` and volumes, after
  what the container already has (a variable, mount or volume of the same name is replaced);
- the Compute's resources, node selector, GPU toleration, service account, labels and annotations,
  merged over the manifest's.

The pods also get hotpod's labels, so that a ClusterIP Service named after the service reaches
them (or the Compute's ``selector``, when given). ``replicas`` is written back into a Deployment's
or StatefulSet's ``spec.replicas``; other kinds keep their own counts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from hotpod.compute import Compute
from hotpod.errors import SpecError
from hotpod.k8s.pod import (
    GPU_TOLERATION,
    RUNTIME_COMMAND,
    PodOptions,
    container,
    node_selector,
    object_labels,
    resources,
    selector_labels,
    volumes,
)
from hotpod.k8s.service import service

REPLACED_COMMAND = "hotpod.dev/replaced-command"
_PORT_NAME = "hotpod"


def pod_templates(obj: Any) -> Iterator[dict[str, Any]]:
    """Every ``PodTemplateSpec`` nested in ``obj``: a dict whose ``spec`` has ``containers``."""
    if isinstance(obj, dict):
        spec = obj.get("spec")
        if isinstance(spec, dict) and isinstance(spec.get("containers"), list):
            yield obj
            return
        for value in obj.values():
            yield from pod_templates(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from pod_templates(item)


def _merge_named(
    theirs: list[dict[str, Any]] | None, ours: list[dict[str, Any]], key: str = "name"
) -> list[dict[str, Any]]:
    names = {item[key] for item in ours}
    return [item for item in theirs or [] if item.get(key) not in names] + ours


def _merge_container(
    main: dict[str, Any], ours: dict[str, Any], compute: Compute
) -> dict[str, Any] | None:
    """Merge the runtime container ``ours`` into ``main``; return the command replaced."""
    replaced: dict[str, Any] = {k: main.pop(k) for k in ("command", "args") if k in main}
    main["command"] = list(RUNTIME_COMMAND)
    if compute.image is not None or not main.get("image"):
        main["image"] = ours["image"]
    main["env"] = _merge_named(main.get("env"), ours["env"])
    ports = main.get("ports") or []
    if not any(p.get("containerPort") == ours["ports"][0]["containerPort"] for p in ports):
        main["ports"] = [*ports, *ours["ports"]]
    main["readinessProbe"] = ours["readinessProbe"]
    mounts = [
        m
        for m in main.get("volumeMounts") or []
        if m.get("mountPath") not in {o["mountPath"] for o in ours["volumeMounts"]}
    ]
    main["volumeMounts"] = _merge_named(mounts, ours["volumeMounts"])
    res = resources(compute)
    if res:
        merged = main.setdefault("resources", {})
        for part, amounts in res.items():
            merged[part] = {**merged.get(part, {}), **amounts}
    if "imagePullPolicy" in ours:
        main["imagePullPolicy"] = ours["imagePullPolicy"]
    return replaced or None


def _merge_template(
    template: dict[str, Any], name: str, compute: Compute, runtime_image: str | None
) -> None:
    spec = template["spec"]
    containers = spec["containers"]
    if not containers or not isinstance(containers[0], dict):
        raise SpecError(
            "manifest: a pod template has no containers; give it one for hotpod's runtime to run in"
        )
    ours = container(name, compute, runtime_image, PodOptions(port_name=_PORT_NAME))
    replaced = _merge_container(containers[0], ours, compute)
    spec["volumes"] = _merge_named(spec.get("volumes"), volumes(name, compute))
    selector = node_selector(compute)
    if selector:
        spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **selector}
    if compute.gpus:
        tolerations = spec.get("tolerations") or []
        if GPU_TOLERATION not in tolerations:
            spec["tolerations"] = [*tolerations, dict(GPU_TOLERATION)]
    if compute.service_account is not None:
        spec["serviceAccountName"] = compute.service_account
    meta = template.setdefault("metadata", {})
    meta["labels"] = {**(meta.get("labels") or {}), **object_labels(name, compute)}
    notes = {**(meta.get("annotations") or {}), **dict(compute.annotations)}
    if replaced:
        notes[REPLACED_COMMAND] = json.dumps(replaced, separators=(",", ":"))
    if notes:
        meta["annotations"] = notes


def compile_byo(name: str, compute: Compute, runtime_image: str | None) -> list[dict[str, Any]]:
    """The user's workload with the runtime merged in, and a Service that reaches its pods."""
    manifest = compute.manifest
    assert manifest is not None
    templates = list(pod_templates(manifest))
    if not templates:
        raise SpecError(
            f"manifest: no pod template found in the {manifest['kind']} (a 'template' whose "
            "'spec' has 'containers'); hotpod merges its runtime into one. Supported: "
            "Deployment, StatefulSet, Job, PyTorchJob, JobSet and other workloads with pod templates"
        )
    for template in templates:
        _merge_template(template, name, compute, runtime_image)
    meta = manifest.setdefault("metadata", {})
    meta.setdefault("name", name)
    namespace = meta.get("namespace") or compute.namespace
    meta["namespace"] = namespace
    meta["labels"] = {**(meta.get("labels") or {}), **object_labels(name, compute)}
    if compute.annotations:
        meta["annotations"] = {**(meta.get("annotations") or {}), **dict(compute.annotations)}
    if manifest["kind"] in ("Deployment", "StatefulSet") and isinstance(manifest.get("spec"), dict):
        manifest["spec"]["replicas"] = compute.replicas
    selector = dict(compute.selector) if compute.selector else selector_labels(name)
    return [manifest, service(name, compute, selector, namespace=namespace)]


__all__ = ["REPLACED_COMMAND", "compile_byo", "pod_templates"]
