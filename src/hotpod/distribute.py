"""``Distribute``: how the pods of a pool cooperate on one job, as a value.

``compute.distribute("pytorch", workers=4)`` returns a new Compute of 4 pods carrying one. The
kinds:

- ``"spmd"``: every pod runs the same code (the default broadcast), with peers discoverable;
- ``"pytorch"``: the pods form a ``torch.distributed`` group (``MASTER_ADDR``/``MASTER_PORT``,
  rendezvous port 29500 unless ``port`` says otherwise);
- ``"jax"``: the pods join ``jax.distributed`` (coordinator port 1234 by default);
- ``"ray"``: the pods form a Ray cluster (head on GCS port 6379 by default); on Kubernetes the
  pool compiles to a KubeRay ``RayCluster`` with a head and a worker group.

``workers`` is the number of pods (the head included for Ray); ``num_proc`` the processes per
pod (default 1). Values only: the pod runtime wires the framework up.

:func:`worker_env` is what every process of a distributed pool finds in its environment: the
torchrun names (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``NODE_RANK``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR``/``MASTER_PORT`` for ``"pytorch"``), JAX's (``JAX_COORDINATOR_ADDRESS``, which
``jax.distributed.initialize`` reads, and ``JAX_PROCESS_ID``/``JAX_NUM_PROCESSES``, which it does
not: pass them), and hotpod's own (``HOTPOD_DISTRIBUTE``, ``HOTPOD_NUM_PROC``, ``HOTPOD_PEERS``,
``HOTPOD_DIST_PORT``), the same names the Kubernetes compiler uses. A ``"ray"`` pool adds
``RAY_ADDRESS`` (the head's GCS), so ``ray.init()`` on the head joins the pool's cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hotpod._quantity import spec_error

KINDS = ("spmd", "pytorch", "jax", "ray")
#: kinds whose pods meet in collectives: a pod lost mid-call fails the call at once and the
#: others get fresh workers; a change of pool (size, port, peers) replaces every worker
COLLECTIVE_KINDS = ("pytorch", "jax")
#: Ray's worker processes take ports from this range: a head port must stay out of it
RAY_WORKER_PORTS = range(10002, 20000)
DEFAULT_PORTS: dict[str, int | None] = {"spmd": None, "pytorch": 29500, "jax": 1234, "ray": 6379}


@dataclass(frozen=True)
class Distribute:
    """A distribution ``kind`` with its pod count, processes per pod and rendezvous port."""

    kind: str
    workers: int | None = None
    num_proc: int | None = None
    port: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise spec_error("kind", self.kind, f"one of {', '.join(repr(k) for k in KINDS)}")
        for name in ("workers", "num_proc"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise spec_error(name, value, "a whole number >= 1, or None")
        if self.port is not None and (
            isinstance(self.port, bool)
            or not isinstance(self.port, int)
            or not 1 <= self.port <= 65535
        ):
            raise spec_error("port", self.port, "a TCP port from 1 to 65535, or None")

    @property
    def rendezvous_port(self) -> int | None:
        """``port``, else the framework's usual port (``None`` for ``"spmd"``)."""
        return self.port if self.port is not None else DEFAULT_PORTS[self.kind]

    @property
    def procs_per_pod(self) -> int:
        return self.num_proc or 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "workers": self.workers,
            "num_proc": self.num_proc,
            "port": self.port,
        }

    def __repr__(self) -> str:
        parts = [repr(self.kind)]
        parts += [f"{k}={v!r}" for k, v in self.to_dict().items() if k != "kind" and v is not None]
        return f"Distribute({', '.join(parts)})"


#: every variable :func:`worker_env` may set, for any kind (a change of kind drops the others)
DISTRIBUTION_ENV = frozenset(
    {
        "HOTPOD_DISTRIBUTE",
        "HOTPOD_NUM_PROC",
        "HOTPOD_PEERS",
        "HOTPOD_DIST_PORT",
        "WORLD_SIZE",
        "RANK",
        "LOCAL_RANK",
        "NODE_RANK",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "JAX_COORDINATOR_ADDRESS",
        "JAX_PROCESS_ID",
        "JAX_NUM_PROCESSES",
        "RAY_ADDRESS",
    }
)


def worker_env(
    kind: str,
    *,
    rank: int,
    world_size: int,
    peers: Sequence[str],
    port: int | None,
    num_proc: int = 1,
    local_rank: int = 0,
) -> dict[str, str]:
    """The environment of process ``local_rank`` of pod ``rank`` in a pool of ``world_size``
    pods running ``num_proc`` processes each (torchrun's names: ``NODE_RANK`` is the pod's rank,
    ``RANK`` the process's, ``node_rank * num_proc + local_rank``, out of
    ``WORLD_SIZE = world_size * num_proc``).

    ``peers`` are the pods' ``host:port`` in rank order (their pod servers); the first one's host
    is the rendezvous host (``MASTER_ADDR``, the JAX coordinator). ``port`` is the rendezvous
    port (``None`` for ``"spmd"``, which has none).
    """
    global_rank = rank * num_proc + local_rank
    processes = world_size * num_proc
    env = {
        "HOTPOD_DISTRIBUTE": kind,
        "HOTPOD_NUM_PROC": str(num_proc),
        "HOTPOD_PEERS": ",".join(peers),
        "WORLD_SIZE": str(processes),
        "RANK": str(global_rank),
        "LOCAL_RANK": str(local_rank),
        "NODE_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(num_proc),
    }
    if port is None:
        return env
    env["HOTPOD_DIST_PORT"] = str(port)
    host = peers[0].rpartition(":")[0] if peers else "127.0.0.1"
    if kind == "pytorch":
        env.update(MASTER_ADDR=host, MASTER_PORT=str(port))
    elif kind == "jax":
        env.update(
            JAX_COORDINATOR_ADDRESS=f"{host}:{port}",
            JAX_PROCESS_ID=str(global_rank),
            JAX_NUM_PROCESSES=str(processes),
        )
    elif kind == "ray":
        env["RAY_ADDRESS"] = f"{host}:{port}"
    return env


def formation(env: dict[str, str]) -> str:
    """What a pool's collectives were formed over, from a :func:`worker_env`: when it changes,
    a worker's process group (or Ray driver) belongs to a pool that no longer exists."""
    keys = ("HOTPOD_DISTRIBUTE", "HOTPOD_PEERS", "HOTPOD_DIST_PORT", "WORLD_SIZE", "RANK")
    return "|".join(env.get(k, "") for k in keys)


__all__ = [
    "COLLECTIVE_KINDS",
    "DEFAULT_PORTS",
    "KINDS",
    "RAY_WORKER_PORTS",
    "Distribute",
    "formation",
    "worker_env",
]
