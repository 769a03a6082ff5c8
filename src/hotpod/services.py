"""Services that already run: look them up, list, describe, read logs, tear down.

These are the functions the CLI is a thin layer over.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from hotpod.backends import ServiceInfo, get_backend
from hotpod.client import CallOptions, PodClient
from hotpod.config import settings
from hotpod.module import RemoteCls, RemoteFn


def lookup(name: str) -> RemoteFn[..., Any] | RemoteCls[Any]:
    """A handle to the running service ``name`` (raises ServiceNotFoundError)."""
    info = get_backend().get(name)
    client = PodClient.shared(info.name, info.token)
    if info.meta.get("kind") == "cls":
        return RemoteCls(info, client, CallOptions())
    return RemoteFn(info, client, CallOptions())


def list_services() -> list[ServiceInfo]:
    """Every service of the current backend."""
    return get_backend().list()


def describe(name: str) -> dict[str, Any]:
    """A service with its pods' live state (ready, launch id) as plain data."""
    info = get_backend().get(name)
    client = PodClient.shared(info.name, info.token)
    pods = []
    for pod in info.pods:
        health = client.health(pod) or {}
        pods.append(
            {
                "name": pod.name,
                "rank": pod.rank,
                "status": pod.status,
                "ready": bool(health.get("ready")),
                "launch_id": health.get("launch_id"),
                "url": pod.url,
                "pid": pod.pid,
                "restarts": pod.restarts,
                "last_exit": pod.last_exit,
                "log": pod.log_path,
            }
        )
    return {
        "name": info.name,
        "kind": info.meta.get("kind", "fn"),
        "code": f"{info.meta.get('module')}:{info.meta.get('qualname')}",
        "backend": get_backend().name,
        "replicas": info.replicas,
        "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.created_at)),
        "labels": info.labels,
        "resources": {
            k: info.template.get(k) for k in ("cpus", "memory", "gpus") if info.template.get(k)
        },
        "pods": pods,
    }


def logs(
    name: str, pod: str | None = None, follow: bool = False, tail: int | None = None
) -> Iterator[tuple[str, str]]:
    """(pod, line) pairs from the service's pod logs; ``follow`` keeps reading new lines."""
    return get_backend().logs(name, pod=pod, follow=follow, tail=tail)


def teardown(name: str | None = None, *, all: bool = False) -> list[str]:
    """Delete one service (``name``) or every service (``all=True``); returns what was deleted.

    ``all=True`` also stops the local controller, so no hotpod process is left running. On a pod
    this does nothing (like ``.to()``, so that a module that tears down at import time is safe to
    import there) and returns ``[]``.
    """
    if settings().in_pod:
        return []
    backend = get_backend()
    if all:
        names = backend.teardown_all()
        stop = getattr(backend, "stop_controller", None)
        if stop is not None:
            stop()
        return names
    if name is None:
        raise ValueError("teardown needs a service name, or all=True")
    return [name] if backend.teardown(name) else []
