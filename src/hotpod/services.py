"""Services that already run: look them up, list, describe, read logs, watch, tear down.

These are the functions the CLI is a thin layer over.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx

from hotpod import wire
from hotpod.backends import PodInfo, PodShell, PodStats, ServiceInfo, get_backend
from hotpod.client import CallOptions, PodClient
from hotpod.config import settings
from hotpod.loglines import LogFilter, LogLine
from hotpod.module import RemoteApp, RemoteCls, RemoteFn
from hotpod.transport import httpx_transport


def lookup(name: str) -> RemoteFn[..., Any] | RemoteCls[Any] | RemoteApp:
    """A handle to the running service ``name`` (raises ServiceNotFoundError)."""
    info = get_backend().get(name)
    client = PodClient.shared(info.name, info.token)
    kind = info.meta.get("kind")
    if kind == "cls":
        return RemoteCls(info, client, CallOptions())
    if kind == "app":
        return RemoteApp(info, client)
    return RemoteFn(info, client, CallOptions())


def list_services() -> list[ServiceInfo]:
    """Every service of the current backend."""
    return get_backend().list()


def pod_info(info: ServiceInfo, pods: tuple[PodInfo, ...] | None = None) -> list[dict[str, Any]]:
    """What each pod says of itself (``/_hotpod/info``: readiness, launch, setup steps, last
    launch error); ``{}`` for a pod that does not answer."""
    headers = {"Authorization": f"Bearer {info.token}", wire.HEADER_PROTOCOL: wire.PROTOCOL_VERSION}
    out: list[dict[str, Any]] = []
    with httpx.Client(headers=headers, timeout=2, transport=httpx_transport()) as http:
        for pod in info.pods if pods is None else pods:
            try:
                r = http.get(f"{pod.url}/_hotpod/info")
                out.append(r.json() if r.status_code == 200 else {})
            except (httpx.HTTPError, ValueError):
                out.append({})
    return out


def describe(name: str) -> dict[str, Any]:
    """A service with its pods' live state (ready, launch id, setup steps) as plain data."""
    info = get_backend().get(name)
    pods = []
    for pod, live in zip(info.pods, pod_info(info), strict=True):
        pods.append(
            {
                "name": pod.name,
                "rank": pod.rank,
                "status": pod.status,
                "answering": bool(live),
                "ready": bool(live.get("ready")),
                "launch_id": live.get("launch_id"),
                "url": pod.url,
                "metrics": f"{pod.url}/metrics",
                "pid": pod.pid,
                "restarts": pod.restarts,
                "last_exit": pod.last_exit,
                "log": pod.log_path,
                "steps": live.get("steps") or [],
                "launch_error": live.get("launch_error"),
                "app": live.get("app"),  # kt.app: its process, restarts, last exit
            }
        )
    kind = info.meta.get("kind", "fn")
    call = f"kt.lookup({info.name!r})" + (".METHOD(...)" if kind == "cls" else "(...)")
    return {
        "name": info.name,
        "kind": kind,
        "code": f"{info.meta.get('module')}:{info.meta.get('qualname')}",
        "backend": get_backend().name,
        "replicas": info.replicas,
        "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.created_at)),
        "labels": info.labels,
        "resources": {
            k: info.template.get(k) for k in ("cpus", "memory", "gpus") if info.template.get(k)
        },
        "pods": pods,
        "autoscaler": info.meta.get("router"),  # an autoscaled service's router and its state
        "launch_id": next((p["launch_id"] for p in pods if p["launch_id"]), None),
        "call": {
            "python": f"import hotpod as kt; {call}",
            "cli": f"hotpod call {info.name}{' METHOD' if kind == 'cls' else ''} --args '[...]'",
        },
    }


def logs(
    name: str,
    pod: str | None = None,
    follow: bool = False,
    tail: int | None = None,
    since: float | None = None,
    request: str | None = None,
) -> Iterator[LogLine]:
    """The lines of a service's pod logs, whether it runs or not (logs outlive teardown).

    ``since``: only lines from then on (epoch seconds); ``request``: only the lines of that call
    (its request id, or a prefix of it), across pods; ``tail``: each pod's last N lines of
    those; ``follow``: go on printing new lines.
    """
    keep = LogFilter(since, request) if since is not None or request else None
    return get_backend().logs(name, pod=pod, follow=follow, tail=tail, keep=keep)


def purge_logs(name: str) -> bool:
    """Delete the kept logs of a service (emptied if it still runs); False if it had none."""
    return get_backend().purge_logs(name)


def logged_services() -> list[str]:
    """The services whose logs are kept, running or not."""
    return get_backend().logged_services()


def top(name: str | None = None, interval: float = 0.5) -> list[PodStats]:
    """CPU (percent of one core, over ``interval`` seconds) and memory of each pod."""
    return get_backend().top(name, interval)


def shell(name: str, pod: str | None = None) -> PodShell:
    """The working directory and environment of a pod, for a shell in it."""
    return get_backend().shell(name, pod)


def teardown(name: str | None = None, *, all: bool = False, volumes: bool = False) -> list[str]:
    """Delete one service (``name``) or every service (``all=True``); returns what was deleted.
    ``volumes=True`` deletes one service's volume claims too (Kubernetes keeps them otherwise).

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
    return [name] if backend.teardown(name, volumes=volumes) else []
