"""Reading a service's pods on Kubernetes: their logs (``hotpod logs``, followed with ``-f``,
pods that start later included) and why a pod the deploy waits for will not come up
(``Backend.diagnose``), as a mixin of :class:`~hotpod.backends.k8s.backend.KubernetesBackend`."""

from __future__ import annotations

import builtins
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hotpod import loglines
from hotpod.backends.base import PodInfo, ServiceInfo, pick_pods
from hotpod.backends.k8s import pods as podstate
from hotpod.backends.k8s.kube import collection
from hotpod.errors import DeployError, HotpodError, ServiceNotFoundError
from hotpod.k8s.pod import CONTAINER_NAME

if TYPE_CHECKING:
    from hotpod.backends.k8s.kube import Kube

#: how long a pod may stay Pending unschedulable, or waiting for its image, before ``.to()``
#: fails (at most; a quarter of the launch timeout when that is shorter)
GRACE_SECONDS = 10.0
#: how often ``logs -f`` looks for pods that started after it began
FOLLOW_POLL_SECONDS = 1.0


class ObserveMixin:
    """Logs and diagnosis; needs the backend's ``kube``, ``namespace``, ``_pods``, ``watch``."""

    if TYPE_CHECKING:

        @property
        def kube(self) -> Kube: ...

        namespace: Callable[..., str]
        _pods: Callable[[str, str], list[dict[str, Any]]]
        watch: Callable[[str], None]

    # -- logs -------------------------------------------------------------------------------

    def _log_path(self, ns: str, pod: str) -> str:
        return f"{collection('v1', 'Pod', ns)}/{pod}/log"

    def read_log(
        self,
        pod: str,
        ns: str,
        tail: int | None = None,
        previous: bool = False,
        container: str = CONTAINER_NAME,
    ) -> builtins.list[str]:
        query = {
            "container": container,
            "tailLines": tail,
            "previous": "true" if previous else None,
        }
        text = self.kube.request("GET", self._log_path(ns, pod), query=query, raw=True)
        return str(text).splitlines()

    def logs(
        self,
        name: str,
        pod: str | None = None,
        follow: bool = False,
        tail: int | None = None,
        keep: loglines.LogFilter | None = None,
    ) -> Iterator[loglines.LogLine]:
        ns = self.namespace(name)
        found = sorted(self._pods(name, ns), key=podstate.rank_key)
        containers = {p["metadata"]["name"]: podstate.runtime_container(p) for p in found}
        pods = pick_pods(name, pod, list(containers))
        if not pods:
            raise ServiceNotFoundError(
                f"no pods of service {name!r} in namespace {ns!r}: their logs went with them"
            )
        if follow:
            return self._follow(name, pods, containers, ns, tail, keep, fixed=pod is not None)
        return loglines.merge(
            [
                loglines.read(
                    p,
                    self.read_log(p, ns, None if keep else tail, container=containers[p]),
                    keep,
                    tail,
                )
                for p in pods
            ]
        )

    def _follow(
        self,
        name: str,
        pods: builtins.list[str],
        containers: dict[str, str],
        ns: str,
        tail: int | None,
        keep: loglines.LogFilter | None,
        fixed: bool,
    ) -> Iterator[loglines.LogLine]:
        """Each pod's log as it grows; unless ``fixed`` (one pod asked for), the logs of pods
        that start later too (looked for every ``FOLLOW_POLL_SECONDS``), from their start.
        Ends when every stream has ended and the service has no new pod."""
        lines: queue.Queue[loglines.LogLine | None] = queue.Queue()

        def pump(pod: str, lines_back: int | None) -> None:
            last = ""
            container = containers.get(pod, CONTAINER_NAME)
            query = {"container": container, "follow": "true", "tailLines": lines_back}
            try:
                for raw in self.kube.stream(self._log_path(ns, pod), query):
                    line = loglines.parse(pod, raw.decode("utf-8", "replace").rstrip("\r"), last)
                    last = line.ts
                    if keep is None or keep.keep(line):
                        lines.put(line)
            except HotpodError:
                pass
            finally:
                lines.put(None)

        followed: set[str] = set()
        open_streams = 0

        def start(new: builtins.list[str], lines_back: int | None) -> None:
            nonlocal open_streams
            for p in new:
                followed.add(p)
                open_streams += 1
                threading.Thread(target=pump, args=(p, lines_back), daemon=True).start()

        start(pods, tail)
        next_poll = time.monotonic() + FOLLOW_POLL_SECONDS
        while True:
            if not fixed and time.monotonic() >= next_poll:
                try:
                    found = self._pods(name, ns)
                except HotpodError:
                    found = []
                containers.update(
                    {p["metadata"]["name"]: podstate.runtime_container(p) for p in found}
                )
                start([p for p in containers if p not in followed], None)
                next_poll = time.monotonic() + FOLLOW_POLL_SECONDS
                if not open_streams:
                    return
            try:
                item = lines.get(timeout=FOLLOW_POLL_SECONDS)
            except queue.Empty:
                continue
            if item is None:
                open_streams -= 1
                if not open_streams and fixed:
                    return
            else:
                yield item

    # -- diagnosis --------------------------------------------------------------------------

    def diagnose(
        self,
        service: ServiceInfo,
        pending: Sequence[PodInfo],
        restarts0: Mapping[str, int],
        waited: float,
        timeout: float,
    ) -> None:
        ns = self.namespace(service.name)
        self.watch(service.name)
        raw = {p["metadata"]["name"]: p for p in self._pods(service.name, ns)}
        names = [p.name for p in pending if p.name in raw]
        events: list[dict[str, Any]] = []
        # a pod not placed yet: its FailedScheduling (before the condition is written) and the
        # cluster autoscaler's TriggeredScaleUp are events; a placed pod's trouble is in its status
        if any(_unplaced(raw[n]) for n in names) or waited >= timeout:
            events = self.kube.items(collection("v1", "Event", ns))
        grace = min(GRACE_SECONDS, timeout / 4)
        found = []
        for n in names:
            trouble = podstate.trouble(raw[n], events, restarts0.get(n, 0))
            if trouble is None:
                continue
            found.append(trouble)
            late = trouble.kind != "scaling" and waited >= grace
            if trouble.final or late:
                raise DeployError(
                    f"service {service.name!r}: {trouble.message}"
                    + self._log_tail(raw[n], ns, trouble.kind)
                    + f"\nRun 'hotpod describe {service.name}'"
                    + (
                        f" and 'hotpod logs {service.name}'."
                        if trouble.kind == "crashloop"
                        else "."
                    )
                )
        if waited >= timeout:
            ready = len(service.pods) - len(pending)
            why = "; ".join(t.message for t in found) or ", ".join(
                f"{p.name} ({p.status})" for p in pending
            )
            if len(service.pods) < service.replicas:
                why += (
                    f"{'; ' if why else ''}only {len(service.pods)} of {service.replicas} pods exist "
                    "(the workload's controller may be failing to make them: "
                    f"'kubectl describe' the workload of {service.name!r} in {ns!r})"
                )
            raise DeployError(
                f"service {service.name!r}: {ready}/{service.replicas} pods ready after "
                f"{timeout:g} s. Not ready: {why}. Run 'hotpod describe {service.name}'."
            )

    def _log_tail(self, pod: dict[str, Any], ns: str, kind: str) -> str:
        if kind not in ("crashloop", "init"):
            return ""
        name = pod["metadata"]["name"]
        container = podstate.runtime_container(pod)
        if kind == "init":  # the init container that failed (the first that did not succeed)
            inits = (pod.get("status") or {}).get("initContainerStatuses") or []
            failing = [c for c in inits if _exit_code(c) != 0]
            container = str((failing or inits or [{}])[0].get("name") or container)
        for previous in (True, False):
            try:
                lines = self.read_log(name, ns, tail=20, previous=previous, container=container)
            except HotpodError:
                continue
            if lines:
                return " Its log ends with:\n" + "\n".join(lines)
        return " Its log is empty."


def _exit_code(container_status: dict[str, Any]) -> int | None:
    """The exit code of a container that ran to its end; None while it has not."""
    code = ((container_status.get("state") or {}).get("terminated") or {}).get("exitCode")
    return code if isinstance(code, int) else None


def _unplaced(pod: dict[str, Any]) -> bool:
    """Pending on no node yet (the scheduler has not placed it)."""
    phase = (pod.get("status") or {}).get("phase") or "Pending"
    return phase == "Pending" and not (pod.get("spec") or {}).get("nodeName")


__all__ = ["GRACE_SECONDS", "ObserveMixin"]
