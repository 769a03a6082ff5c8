"""Streaming calls: a generator function on a pod streams its items as they are produced.

python examples/streaming.py

Calling a deployed generator function returns an iterator (`for item in remote(n)`), and its
async twin an async iterator (`async for item in await remote.aio(n)`). Each item carries the
time the pod produced it, so the output shows the first item arriving here before the pod has
produced the last one. The service is torn down at the end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import hotpod as kt

DELAY = 0.2  # seconds between items on the pod


def produce(n: int, delay: float = DELAY) -> Iterator[dict]:
    """An ordinary generator: each item is sent as soon as it is yielded."""
    for i in range(n):
        time.sleep(delay)
        yield {"i": i, "square": i * i, "produced_at": time.time()}


def consume_sync(remote: kt.RemoteFn, n: int) -> None:
    last_produced = 0.0
    first_seen = 0.0
    for item in remote(n):
        now = time.time()
        if item["i"] == 0:
            first_seen = now
        last_produced = item["produced_at"]
        lag = now - item["produced_at"]
        print(f"sync:  item {item['i']} = {item['square']} (here {lag:.3f} s after it was made)")
    ahead = last_produced - first_seen
    print(f"sync:  first item arrived {ahead:.2f} s before the last was produced")


async def consume_async(remote: kt.RemoteFn, n: int) -> None:
    first_seen = 0.0
    last_produced = 0.0
    async for item in await remote.aio(n):
        now = time.time()
        if item["i"] == 0:
            first_seen = now
        last_produced = item["produced_at"]
        print(f"async: item {item['i']} = {item['square']}")
    ahead = last_produced - first_seen
    print(f"async: first item arrived {ahead:.2f} s before the last was produced")


def main() -> None:
    remote = kt.fn(produce).to(kt.Compute(cpus="0.25"))
    try:
        consume_sync(remote, 5)
        asyncio.run(consume_async(remote, 5))
    finally:
        remote.teardown()
        print("torn down")


if __name__ == "__main__":
    main()
