"""The backend seam: where pods come from.

A :class:`Backend` applies a pool plan, lists services and their pods with endpoints and status,
streams pod logs and tears down. Nothing above this seam branches on which backend is in use.
"""

from __future__ import annotations

import atexit

from hotpod.backends.base import Backend, Plan, PodInfo, PodShell, PodStats, ServiceInfo
from hotpod.config import Settings, settings

_backends: dict[Settings, Backend] = {}


def close_backends() -> None:
    """Close every backend's connections (at exit: nothing is left for the collector)."""
    while _backends:
        _backends.popitem()[1].close()


atexit.register(close_backends)


def get_backend() -> Backend:
    """The backend the settings name (``HOTPOD_BACKEND`` or the config file, default ``local``),
    one per settings."""
    current = settings()
    backend = _backends.get(current)
    if backend is None:
        if current.backend == "kubernetes":  # (imports the Kubernetes client: only when used)
            from hotpod.backends.k8s.backend import KubernetesBackend

            backend = _backends[current] = KubernetesBackend(current)
            return backend
        if current.backend != "local":  # config validated the name already
            raise AssertionError(f"unknown backend {current.backend!r}")
        from hotpod.backends.local.backend import LocalBackend

        backend = _backends[current] = LocalBackend(current)
    return backend


__all__ = [
    "Backend",
    "Plan",
    "PodInfo",
    "PodShell",
    "PodStats",
    "ServiceInfo",
    "close_backends",
    "get_backend",
]
