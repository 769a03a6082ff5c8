"""The types that cross the backend seam."""

from __future__ import annotations

import abc
import builtins
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hotpod.errors import HotpodError
from hotpod.loglines import LogFilter, LogLine
from hotpod.store import Store


@dataclass(frozen=True)
class Plan:
    """A backend-neutral description of a pool: what ``.to()`` asks the backend to make true.

    ``template`` is everything that defines a pod (resources, env, volumes...): when it changes,
    pods are replaced. ``replicas`` changes only scale the pool.
    """

    name: str
    replicas: int
    template: dict[str, Any]
    labels: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PodInfo:
    name: str
    rank: int
    url: str
    status: str  # starting | running | restarting | stopped
    restarts: int = 0
    pid: int | None = None
    last_exit: int | None = None
    log_path: str | None = None


@dataclass(frozen=True)
class PodStats:
    """What a pod uses now (``hotpod top``), beside what it asked for."""

    service: str
    pod: str
    status: str
    cpu_percent: float | None  # of one core, over the sampling interval; None: not running
    rss_bytes: int | None  # resident memory of the pod's processes, summed
    processes: int = 0
    cpus: float | None = None  # requested
    memory_bytes: int | None = None  # requested


@dataclass(frozen=True)
class PodShell:
    """How to open a shell in a pod's environment: its working directory and variables."""

    pod: str
    cwd: str
    env: dict[str, str]
    venv: str | None = None


@dataclass(frozen=True)
class ServiceInfo:
    name: str
    token: str
    replicas: int
    pods: tuple[PodInfo, ...]
    created_at: float
    labels: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    template: dict[str, Any] = field(default_factory=dict)
    #: what the last apply did: created | replaced | scaled | unchanged ("" when not applied)
    rollout: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServiceInfo:
        pods = tuple(PodInfo(**p) for p in d.get("pods", ()))
        return cls(
            name=d["name"],
            token=d["token"],
            replicas=d["replicas"],
            pods=pods,
            created_at=d["created_at"],
            labels=d.get("labels") or {},
            meta=d.get("meta") or {},
            template=d.get("template") or {},
            rollout=d.get("rollout", ""),
        )


class Backend(abc.ABC):
    """Where pods come from. Implementations: ``local`` (embedded), later ``kubernetes``."""

    name: str

    @abc.abstractmethod
    def store(self) -> Store:
        """The content-addressed store the pods of this backend read code from."""

    @abc.abstractmethod
    def check(self, plan: Plan) -> None:
        """Raise ResourceUnavailableError when the backend can never meet the plan."""

    @abc.abstractmethod
    def apply(self, plan: Plan) -> ServiceInfo:
        """Create the pool or patch it to match the plan; returns at once (pods may be starting)."""

    @abc.abstractmethod
    def get(self, name: str) -> ServiceInfo:
        """The service; raises ServiceNotFoundError."""

    @abc.abstractmethod
    def list(self) -> list[ServiceInfo]: ...

    @abc.abstractmethod
    def teardown(self, name: str) -> bool:
        """Delete the service and its pods; False if there was none."""

    @abc.abstractmethod
    def teardown_all(self) -> builtins.list[str]:
        """Delete every service; returns their names."""

    @abc.abstractmethod
    def logs(
        self,
        name: str,
        pod: str | None = None,
        follow: bool = False,
        tail: int | None = None,
        keep: LogFilter | None = None,
    ) -> Iterator[LogLine]:
        """The lines of the service's pod logs, running or not (logs outlive their pods).

        Without ``follow``, the pods' lines merged in time order; ``keep`` selects lines,
        ``tail`` keeps each pod's last N of those. ``follow`` goes on with new lines as they
        come. Raises ServiceNotFoundError when there are no logs.
        """

    def purge_logs(self, name: str) -> bool:
        """Delete the kept logs of a service (emptied while it runs); False if it had none."""
        raise HotpodError(f"the {self.name} backend does not keep logs to purge")

    def logged_services(self) -> builtins.list[str]:
        """Names of the services whose logs are kept, running or not."""
        return []

    def top(self, name: str | None = None, interval: float = 0.5) -> builtins.list[PodStats]:
        """CPU and memory use of the pods of one service, or of every service."""
        raise HotpodError(f"the {self.name} backend cannot show pod resource use")

    def shell(self, name: str, pod: str | None = None) -> PodShell:
        """Where and with which environment a shell in the pod runs (``hotpod shell``)."""
        raise HotpodError(f"the {self.name} backend cannot open a shell in a pod")
