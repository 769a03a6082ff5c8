"""The scheduler and the kubelet of the fake cluster's one node.

Every Pod in the store gets a :class:`PodRunner` task on the cluster's loop. It schedules the
pod against the node's allocatable resources (or leaves it Pending, Unschedulable, with a
FailedScheduling event in the real scheduler's words), gives it an IP ``127.0.0.N`` and a
directory, "pulls" its images (those in ``missing_images`` fail), runs its init containers and
then its containers as local process groups, restarts them with a back-off, runs readiness and
liveness probes, writes the Pod's status back through the store, and on deletion kills the
processes and removes the Pod. Timings are shortened so that tests stay fast: probes every
0.1 s whatever ``periodSeconds`` says, restart back-off 0.2 s doubling to 2 s, termination
grace at most 1 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from kubernetes.utils import parse_quantity

from .container import MARKER
from .environment import requests_of
from .objects import ApiError, matches_labels
from .runner import HOST_IP, NODE, PodRunner

if TYPE_CHECKING:
    from .api import FakeApiServer


class Node:
    def __init__(self) -> None:
        self.allocatable: dict[str, Decimal] = {}
        self.labels: dict[str, str] = {}
        self.set()

    def set(
        self,
        cpu: str = "16",
        memory: str = "64Gi",
        gpus: int = 0,
        labels: dict[str, str] | None = None,
    ) -> None:
        self.allocatable = {
            "cpu": parse_quantity(cpu),
            "memory": parse_quantity(memory),
            "pods": Decimal(110),
            "ephemeral-storage": parse_quantity("100Gi"),
        }
        if gpus:
            self.allocatable["nvidia.com/gpu"] = Decimal(gpus)
        self.labels = {
            "kubernetes.io/hostname": NODE,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **(labels or {}),
        }

    def object(self) -> dict[str, Any]:
        amounts = {k: str(v) for k, v in self.allocatable.items()}
        amounts["memory"] = f"{int(self.allocatable['memory'] // 1024)}Ki"
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": NODE, "labels": dict(self.labels)},
            "spec": {},
            "status": {
                "capacity": amounts,
                "allocatable": amounts,
                "addresses": [
                    {"type": "InternalIP", "address": HOST_IP},
                    {"type": "Hostname", "address": NODE},
                ],
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                "nodeInfo": {"kubeletVersion": "v1.31.0", "operatingSystem": "linux"},
            },
        }


class Kubelet:
    def __init__(
        self, api: FakeApiServer, root: Path, missing_images: set[str], cluster_id: str, port: int
    ):
        self.api = api
        self.store = api.store
        self.root = root
        self.missing_images = missing_images
        self.cluster_id = cluster_id
        self.api_port = port
        self.node = Node()
        self.runners: dict[str, PodRunner] = {}
        self.failures: list[str] = []
        self.probe_session: Any = None

    def kind(self, plural: str) -> Any:
        return self.api.kind("", plural)

    # -- the pods ------------------------------------------------------------------------------

    def sync(self) -> None:
        """Start a runner for each Pod that has none."""
        for pod in self.store.select(self.kind("pods"), None):
            uid = pod["metadata"]["uid"]
            if uid not in self.runners:
                runner = PodRunner(self, pod)
                self.runners[uid] = runner
                runner.task = asyncio.get_running_loop().create_task(runner.run())

    def runner(self, ns: str, name: str) -> PodRunner | None:
        for r in self.runners.values():
            if (r.ns, r.name) == (ns, name):
                return r
        return None

    def free_ip(self) -> str:
        used = {r.ip for r in self.runners.values() if r.ip}
        for n in range(2, 255):
            if f"127.0.0.{n}" not in used:
                return f"127.0.0.{n}"
        raise RuntimeError("the fake node ran out of pod IPs (253 live pods)")

    def unschedulable(self, pod: dict[str, Any]) -> str | None:
        """Why the pod does not fit on the node now (the scheduler's message), or None."""
        selector = pod["spec"].get("nodeSelector") or {}
        if not matches_labels(self.node.labels, [(k, "=", {v}) for k, v in selector.items()]):
            return (
                "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. "
                "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
            )
        for vol in pod["spec"].get("volumes") or []:
            claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
            if (
                claim
                and self.store.get(
                    self.kind("persistentvolumeclaims"), pod["metadata"]["namespace"], claim
                )
                is None
            ):
                return (
                    f'0/1 nodes are available: persistentvolumeclaim "{claim}" not found. '
                    "preemption: 0/1 nodes are available: 1 Preemption is not helpful for "
                    "scheduling."
                )
        used: dict[str, Any] = {"pods": Decimal(0)}
        for r in self.runners.values():
            if r.bound and not r.finished:
                used["pods"] += 1
                for k, v in requests_of(r.pod).items():
                    used[k] = used.get(k, 0) + v
        want = {**requests_of(pod), "pods": Decimal(1)}
        short = sorted(
            k
            for k, v in want.items()
            if v > 0 and used.get(k, 0) + v > self.node.allocatable.get(k, Decimal(0))
        )
        if not short:
            return None
        reasons = ", ".join(
            "1 Too many pods" if k == "pods" else f"1 Insufficient {k}" for k in short
        )
        return (
            f"0/1 nodes are available: {reasons}. preemption: 0/1 nodes are available: "
            "1 No preemption victims found for incoming pod."
        )

    # -- what the API and the cluster ask ------------------------------------------------------

    def log_path(
        self, ns: str, pod: str, container: str | None, previous: bool
    ) -> tuple[Path, str]:
        self.store.read(self.kind("pods"), ns, pod)  # 404 when there is no such pod
        runner = self.runner(ns, pod)
        spec = runner.pod["spec"] if runner else {}
        names = [
            c["name"] for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])
        ]
        if container is None:
            main = [c["name"] for c in spec.get("containers") or []]
            if len(main) != 1:
                raise ApiError(
                    400,
                    "BadRequest",
                    f"a container name must be specified for pod {pod}, choose one of: "
                    f"[{' '.join(main)}]",
                )
            container = main[0]
        if container not in names:
            raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {pod}")
        ctr = runner.containers.get(container) if runner else None
        index = ctr.log_index() if ctr else None
        if index is None:
            reason = (ctr.waiting_reason() if ctr else None) or "ContainerCreating"
            raise ApiError(
                400,
                "BadRequest",
                f'container "{container}" in pod "{pod}" is waiting to start: {reason}',
            )
        if previous:
            index -= 1
            if index < 0:
                raise ApiError(
                    400,
                    "BadRequest",
                    f'previous terminated container "{container}" in pod "{pod}" not found',
                )
        assert ctr is not None
        return ctr.log_file(index), container

    def is_running(self, ns: str, pod: str, container: str) -> bool:
        runner = self.runner(ns, pod)
        ctr = runner.containers.get(container) if runner else None
        return bool(ctr and ctr.proc and ctr.proc.poll() is None)

    def processes(self) -> list[int]:
        return [
            c.proc.pid
            for r in self.runners.values()
            for c in r.containers.values()
            if c.proc is not None and c.proc.poll() is None
        ]

    def crash(self, ns: str, name: str) -> None:
        runner = self.runner(ns, name)
        if runner is None:
            raise KeyError(f"no pod {ns}/{name} is known to the fake kubelet")
        for c in runner.containers.values():
            if c.proc is not None and c.proc.poll() is None:
                c.signal(signal.SIGKILL)

    def leftovers(self, prefix: str | None = None) -> list[psutil.Process]:
        """Live processes started for this cluster (or one pod/container of it)."""
        prefix = prefix or self.cluster_id + "/"
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get(MARKER, "").startswith(prefix):
                    found.append(proc)
            except (psutil.Error, OSError):
                continue
        return found

    async def stop(self) -> None:
        for r in list(self.runners.values()):
            if r.task is not None:
                r.task.cancel()
        for r in list(self.runners.values()):
            if r.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await r.task
            r.kill_all_now()
        for proc in self.leftovers():
            with contextlib.suppress(psutil.Error):
                proc.kill()
