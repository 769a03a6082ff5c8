"""Which pods a call goes to, and what a call on a distributed pool does when its pods change.

- :func:`select`: the handle option ``workers`` (``None``: every pod; ``"ready"``: the pods
  that run and answer /health as ready; a list of ranks), and ``"ray"`` pools, whose calls go
  to the head alone.
- :func:`restart`: ``with_options(restart=True)``: each pod's supervisor kills the worker and
  starts a fresh one that loads the same launch; the call waits until they serve.
- :class:`Watch`: a broadcast on a pool whose pods meet in collectives (``"pytorch"``,
  ``"jax"``) fails as soon as a pod goes away (:class:`PodTerminatedError`) or the pool's pods
  change (:class:`WorkerMembershipChanged`, from the backend's view of the pool, checked every
  ``interval`` seconds of a long call), without waiting for the others, which would wait in
  their collective forever: their workers are replaced (:func:`abandon`). When a rank raises,
  the others get ``RANK_ERROR_GRACE`` seconds to finish before the same happens to them. The
  sync call runs it over its threads' futures (``watch(futures)``), the async twin over its
  tasks (:meth:`Watch.tasks`): the decisions, :meth:`Watch.step`, are the same.
- :func:`procs`: the processes each pod of a pool runs (``num_proc``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any

from hotpod import wire
from hotpod.backends import Backend, PodInfo, ServiceInfo, get_backend
from hotpod.client import PodClient
from hotpod.distribute import COLLECTIVE_KINDS
from hotpod.errors import (
    CallError,
    DeployError,
    PodTerminatedError,
    PodUnreachableError,
    SpecError,
    WorkerMembershipChanged,
)

#: how often a long broadcast on a collective pool compares the pool's pods with the backend's
INTERVAL = 1.0
#: after one rank raised, how long the others may still take before their workers are replaced
RANK_ERROR_GRACE = 10.0


def kind(service: ServiceInfo) -> str | None:
    """The pool's distribution kind ("spmd", "pytorch", ...), or None."""
    dist = service.template.get("distribute")
    return str(dist.get("kind")) if isinstance(dist, dict) else None


def procs(service: ServiceInfo) -> int:
    """The processes each pod runs (``distribute(..., num_proc=P)``), 1 for a Ray pool."""
    dist = service.template.get("distribute")
    if not isinstance(dist, dict) or dist.get("kind") == "ray":
        return 1
    return int(dist.get("num_proc") or 1)


def select(
    service: ServiceInfo,
    client: PodClient,
    workers: str | Sequence[int] | None,
    backend: Backend | None = None,
) -> list[PodInfo]:
    """The pods a call goes to, in rank order."""
    pods = sorted(service.pods, key=lambda p: p.rank)
    if kind(service) == "ray":
        return pods[:1]  # the user's code runs once, on the head, connected to the cluster
    if workers is None:
        return pods
    if workers == "ready":
        current = sorted((backend or get_backend()).get(service.name).pods, key=lambda p: p.rank)
        running = [p for p in current if p.status == "running"]
        with ThreadPoolExecutor(max(1, min(len(running), 32))) as pool:
            healths = list(pool.map(client.health, running))
        ready = [p for p, h in zip(running, healths, strict=True) if h and h.get("ready")]
        if not ready:
            raise CallError(
                f"no pod of {service.name!r} is ready ({', '.join(f'{p.name} ({p.status})' for p in current)}). "
                f"Run 'hotpod describe {service.name}'."
            )
        return ready
    by_rank = {p.rank: p for p in pods}
    workers = [int(r) for r in workers]
    missing = [r for r in workers if r not in by_rank]
    if missing:
        raise SpecError(
            f"workers={list(workers)!r}: {service.name!r} has ranks 0 to {len(pods) - 1}; "
            f"no pod has rank {', '.join(map(str, missing))}"
        )
    return [by_rank[r] for r in workers]


def restart(client: PodClient, pods: Sequence[PodInfo], timeout: float = 300.0) -> None:
    """Replace the worker of every pod by a fresh one serving the same launch; wait for them."""
    groups: dict[str | None, list[PodInfo]] = {}
    for pod in pods:
        launch_id = (client.health(pod) or {}).get("launch_id")
        groups.setdefault(launch_id, []).append(pod)
    for launch_id, group in groups.items():
        try:
            client.launch(group, {"restart": True, "launch_id": launch_id}, timeout)
        except DeployError as exc:
            raise CallError(f"restart=True: could not restart the workers: {exc}") from exc


def abandon(client: PodClient, pods: Sequence[PodInfo]) -> None:
    """Replace the workers of ``pods`` without waiting for the fresh ones (best effort): their
    part of a call that cannot finish ends, and so does the wait of the threads reading it."""
    body = json.dumps({"restart": True}).encode()
    headers = {"Content-Type": wire.CT_JSON}

    def one(pod: PodInfo) -> None:
        try:
            client._http.post(f"{pod.url}/_hotpod/launch", content=body, headers=headers)
        except Exception:  # (the pod may be gone too: nothing to stop there)
            pass

    if len(pods) == 1:
        one(pods[0])
        return
    with ThreadPoolExecutor(min(len(pods), 32)) as pool:
        list(pool.map(one, pods))


class Watch:
    """Watches a broadcast on a collective pool (see the module's docstring)."""

    def __init__(
        self,
        client: PodClient,
        service: str,
        pods: Sequence[PodInfo],
        backend: Backend | None = None,
        interval: float = INTERVAL,
    ) -> None:
        self.client = client
        self.service = service
        self.pods = list(pods)
        self.backend = backend or get_backend()
        self.interval = interval
        self.members = self._members()
        self._first_error: float | None = None  # when a rank raised

    def _members(self) -> dict[str, int | None]:
        try:
            pods = self.backend.get(self.service).pods
        except Exception:  # (the backend's view is a hint; the call goes on)
            return getattr(self, "members", {})
        return {p.name: p.pid if p.status == "running" else None for p in pods}

    def __call__(self, futures: Sequence[Future[Any]]) -> None:
        """Watch a sync broadcast's futures (one per pod, in ``pods`` order)."""
        index = {fut: i for i, fut in enumerate(futures)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=self.timeout(), return_when=FIRST_EXCEPTION)
            ended = [(index[f], None if f.cancelled() else f.exception()) for f in done]
            if self.step(ended, sorted(index[f] for f in pending)):
                wait(pending, timeout=5.0)  # their connections break: the broadcast gathers
                return

    async def tasks(self, tasks: Sequence[asyncio.Future[Any]]) -> None:
        """Watch an async broadcast's tasks (one per pod, in ``pods`` order); what blocks (the
        backend's view, replacing workers) runs in a worker thread."""
        index = {task: i for i, task in enumerate(tasks)}
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(
                pending, timeout=self.timeout(), return_when=asyncio.FIRST_EXCEPTION
            )
            ended = [(index[t], None if t.cancelled() else t.exception()) for t in done]
            waiting = sorted(index[t] for t in pending)
            if await asyncio.to_thread(self.step, ended, waiting):
                await asyncio.wait(pending, timeout=5.0)
                return

    def timeout(self) -> float:
        """How long to wait for the calls before the next :meth:`step`."""
        if self._first_error is None:
            return self.interval
        left = self._first_error + RANK_ERROR_GRACE - time.monotonic()
        return max(0.0, min(self.interval, left))

    def step(self, ended: Sequence[tuple[int, BaseException | None]], waiting: list[int]) -> bool:
        """After a wait: the calls that ended (pod index, exception) and those still running.
        Raises when the call must fail now (a pod lost, the pool changed); True when the calls
        still running were stopped (a rank raised and the others outlived the grace)."""
        for _, exc in ended:
            if isinstance(exc, PodUnreachableError):
                self._pod_lost(exc, [self.pods[j] for j in waiting])
            if exc is not None and self._first_error is None:
                self._first_error = time.monotonic()
        if not waiting:
            return False
        stragglers = [self.pods[j] for j in waiting]
        if (
            self._first_error is not None
            and time.monotonic() >= self._first_error + RANK_ERROR_GRACE
        ):
            abandon(self.client, stragglers)
            return True
        if not ended:
            self._check_members(stragglers)
        return False

    def _pod_lost(self, exc: PodUnreachableError, waiting: list[PodInfo]) -> None:
        if waiting:
            abandon(self.client, waiting)
        others = ", ".join(p.name for p in waiting)
        stopped = (
            f" The call was stopped on {others}: their workers were replaced, since a "
            "collective without that pod cannot finish."
            if others
            else ""
        )
        raise PodTerminatedError(
            f"{exc}{stopped} Call again once the pod is back (the local controller restarts "
            "it), or re-form the pool: compute.distribute(..., workers=N) then .to().",
            pod=exc.pod,
        ) from exc

    def _check_members(self, waiting: list[PodInfo]) -> None:
        now = self._members()
        if now == self.members:
            return
        added = sorted(set(now) - set(self.members))
        removed = sorted(set(self.members) - set(now))
        restarted = sorted(n for n in set(now) & set(self.members) if now[n] != self.members[n])
        abandon(self.client, waiting)
        parts = [
            f"{what} {', '.join(names)}"
            for what, names in (("added", added), ("removed", removed), ("restarted", restarted))
            if names
        ]
        raise WorkerMembershipChanged(
            f"the pods of {self.service!r} changed during the call ({'; '.join(parts)}): a "
            "collective over the old pool cannot finish, so the call was stopped and the "
            "workers still in it were replaced. Call again, or re-form the pool: "
            "compute.distribute(..., workers=N) then .to().",
            added=added,
            removed=removed,
            restarted=restarted,
        )


def watch_for(service: ServiceInfo, client: PodClient, pods: Sequence[PodInfo]) -> Watch | None:
    """A :class:`Watch` for a broadcast on a collective pool, else None."""
    if kind(service) not in COLLECTIVE_KINDS or len(pods) * procs(service) < 2:
        return None
    return Watch(client, service.name, pods)


__all__ = [
    "INTERVAL",
    "RANK_ERROR_GRACE",
    "Watch",
    "abandon",
    "kind",
    "procs",
    "restart",
    "select",
    "watch_for",
]
