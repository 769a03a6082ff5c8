"""Functions the distributed end-to-end tests deploy (imported by module name on the pods).

torch and jax are imported inside the functions, on the pods, so that importing this module
costs nothing where they are not installed.
"""

from __future__ import annotations

import os
from typing import Any

from hotpod.distribute import DISTRIBUTION_ENV

#: what the tests look at: every variable a distribution may set, and the pod's own
DIST_ENV = (*sorted(DISTRIBUTION_ENV), "HOTPOD_RANK", "HOTPOD_WORLD_SIZE", "HOTPOD_PORT")


def dist_env() -> dict[str, str | None]:
    """The distribution environment this pod's worker sees."""
    return {k: os.environ.get(k) for k in DIST_ENV}


def torch_all_reduce() -> dict[str, float | int]:
    """Each rank contributes rank + 1 to a gloo all_reduce; every rank gets the sum."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():  # env://: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE
        dist.init_process_group("gloo")
    t = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {"rank": dist.get_rank(), "world": dist.get_world_size(), "sum": float(t.item())}


def jax_global_sum() -> dict[str, float | int]:
    """A global array sharded over the processes (one shard of rank + 1 each), summed by jit."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    if not jax.distributed.is_initialized():  # reads JAX_COORDINATOR_ADDRESS; not the others
        jax.distributed.initialize(
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
            initialization_timeout=120,
        )
    mesh = Mesh(np.array(jax.devices()), ("p",))
    sharding = NamedSharding(mesh, PartitionSpec("p"))
    local = np.full((jax.local_device_count(),), jax.process_index() + 1, dtype=np.float32)
    x = jax.make_array_from_process_local_data(sharding, local)
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, PartitionSpec()))(x)
    return {
        "rank": jax.process_index(),
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "sum": float(total),
    }


def ray_nodes() -> dict[str, Any]:
    """On the head: 2 tasks in a STRICT_SPREAD placement group, each returning its node's id."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if not ray.is_initialized():
        ray.init()  # RAY_ADDRESS names the pool's head

    @ray.remote(num_cpus=1)
    def node_id() -> str:
        return str(ray.get_runtime_context().get_node_id())

    group = placement_group([{"CPU": 1}] * 2, strategy="STRICT_SPREAD")
    ray.get(group.ready(), timeout=120)
    try:
        ids = ray.get(
            [
                node_id.options(
                    scheduling_strategy=PlacementGroupSchedulingStrategy(group, i)
                ).remote()
                for i in range(2)
            ],
            timeout=120,
        )
    finally:
        remove_placement_group(group)
    return {
        "rank": os.environ.get("RANK"),
        "address": os.environ.get("RAY_ADDRESS"),
        "alive_nodes": sum(1 for n in ray.nodes() if n["Alive"]),
        "task_nodes": ids,
    }


def torch_all_reduce_loop(seconds: float) -> dict[str, float | int]:
    """All-reduces in a loop for ``seconds`` (a pod killed meanwhile leaves the others in one)."""
    import time

    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    end = time.monotonic() + seconds
    while True:  # every rank stops at the same step: once one of them is past its end
        t = torch.tensor([float(dist.get_rank() + 1), float(time.monotonic() >= end)])
        dist.all_reduce(t)
        if t[1].item() > 0:
            break
    return {"rank": dist.get_rank(), "world": dist.get_world_size(), "sum": float(t[0].item())}


def pid_after(seconds: float) -> int:
    """This worker's pid, after sleeping ``seconds``."""
    import time

    time.sleep(seconds)
    return os.getpid()


class Member:
    """An instance with a slow ``__init__`` (or one that fails), a slow method and one that
    raises: what the tests of calls on a live instance need."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        import time

        time.sleep(delay)
        if fail:
            raise RuntimeError("init refused by Member")
        self.ready_at = time.time()

    def ready_time(self) -> float:
        return self.ready_at

    def wait(self, seconds: float) -> str:
        import time

        time.sleep(seconds)
        return "waited"

    def fail(self) -> None:
        raise ValueError("Member.fail was called")


def raise_on_rank(rank: int, seconds: float) -> int:
    """Rank ``rank`` raises at once; the others sleep ``seconds`` (as if in a collective)."""
    import time

    if int(os.environ["RANK"]) == rank:
        raise ValueError(f"rank {rank} gave up")
    time.sleep(seconds)
    return os.getpid()


def rank_echo(value: Any) -> tuple[int, Any]:
    """Prints a line, then returns (this pod's rank, ``value``); rank 3 raises for "raise"."""
    rank = int(os.environ["HOTPOD_RANK"])
    print(f"echo from rank {rank}")
    if value == "raise" and rank == 3:
        raise ValueError("rank 3 refuses")
    return rank, value
