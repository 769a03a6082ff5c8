"""One pod's life on the fake node: scheduling, setup, containers, status, termination."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from .container import MARKER, Container
from .environment import ConfigError, prepare_volumes
from .objects import now

if TYPE_CHECKING:
    from .kubelet import Kubelet

TICK = 0.05
GRACE_MAX = 1.0
NODE = "fake-node"
HOST_IP = "127.0.0.1"


def _qos(pod: dict[str, Any]) -> str:
    guaranteed, any_amount = True, False
    for c in pod["spec"].get("containers") or []:
        res = c.get("resources") or {}
        limits, requests = res.get("limits") or {}, res.get("requests") or {}
        any_amount = any_amount or bool(limits or requests)
        for r in ("cpu", "memory"):
            if r not in limits or requests.get(r, limits[r]) != limits[r]:
                guaranteed = False
    return (
        "Guaranteed" if guaranteed and any_amount else "Burstable" if any_amount else "BestEffort"
    )


class PodRunner:
    def __init__(self, kubelet: Kubelet, pod: dict[str, Any]):
        self.kubelet = kubelet
        self.store = kubelet.store
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.ns: str = meta["namespace"]
        self.name: str = meta["name"]
        self.task: asyncio.Task[None] | None = None
        self.ip = ""
        self.bound = False
        self.finished = False
        self.dir = kubelet.root / "pods" / self.uid[:8]  # short: unix sockets live below it
        self.fs = self.dir / "fs"
        self.volumes: dict[str, Path] | None = None
        spec = pod["spec"]
        self.inits = [Container(self, c, True) for c in spec.get("initContainers") or []]
        self.mains = [Container(self, c, False) for c in spec.get("containers") or []]
        if self.inits:
            for c in self.mains:
                c.state = {"waiting": {"reason": "PodInitializing"}}
        self.containers = {c.name: c for c in self.inits + self.mains}
        self.conditions: dict[str, dict[str, Any]] = {}
        self.start_time: str | None = None
        self._unschedulable: tuple[str, float] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- helpers -------------------------------------------------------------------------------

    def obj(self) -> dict[str, Any] | None:
        obj = self.store.get(self.kubelet.kind("pods"), self.ns, self.name)
        if obj is None or obj["metadata"].get("uid") != self.uid:
            return None
        return obj

    def deleting(self) -> bool:
        obj = self.obj()
        return obj is None or bool(obj["metadata"].get("deletionTimestamp"))

    def event(
        self, reason: str, message: str, *, warning: bool = False, component: str = "kubelet"
    ) -> None:
        obj = self.obj() or self.pod
        self.store.record_event(
            self.kubelet.kind("events"),
            obj,
            reason,
            message,
            type_="Warning" if warning else "Normal",
            component=component,
        )

    def _condition(
        self, type_: str, ok: bool, reason: str | None = None, message: str | None = None
    ) -> None:
        status = "True" if ok else "False"
        old = self.conditions.get(type_)
        cond: dict[str, Any] = {"type": type_, "status": status, "lastProbeTime": None}
        cond["lastTransitionTime"] = (
            old["lastTransitionTime"] if old and old["status"] == status else now()
        )
        if reason:
            cond["reason"] = reason
        if message:
            cond["message"] = message
        self.conditions[type_] = cond

    # -- the life of the pod -------------------------------------------------------------------

    async def run(self) -> None:
        try:
            if await self._schedule():
                self._setup()
                await self._live()
            await self._terminate()
        except asyncio.CancelledError:
            self.kill_all_now()
            raise
        except Exception:
            self.kubelet.failures.append(f"pod {self.ns}/{self.name}: {traceback.format_exc()}")
            self.kill_all_now()

    async def _schedule(self) -> bool:
        while True:
            obj = self.obj()
            if obj is None or obj["metadata"].get("deletionTimestamp"):
                return False
            self.pod = obj
            why = self.kubelet.unschedulable(obj)
            if why is None:
                self.bound = True
                if obj["spec"].get("nodeName") != NODE:
                    self.store.patch(
                        self.kubelet.kind("pods"),
                        self.ns,
                        self.name,
                        {"spec": {"nodeName": NODE}},
                        "merge-patch",
                    )
                self._condition("PodScheduled", True)
                self.event(
                    "Scheduled",
                    f"Successfully assigned {self.ns}/{self.name} to {NODE}",
                    component="default-scheduler",
                )
                return True
            self._condition("PodScheduled", False, "Unschedulable", why)
            self._write_status()
            last = self._unschedulable
            if last is None or last[0] != why or time.monotonic() - last[1] > 5:
                self._unschedulable = (why, time.monotonic())
                self.event("FailedScheduling", why, warning=True, component="default-scheduler")
            await asyncio.sleep(0.2)

    def _setup(self) -> None:
        self.ip = self.kubelet.free_ip()
        self.fs.mkdir(parents=True, exist_ok=True)
        self.start_time = now()
        self._condition("PodReadyToStartContainers", True)
        self._write_status()

    async def _live(self) -> None:
        while True:
            obj = self.obj()
            if obj is None or obj["metadata"].get("deletionTimestamp"):
                return
            self.pod = obj
            if self.volumes is None:
                try:
                    self.volumes = prepare_volumes(
                        self.store, self.kubelet.kind, obj, self.dir, self.kubelet.root
                    )
                except ConfigError as e:
                    self.event("FailedMount", e.message, warning=True)
                    self._write_status()
                    await asyncio.sleep(0.5)
                    continue
            if not self.finished:
                waiting_init = [c for c in self.inits if not c.done]
                if waiting_init:
                    waiting_init[0].tick()
                elif not any(c.done and c.exit_code for c in self.inits):
                    for c in self.mains:
                        c.tick()
            self._write_status()
            await asyncio.sleep(TICK)

    def phase(self) -> str:
        if not self.bound or self.volumes is None:
            return "Pending"
        if any(c.done and c.exit_code for c in self.inits):
            return "Failed"
        if not all(c.done for c in self.inits):
            return "Pending"
        if self.mains and all(c.done for c in self.mains):
            return "Succeeded" if all(c.exit_code == 0 for c in self.mains) else "Failed"
        if any(c.starts for c in self.mains):
            return "Running"
        return "Pending"

    def _write_status(self) -> None:
        obj = self.obj()
        if obj is None:
            return
        phase = self.phase() if self.bound else "Pending"
        self.finished = phase in ("Succeeded", "Failed")
        status: dict[str, Any] = {"phase": phase, "qosClass": _qos(obj)}
        if self.bound:
            inits_done = all(c.done and c.exit_code == 0 for c in self.inits)
            pending = [c.name for c in self.inits if not c.done]
            self._condition(
                "Initialized",
                inits_done,
                None if inits_done else "ContainersNotInitialized",
                None if inits_done else f"containers with incomplete status: [{' '.join(pending)}]",
            )
            unready = [c.name for c in self.mains if not c.ready]
            if self.finished:
                self._condition("ContainersReady", False, "PodCompleted")
                self._condition("Ready", False, "PodCompleted")
            else:
                msg = f"containers with unready status: [{' '.join(unready)}]"
                self._condition(
                    "ContainersReady",
                    not unready,
                    "ContainersNotReady" if unready else None,
                    msg if unready else None,
                )
                self._condition(
                    "Ready",
                    not unready,
                    "ContainersNotReady" if unready else None,
                    msg if unready else None,
                )
        order = [
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        ]
        status["conditions"] = [self.conditions[t] for t in order if t in self.conditions]
        if self.ip:
            status.update(
                hostIP=HOST_IP,
                hostIPs=[{"ip": HOST_IP}],
                podIP=self.ip,
                podIPs=[{"ip": self.ip}],
                startTime=self.start_time,
            )
            status["containerStatuses"] = [c.status() for c in self.mains]
            if self.inits:
                status["initContainerStatuses"] = [c.status() for c in self.inits]
        if obj.get("status") != status:
            self.store.replace(
                self.kubelet.kind("pods"),
                self.ns,
                self.name,
                {"metadata": {}, "status": status},
                subresource="status",
                check_version=False,
            )

    # -- termination ---------------------------------------------------------------------------

    async def _terminate(self) -> None:
        obj = self.obj()
        grace = GRACE_MAX
        if obj is not None:
            grace = min(float(obj["metadata"].get("deletionGracePeriodSeconds") or 0), GRACE_MAX)
        live = [c for c in self.containers.values() if c.running()]
        for c in live:
            self.event("Killing", f"Stopping container {c.name}")
            c.signal(signal.SIGTERM if grace > 0 else signal.SIGKILL)
        deadline = time.monotonic() + grace
        while any(c.running() for c in live) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self.kill_all_now()
        await asyncio.to_thread(reap, f"{self.kubelet.cluster_id}/{self.uid}/")
        self.store.remove(self.kubelet.kind("pods"), self.ns, self.name)
        self.kubelet.runners.pop(self.uid, None)

    def kill_all_now(self) -> None:
        for c in self.containers.values():
            if c.proc is not None:
                c.signal(signal.SIGKILL)
                with contextlib.suppress(Exception):
                    c.proc.wait(timeout=5)
                c.proc = None

    def background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reap_container(self, marker: str) -> None:
        await asyncio.to_thread(reap, marker)


def reap(prefix: str) -> None:
    """Kill processes carrying the container marker ``prefix`` (those that left the group)."""
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARKER, "").startswith(prefix):
                proc.kill()
        except (psutil.Error, OSError):
            continue
