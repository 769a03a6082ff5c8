"""A 2-pod PyTorch pool: every rank joins one process group and runs a gloo all_reduce.

pip install torch==2.13.0       # CPU is enough
python examples/distributed_torch.py

`distribute("pytorch", workers=2)` gives each pod torchrun's variables (MASTER_ADDR,
MASTER_PORT, RANK, WORLD_SIZE), so `init_process_group("gloo")` with no arguments joins the
pool. A call runs on both pods at once and returns one result per rank, in rank order
(`kt.Results`: a list that also knows each result's rank and pod). The service is torn down at
the end.
"""

from __future__ import annotations

import importlib.util
import sys

import hotpod as kt


def all_reduce(values: list[float]) -> dict:
    """Each rank contributes `values` scaled by (rank + 1); all_reduce sums them across ranks."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():  # the worker lives on between calls, and so does the group
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = torch.tensor(values) * (rank + 1)
    summed = mine.clone()
    dist.all_reduce(summed)  # op=SUM by default
    return {"rank": rank, "world": world, "sent": mine.tolist(), "sum": summed.tolist()}


def main() -> None:
    if importlib.util.find_spec("torch") is None:
        sys.exit("this example needs torch: pip install torch==2.13.0 (the CPU build is enough)")

    compute = kt.Compute(cpus="0.5").distribute("pytorch", workers=2)
    remote = kt.fn(all_reduce).to(compute)
    try:
        results = remote([1.0, 2.0, 3.0])
        print("ranks:", results.ranks, "pods:", results.pods)
        for rank, out in results.by_rank().items():
            print(f"rank {rank}/{out['world']}: sent {out['sent']} -> all_reduce {out['sum']}")
        # every rank holds the same sum: 1x + 2x the values
        assert all(out["sum"] == [3.0, 6.0, 9.0] for out in results)
        print("all ranks agree:", results[0]["sum"])
    finally:
        remote.teardown()
        print("torn down")


if __name__ == "__main__":
    main()
