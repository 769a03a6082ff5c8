"""Autoscaled services in the local controller: a router and a KPA decider per service.

The controller calls in at a few points (creation, apply, pod start/stop/exit, delete); this
module does the rest. Each tick (``TICK`` seconds, or at once when a request arrives at zero)
it samples the router, asks the :class:`~hotpod.backends.local.autoscaler.Decider` for a pod
count and scales toward it: new pods start with the service's launch written into their root
(``.hotpod/launch.json``, which the pod resumes on start), and join the router once
``/health`` says they are ready; pods to remove first drain (no new requests, the last one
answered), then stop. A scaled-down pod's directory stays, so the next pod of that rank starts
with its code tree and setup ledger in place.

Launches: ``.to()`` hands each launch over (``PUT /services/NAME/launch``) before it sends it
to the pods that run. It is *pending* until a pod's ``/health`` says it serves it (then pods
started later get it) or that it failed (then it is dropped: they keep the last launch that
succeeded). Meanwhile a new pod gets the last good launch as ``launch.json`` and the pending
one as ``launch.next.json``: it tries the pending one first and falls back.

What survives a controller restart is kept in ``pods/<service>/.autoscale.json``: the
router's port and the launches (good, pending, the last that failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from hotpod.backends.local.autoscaler import Decider, KpaSettings, settings_from
from hotpod.backends.local.router import Router

if TYPE_CHECKING:
    from hotpod.backends.local.controller import Controller, Pod

TICK = 0.1
READY_POLL = 0.02
VERIFY_POLL = 0.2  # how often the pods are asked whether a pending launch serves
#: a pod that has not become ready after this long may be removed when scaling down
START_GRACE = 120.0


@dataclass
class Scaled:
    """One autoscaled service's router, decider and what the controller needs to know."""

    name: str
    settings: KpaSettings
    router: Router
    decider: Decider
    launch: dict[str, Any] | None = None  # the last launch a pod served: new pods get it
    pending: dict[str, Any] | None = None  # handed over by .to(), not yet seen served
    failed: dict[str, Any] | None = None  # the last launch that failed: id, pod, message
    verify: asyncio.Task[None] | None = None  # asks the pods how the pending launch went
    desired: int = 0
    poke: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    watchers: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    stopping: set[int] = field(default_factory=set)  # ranks of pods still stopping


def autoscale_of(svc: dict[str, Any]) -> dict[str, Any] | None:
    auto = svc.get("template", {}).get("autoscale")
    return auto if isinstance(auto, dict) else None


class Autoscalers:
    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl
        self.services: dict[str, Scaled] = {}

    def _state_file(self, name: str) -> Path:
        return self.ctl.settings.pods_dir / name / ".autoscale.json"

    def _save(self, sc: Scaled) -> None:
        path = self._state_file(sc.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "port": sc.router.port,
            "launch": sc.launch,
            "pending": sc.pending,
            "failed": sc.failed,
        }
        _write_json(path, state)

    # -- controller hooks -------------------------------------------------------------------

    def replicas(self, name: str, template: dict[str, Any], asked: int) -> int:
        """The pod count an apply sets: at creation the initial scale, later what runs now
        (the autoscaler owns the count)."""
        auto = template.get("autoscale")
        if not isinstance(auto, dict):
            return asked
        if name in self.ctl.services:
            return len(self.ctl.pods.get(name, []))
        return settings_from(auto).start_count

    async def start(self) -> None:
        """At controller start: routers for the autoscaled services of the registry."""
        for name in sorted(self.ctl.services):
            await self.applied(name)

    async def applied(self, name: str) -> None:
        """After an apply (or at start): make the service's router and decider match it."""
        svc = self.ctl.services[name]
        auto = autoscale_of(svc)
        if auto is None:
            await self.removed(name)
            return
        settings = settings_from(auto)
        sc = self.services.get(name)
        now = time.monotonic()
        if sc is None:
            try:
                saved = json.loads(self._state_file(name).read_text())
            except (OSError, ValueError):
                saved = {}
            router = Router(name, settings.concurrency, settings.hold_timeout)
            sc = Scaled(name, settings, router, Decider(settings, now), saved.get("launch"))
            sc.pending, sc.failed = saved.get("pending"), saved.get("failed")
            router.on_wait = lambda: self._at_zero(sc)
            await router.start(int(saved.get("port") or 0))
            self.services[name] = sc
            self._save(sc)
            sc.task = asyncio.get_running_loop().create_task(self._loop(sc))
            self._verify_soon(sc)
        elif settings != sc.settings:
            sc.settings = sc.decider.settings = settings
            sc.router.limit, sc.router.hold_timeout = settings.concurrency, settings.hold_timeout
        sc.decider.hold(now)
        for pod in self.ctl.pods.get(name, []):
            if pod.name not in sc.router.pods and pod.status != "stopped":
                self._watch(sc, pod)
        sc.desired = len(self.ctl.pods.get(name, []))

    async def removed(self, name: str) -> None:
        sc = self.services.pop(name, None)
        if sc is None:
            return
        for task in (sc.task, sc.verify, *sc.watchers.values()):
            if task is not None:
                task.cancel()
        await sc.router.close()

    async def settle(self, name: str, template: dict[str, Any]) -> None:
        """Before an apply that ends a service's autoscaling: no more scaling, pods draining
        are kept, and pods being stopped are gone (their ranks free for the fixed pool)."""
        sc = self.services.get(name)
        if sc is None or autoscale_of({"template": template}) is not None:
            return
        if sc.task is not None:
            sc.task.cancel()
        for pod in self.ctl.pods.get(name, []):
            if pod.status == "draining":
                pod.status = "running"
        while sc.stopping:
            await asyncio.sleep(0.05)

    def resize(
        self, name: str, pods: list[Pod], replicas: int, template: dict[str, Any]
    ) -> tuple[list[Pod], list[int]]:
        """What an apply changes in the pool: the pods to stop, the ranks of the pods to start
        (see :func:`plan_resize`)."""
        sc = self.services.get(name)
        auto = autoscale_of({"template": template}) is not None
        return plan_resize(pods, replicas, auto, sc.stopping if sc and auto else set())

    async def stop(self) -> None:
        for name in list(self.services):
            await self.removed(name)

    def starting(self, pod: Pod, root: Path) -> None:
        """Before a pod of an autoscaled service starts: give it the service's launch, and
        watch for it to become ready."""
        sc = self.services.get(pod.service)
        if sc is None:
            return
        state = root / ".hotpod"
        state.mkdir(parents=True, exist_ok=True)
        for stale in ("launch.next.json", "launch_error.json"):
            (state / stale).unlink(missing_ok=True)
        first = sc.launch or sc.pending
        if first is not None:
            _write_json(state / "launch.json", first)
        if sc.launch is not None and sc.pending is not None:  # tried first, falls back
            _write_json(state / "launch.next.json", sc.pending)
        sc.router.set_ready(pod.name, False)
        self._watch(sc, pod)

    def stopping(self, pod: Pod) -> None:
        sc = self.services.get(pod.service)
        if sc is not None:
            sc.router.set_ready(pod.name, False)

    def describe(self, name: str, desc: dict[str, Any]) -> dict[str, Any]:
        """``desc`` (the controller's view of a service) with the autoscaler's state in
        ``meta["router"]``."""
        sc = self.services.get(name)
        if sc is None:
            return desc
        decision = sc.decider.last
        state = {
            **sc.router.state(),
            "desired": sc.desired,
            "actual": len(self.ctl.pods.get(name, [])),
            "metric": sc.settings.metric,
            "observed": round(decision.stable, 3) if decision else 0.0,
            "panic": bool(decision and decision.panicking),
            "min_scale": sc.settings.min_scale,
            "max_scale": sc.settings.max_scale,
            "target": sc.settings.target,
            # the launch pods started from now on get; one still being tried; the last failed
            "launch": (sc.launch or {}).get("launch_id"),
            "pending": (sc.pending or {}).get("launch_id"),
            "failed": sc.failed,
        }
        return {**desc, "meta": {**desc.get("meta", {}), "router": state}}

    def routes(self) -> list[Route]:
        async def put_launch(request: Request) -> JSONResponse:
            name = request.path_params["name"]
            sc = self.services.get(name)
            if sc is None:
                return JSONResponse(
                    {"error": f"no autoscaled service named {name!r}"}, status_code=404
                )
            try:
                spec = await request.json()
                if not isinstance(spec, dict):
                    raise ValueError("expected a JSON object")
            except ValueError as exc:
                return JSONResponse({"error": f"malformed launch spec: {exc}"}, status_code=400)
            sc.pending = spec
            self._save(sc)
            self._verify_soon(sc)
            sc.decider.hold(time.monotonic())  # no scale-down while the launch goes out
            desc = self.ctl.describe(name)  # the pods to launch on: not those draining
            desc["pods"] = [p for p in desc["pods"] if p["status"] != "draining"]
            return JSONResponse(desc)

        return [Route("/services/{name}/launch", put_launch, methods=["PUT"])]

    # -- readiness --------------------------------------------------------------------------

    def _watch(self, sc: Scaled, pod: Pod) -> None:
        sc.router.add(pod.name, pod.port)
        old = sc.watchers.pop(pod.name, None)
        if old is not None:
            old.cancel()
        sc.watchers[pod.name] = asyncio.get_running_loop().create_task(self._until_ready(sc, pod))

    async def _until_ready(self, sc: Scaled, pod: Pod) -> None:
        """Poll the pod's /health until it says ready, then let the router use it."""
        while pod.status != "stopped" and pod in self.ctl.pods.get(sc.name, []):
            health = await self.ctl.health(pod)
            if health is not None:
                self._observe(sc, pod, health)
                if health.get("ready"):
                    sc.router.set_ready(pod.name, True)
                    sc.decider.hold(time.monotonic())
                    sc.watchers.pop(pod.name, None)
                    return
            await asyncio.sleep(READY_POLL)

    # -- launches ---------------------------------------------------------------------------

    def _verify_soon(self, sc: Scaled) -> None:
        if sc.pending is not None and (sc.verify is None or sc.verify.done()):
            sc.verify = asyncio.get_running_loop().create_task(self._verify(sc))

    async def _verify(self, sc: Scaled) -> None:
        """Ask the pods how the pending launch went, until one serves it or one failed it."""
        while sc.pending is not None:
            for pod in list(self.ctl.pods.get(sc.name, [])):
                if pod.status == "running" and sc.pending is not None:
                    health = await self.ctl.health(pod)
                    if health is not None:
                        self._observe(sc, pod, health)
            await asyncio.sleep(VERIFY_POLL)

    def _observe(self, sc: Scaled, pod: Pod, health: dict[str, Any]) -> None:
        """What a pod's /health says of the pending launch: served (pods started from now on
        get it) or failed (dropped: they keep the last launch that succeeded)."""
        spec = sc.pending
        if spec is None:
            return
        launch_id = spec.get("launch_id")
        error = health.get("launch_error")
        if health.get("ready") and health.get("launch_id") == launch_id:
            sc.launch, sc.pending, sc.failed = spec, None, None
        elif isinstance(error, dict) and error.get("launch_id") == launch_id:
            message = str(error.get("message") or "failed").strip().splitlines()
            sc.pending = None
            sc.failed = {"launch_id": launch_id, "pod": pod.name, "message": message[0][:300]}
            kept = (sc.launch or {}).get("launch_id")
            self.ctl.pod_event(
                pod,
                f"launch {launch_id} failed on {pod.name}; pods started from now on get "
                + (f"launch {kept}, the last one that served" if kept else "no launch"),
            )
        else:
            return
        self._save(sc)

    # -- scaling ----------------------------------------------------------------------------

    def _at_zero(self, sc: Scaled) -> None:
        """A request waits: with no pod at all, decide now instead of at the next tick."""
        pods = self.ctl.pods.get(sc.name, [])
        if not any(p.status not in ("draining", "stopped") for p in pods):
            sc.poke.set()

    async def _loop(self, sc: Scaled) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(sc.poke.wait(), TICK)
            sc.poke.clear()
            try:
                await self._tick(sc)
            except Exception as exc:  # a bug here must not stop the service's scaling
                print(f"autoscaler of {sc.name}: {type(exc).__name__}: {exc}", flush=True)

    async def _tick(self, sc: Scaled) -> None:
        now = time.monotonic()
        concurrency, rps = sc.router.sample()
        sc.decider.record(now, rps if sc.settings.metric == "rps" else concurrency)
        pods = self.ctl.pods.get(sc.name, [])
        active = [p for p in pods if p.status != "draining"]
        ready = sum(1 for p in active if (b := sc.router.pods.get(p.name)) and b.ready)
        desired = sc.decider.decide(now, ready, len(active))
        if sc.router.queued:
            desired = max(desired, 1)
        sc.desired = desired
        if desired != len(active):
            await self._scale(sc, desired)

    async def _scale(self, sc: Scaled, desired: int) -> None:
        ctl = self.ctl
        async with ctl.lock:
            pods = ctl.pods.get(sc.name)
            svc = ctl.services.get(sc.name)
            if pods is None or svc is None:
                return
            active = [p for p in pods if p.status != "draining"]
            if desired > len(active):
                self._grow(sc, pods, active, desired)
            elif desired < len(active):
                self._shrink(sc, active, len(active) - desired)
            svc["replicas"] = desired
            ctl.registry.save_service(svc)

    def _grow(self, sc: Scaled, pods: list[Pod], active: list[Pod], desired: int) -> None:
        from hotpod.backends.local.controller import Pod

        for pod in sorted((p for p in pods if p.status == "draining"), key=lambda p: p.rank):
            if len(active) >= desired:
                return
            pod.status = "running"  # taken back before it stopped
            sc.router.set_draining(pod.name, False)
            active.append(pod)
        used = {p.rank for p in pods} | sc.stopping
        ranks = (r for r in itertools.count() if r not in used)
        while len(active) < desired:
            rank = next(ranks)
            pod = Pod(
                service=sc.name, rank=rank, name=f"{sc.name}-{rank}", port=self.ctl._free_port()
            )
            pods.append(pod)
            pods.sort(key=lambda p: p.rank)
            active.append(pod)
            try:
                self.ctl.start_pod(pod)
            except OSError as exc:
                pod.status, pod.next_start = "restarting", time.time() + 1.0
                print(f"pod {pod.name} failed to start: {exc}", flush=True)
            self.ctl.pod_event(pod, f"pod {pod.name} started by the autoscaler")

    def _shrink(self, sc: Scaled, active: list[Pod], count: int) -> None:
        """Drain ``count`` pods: ready ones, highest rank first (a pod still starting is left
        to finish, unless it has been starting for START_GRACE)."""
        now = time.time()

        def removable(p: Pod) -> bool:
            b = sc.router.pods.get(p.name)
            return bool(b and b.ready) or now - (p.started_at or now) > START_GRACE

        for pod in sorted(filter(removable, active), key=lambda p: -p.rank)[:count]:
            pod.status = "draining"
            sc.router.set_draining(pod.name, True)
            self.ctl.pod_event(pod, f"pod {pod.name} draining: the autoscaler scales down")
            asyncio.get_running_loop().create_task(self._drain(sc, pod))

    async def _drain(self, sc: Scaled, pod: Pod) -> None:
        """Stop a draining pod once its last request is answered (unless taken back)."""
        backend = sc.router.pods.get(pod.name)
        while backend is not None and backend.inflight:
            await backend.drained.wait()
        async with self.ctl.lock:
            pods = self.ctl.pods.get(sc.name, [])
            if pod.status != "draining" or pod not in pods:
                return
            pods.remove(pod)
            self.ctl.registry.delete_pod(sc.name, pod.rank)
            sc.stopping.add(pod.rank)
            sc.router.remove(pod.name)
        try:
            await self.ctl.stop_pod(pod)
            self.ctl.pod_event(pod, f"pod {pod.name} stopped: scaled down")
        finally:
            sc.stopping.discard(pod.rank)


def plan_resize(
    pods: list[Pod], replicas: int, autoscaled: bool, stopping: set[int]
) -> tuple[list[Pod], list[int]]:
    """What an apply changes in a pool: the pods to stop (highest rank first) and the ranks of
    the pods to start. No two pods ever share a rank.

    A pool of fixed size has the ranks ``0 .. replicas-1`` (distributed pools rely on it). An
    autoscaled pool may have left gaps (rank 1 scaled down while rank 2 stayed), so a pool
    switched back to a fixed size stops its pods past the size and starts the ranks missing
    below it. An autoscaled pool keeps its pods (the autoscaler owns the count); pods it needs
    take the lowest ranks neither used nor still stopping."""
    ordered = sorted(pods, key=lambda p: p.rank)
    if autoscaled:
        extra = ordered[replicas:]
        used = {p.rank for p in ordered[:replicas]} | stopping
        free = (r for r in itertools.count() if r not in used)
        missing = [next(free) for _ in range(replicas - len(ordered[:replicas]))]
    else:
        extra = [p for p in ordered if p.rank >= replicas]
        used = {p.rank for p in ordered}
        missing = [r for r in range(replicas) if r not in used]
    return extra[::-1], missing


def _write_json(path: Path, data: Any) -> None:
    """Write a small JSON file whole or not at all (a pod or a restart reads it)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
