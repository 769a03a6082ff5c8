"""hotpod: run ordinary Python functions and classes on a pool of pods, call them like local code.

    import hotpod as kt

    remote_train = kt.fn(train).to(kt.Compute(cpus="0.5", replicas=3))
    results = remote_train(data, epochs=10)   # one result per pod, in rank order

Names are imported lazily so that ``import hotpod`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "App": "hotpod.module",
    "BroadcastError": "hotpod.errors",
    "CallError": "hotpod.errors",
    "CallOptions": "hotpod.client",
    "CallTimeoutError": "hotpod.errors",
    "Cls": "hotpod.module",
    "Compute": "hotpod.compute",
    "DeployError": "hotpod.errors",
    "Endpoint": "hotpod.endpoint",
    "Fn": "hotpod.module",
    "HotpodError": "hotpod.errors",
    "Image": "hotpod.image",
    "PodTerminatedError": "hotpod.errors",
    "PodUnreachableError": "hotpod.errors",
    "RemoteApp": "hotpod.module",
    "RemoteCls": "hotpod.module",
    "RemoteError": "hotpod.errors",
    "RemoteFn": "hotpod.module",
    "ResourceUnavailableError": "hotpod.errors",
    "Results": "hotpod.results",
    "Secret": "hotpod.secret",
    "ServiceNotFoundError": "hotpod.errors",
    "SpecError": "hotpod.errors",
    "Volume": "hotpod.volume",
    "WorkerMembershipChanged": "hotpod.errors",
    "app": "hotpod.module",
    "cls": "hotpod.module",
    "fn": "hotpod.module",
    "list_services": "hotpod.services",
    "lookup": "hotpod.services",
    "teardown": "hotpod.services",
}

__all__ = [
    "App",
    "BroadcastError",
    "CallError",
    "CallOptions",
    "CallTimeoutError",
    "Cls",
    "Compute",
    "DeployError",
    "Endpoint",
    "Fn",
    "HotpodError",
    "Image",
    "PodTerminatedError",
    "PodUnreachableError",
    "RemoteApp",
    "RemoteCls",
    "RemoteError",
    "RemoteFn",
    "ResourceUnavailableError",
    "Results",
    "Secret",
    "ServiceNotFoundError",
    "SpecError",
    "Volume",
    "WorkerMembershipChanged",
    "__version__",
    "app",
    "cls",
    "fn",
    "list_services",
    "lookup",
    "teardown",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hotpod' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from hotpod.client import CallOptions
    from hotpod.compute import Compute
    from hotpod.endpoint import Endpoint
    from hotpod.errors import (
        BroadcastError,
        CallError,
        CallTimeoutError,
        DeployError,
        HotpodError,
        PodTerminatedError,
        PodUnreachableError,
        RemoteError,
        ResourceUnavailableError,
        ServiceNotFoundError,
        SpecError,
        WorkerMembershipChanged,
    )
    from hotpod.image import Image
    from hotpod.module import App, Cls, Fn, RemoteApp, RemoteCls, RemoteFn, app, cls, fn
    from hotpod.results import Results
    from hotpod.secret import Secret
    from hotpod.services import list_services, lookup, teardown
    from hotpod.volume import Volume
