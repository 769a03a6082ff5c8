"""The Kubernetes Services in front of a pool: ClusterIP for calls, headless for peers."""

from __future__ import annotations

from typing import Any

from hotpod.compute import Compute
from hotpod.k8s.pod import RUNTIME_PORT, object_labels


def headless_name(name: str) -> str:
    """The headless Service of a distributed pool, through which its pods find each other."""
    return f"{name}-headless"


def service(
    name: str,
    compute: Compute,
    selector: dict[str, str],
    *,
    namespace: str | None = None,
    headless: bool = False,
    extra_ports: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A Service selecting ``selector`` on the pod runtime's port (and ``extra_ports``)."""
    meta = {
        "name": headless_name(name) if headless else name,
        "namespace": namespace or compute.namespace,
        "labels": object_labels(name, compute),
    }
    ports = [{"name": "http", "port": RUNTIME_PORT, "targetPort": RUNTIME_PORT, "protocol": "TCP"}]
    spec: dict[str, Any] = {"selector": selector, "ports": ports + (extra_ports or [])}
    if headless:
        spec["clusterIP"] = "None"
        spec["publishNotReadyAddresses"] = True  # peers find each other before they are ready
    else:
        spec["type"] = "ClusterIP"
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}


__all__ = ["headless_name", "service"]
