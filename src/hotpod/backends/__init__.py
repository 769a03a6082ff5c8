"""The backend seam: where pods come from.

A :class:`Backend` applies a pool plan, lists services and their pods with endpoints and status,
streams pod logs and tears down. Nothing above this seam branches on which backend is in use.
"""

from __future__ import annotations

from hotpod.backends.base import Backend, Plan, PodInfo, ServiceInfo
from hotpod.config import settings


def get_backend() -> Backend:
    """The backend the settings name (``HOTPOD_BACKEND``, default ``local``)."""
    name = settings().backend
    if name == "local":
        from hotpod.backends.local.backend import LocalBackend

        return LocalBackend(settings())
    raise AssertionError(f"unknown backend {name!r}")  # config validated it already


__all__ = ["Backend", "Plan", "PodInfo", "ServiceInfo", "get_backend"]
