"""The types that cross the backend seam."""

from __future__ import annotations

import abc
import builtins
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hotpod._files import tail
from hotpod.errors import DeployError, HotpodError, ServiceNotFoundError
from hotpod.loglines import LogFilter, LogLine
from hotpod.store import Store

if TYPE_CHECKING:
    from hotpod.client import PodClient
    from hotpod.compute import Compute


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
    #: the Compute itself, for backends that compile it (Kubernetes manifests); local ignores it
    compute: Compute | None = field(default=None, compare=False)


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
    #: ``host:port`` where the pod's peers reach it (distributed pools), when not the url's
    address: str | None = None

    @property
    def peer(self) -> str:
        """``host:port`` where the pod's peers reach it: ``address``, else its URL's."""
        from urllib.parse import urlsplit

        return self.address or urlsplit(self.url).netloc or self.url


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
    #: runs pools of existing pods (``Compute(selector=...)``) and workloads brought with
    #: ``Compute.from_manifest``; a backend that cannot says so before anything is applied
    adopts_pods: bool = False
    applies_manifests: bool = False

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
    def teardown(self, name: str, volumes: bool = False) -> bool:
        """Delete the service and its pods; False if there was none. With ``volumes`` also the
        claims made for its volumes (a backend that makes none raises HotpodError)."""

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

    def diagnose(
        self,
        service: ServiceInfo,
        pending: Sequence[PodInfo],
        restarts0: Mapping[str, int],
        waited: float,
        timeout: float,
    ) -> None:
        """Raise DeployError when a pod the deploy waits for will not come up, saying why.

        Called about once a second while ``.to()`` waits for ``pending`` (the service as
        ``get`` returned it just before); ``restarts0`` holds each pod's restarts when the wait
        began, ``waited`` the seconds since, ``timeout`` the launch timeout. The default: a
        pod that crashed 3 times since is in a crash loop; its log's last lines say why.
        """
        for p in pending:
            if p.restarts - restarts0.get(p.name, 0) >= 3:
                raise DeployError(
                    f"pod {p.name} of {service.name!r} keeps crashing ({p.restarts} restarts, "
                    f"last exit code {p.last_exit}). Its log ends with:\n{tail(p.log_path)}"
                )

    def ship(self, service: ServiceInfo, client: PodClient, spec: dict[str, Any]) -> None:
        """Before a launch: give each pod what ``spec`` names in the store and the pod lacks.

        The default does nothing: the pods read the backend's own store (``store()``).
        """
        return None

    def set_launch(self, name: str, spec: dict[str, Any]) -> ServiceInfo:
        """Before a launch of an autoscaled service: hand ``spec`` to whatever starts its pods,
        so that pods started later serve it too. Returns the service with the pods it has now
        (the launch goes to those). The default keeps nothing and returns ``get(name)``.
        """
        return self.get(name)

    def launched(self, service: ServiceInfo, spec: dict[str, Any]) -> None:
        """After every pod of ``service`` loaded ``spec``: keep it where pods that start later
        find it (a replacement, a scale-up). The default does nothing (the local backend's
        pods resume their own launch; its autoscaled pods get theirs from ``set_launch``).
        """
        return None

    def close(self) -> None:
        """Close the backend's connections (it opens new ones if used again)."""
        return None

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


def pick_pods(service: str, pod: str | None, pods: Sequence[str]) -> builtins.list[str]:
    """``pods`` when ``pod`` is None, else ``[pod]``; ServiceNotFoundError naming the pods
    there are when ``pod`` is not one of them."""
    if pod is None:
        return list(pods)
    if pod not in pods:
        raise ServiceNotFoundError(
            f"service {service!r} has no pod {pod!r}; its pods: {', '.join(pods) or 'none'}"
        )
    return [pod]
