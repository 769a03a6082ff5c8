"""Calls to an autoscaled pool: each goes to the pool's router, which picks one pod for it.

On the local backend the router lives in the local controller. If the controller was killed,
its routers went with it and a call's connection is refused. The handle then starts the
controller again (``LocalBackend.get`` does, on demand: it takes each router's port back from
``.autoscale.json`` and adopts the pods that still run), reads the service's router afresh,
waits until it answers, and sends the call once more. Only a call that was refused is sent
again: nothing of it left this process. One that broke mid-call is never sent twice.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from hotpod import transport
from hotpod.backends import PodInfo, ServiceInfo, get_backend
from hotpod.client import CallOptions, PodClient
from hotpod.errors import PodUnreachableError

if TYPE_CHECKING:
    from hotpod.module import _Remote

#: how long a controller started again has for its router to answer
ROUTER_WAIT = 10.0


class _Refused(Exception):
    """The router refused the connection: nothing of the call was sent."""


class RouterClient(PodClient):
    """The client of an autoscaled pool's calls. Its one 'pod' is the router, which answers at
    once whenever it runs: a refused connection means its controller is gone, so it is raised
    at once (a pod's client waits for the pod to come back instead)."""

    _shared: dict[tuple[str, str], PodClient] = {}  # (its own: not the pods' clients)

    def retry_delay(
        self,
        exc: Exception,
        retried: bool,
        what: str,
        pod: PodInfo,
        opts: CallOptions,
        start: float,
        deadline: float | None,
    ) -> float:
        if isinstance(exc, transport.Unreachable):
            raise _Refused(str(exc))
        return super().retry_delay(exc, retried, what, pod, opts, start, deadline)

    def _await_pod(
        self,
        pod: PodInfo,
        what: str,
        start: float,
        deadline: float | None,
        need_ready: bool = True,
    ) -> None:
        """(A call to the router after one broke: send it; a refusal says the rest.)"""
        self._suspect.discard(pod.name)


def router_pod(service: ServiceInfo) -> PodInfo | None:
    """An autoscaled service's router, as the one 'pod' its calls go to; None for a service
    whose calls go to its pods."""
    router = service.meta.get("router")
    if not isinstance(router, dict) or not router.get("url"):
        return None
    return PodInfo(f"{service.name}-router", 0, str(router["url"]), "running")


def _client(service: ServiceInfo) -> PodClient:
    return RouterClient.shared(service.name, service.token)


def call(remote: _Remote, method: str, args: tuple, kwargs: dict, opts: CallOptions) -> Any:
    """One call through the service's router; the controller is brought back if it was gone."""
    pod = router_pod(remote._service)
    assert pod is not None
    try:
        return _client(remote._service).call(pod, method, args, kwargs, opts)
    except _Refused as exc:
        pod = revive(remote, pod, exc)
    try:
        return _client(remote._service).call(pod, method, args, kwargs, opts)
    except _Refused as exc:
        raise _down(remote._service, pod, exc) from None


async def acall(remote: _Remote, method: str, args: tuple, kwargs: dict, opts: CallOptions) -> Any:
    """The async twin of :func:`call`."""
    from hotpod import aioclient

    pod = router_pod(remote._service)
    assert pod is not None
    try:
        return await aioclient.call(_client(remote._service), pod, method, args, kwargs, opts)
    except _Refused as exc:
        pod = await asyncio.to_thread(revive, remote, pod, exc)
    try:
        return await aioclient.call(_client(remote._service), pod, method, args, kwargs, opts)
    except _Refused as exc:
        raise _down(remote._service, pod, exc) from None


def revive(remote: _Remote, pod: PodInfo, exc: Exception) -> PodInfo:
    """After the router refused a call: start the controller again (if it is gone), refresh
    the handle's service, and wait until its router answers. Returns the router to call."""
    name = remote._service.name
    service = get_backend().get(name)  # (the local backend starts its controller on demand)
    remote._service = service
    again = router_pod(service)
    if again is None:
        raise PodUnreachableError(
            f"call to {name}: its router at {pod.url} refused the connection ({exc}), and the "
            f"service is no longer autoscaled; get a new handle with kt.lookup({name!r})",
            pod=pod.name,
        )
    client = _client(service)
    deadline = time.monotonic() + ROUTER_WAIT
    while client.health(again) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return again


def _down(service: ServiceInfo, pod: PodInfo, exc: Exception) -> PodUnreachableError:
    from hotpod.config import settings

    log = settings().home / "logs" / "controller.log"
    return PodUnreachableError(
        f"call to {service.name}: its router at {pod.url} refuses connections ({exc}), also "
        f"after the local controller that runs it was started again. Its log ({log}) says "
        f"why; run 'hotpod describe {service.name}' to see the service, and .to() to set it "
        "up again",
        pod=pod.name,
    )
