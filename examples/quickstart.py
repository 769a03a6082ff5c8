"""hotpod quick start: deploy a function on 2 replicas and a class, call them, watch the logs.

python examples/quickstart.py          # deploy, call, tear down
python examples/quickstart.py --keep   # leave the services running for `hotpod list/logs/call`
"""

from __future__ import annotations

import os
import socket
import sys
import time

import hotpod as kt


def train(data: list[float], epochs: int) -> dict:
    """An ordinary function: each replica works on its own shard."""
    rank = int(os.environ["HOTPOD_RANK"])
    world = int(os.environ["HOTPOD_WORLD_SIZE"])
    shard = data[rank::world]
    print(f"rank {rank}/{world} on {socket.gethostname()}: training on {len(shard)} items")
    loss = 1.0
    for epoch in range(epochs):
        loss *= 0.5
        if epoch % 5 == 4:
            print(f"rank {rank}: epoch {epoch + 1} loss {loss:.4f}")
    return {"rank": rank, "items": len(shard), "loss": loss}


class Model:
    """An ordinary class: the instance lives on the pod and keeps its state between calls."""

    def __init__(self, model_name: str):
        self.model_name = model_name
        self.seen = 0
        print(f"loaded {model_name}")

    def predict(self, text: str) -> str:
        self.seen += 1
        return f"{self.model_name} says {text.upper()!r} (request {self.seen})"


def main() -> None:
    t0 = time.perf_counter()
    compute = kt.Compute(cpus="0.5", replicas=2, env_vars={"MODE": "quickstart"})
    remote_train = kt.fn(train).to(compute)
    results = remote_train(list(range(10)), epochs=10)
    print("train ->", results)

    remote_model = kt.cls(Model).to(kt.Compute(cpus="0.5"), init_args={"model_name": "tiny"})
    print("predict ->", remote_model.predict("hello world"))
    print("predict ->", remote_model.predict("hello again"))

    # a second .to() with nothing changed touches nothing: the instance keeps its state
    remote_model = kt.cls(Model).to(kt.Compute(cpus="0.5"), init_args={"model_name": "tiny"})
    print("predict ->", remote_model.predict("still here?"))
    print(f"done in {time.perf_counter() - t0:.2f} s")

    if "--keep" in sys.argv:
        print("services left running: try 'hotpod list', 'hotpod logs train',")
        print("'hotpod call model predict --args \"[\\\"hi\\\"]\"' and 'hotpod teardown --all'")
    else:
        remote_train.teardown()
        remote_model.teardown()
        print("torn down (run with --keep to leave the services running)")


if __name__ == "__main__":
    main()
