"""Functions the distributed end-to-end tests deploy (imported by module name on the pods).

torch and jax are imported inside the functions, on the pods, so that importing this module
costs nothing where they are not installed.
"""

from __future__ import annotations

import os

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
