"""Functions and classes the async and streaming end-to-end tests deploy (imported by module
name on the pods)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path


def count(n: int, delay: float = 0.0) -> Iterator[int]:
    """A sync generator that prints as it goes."""
    for i in range(n):
        if delay:
            time.sleep(delay)
        print(f"producing {i}")
        yield i


async def acount(n: int, delay: float = 0.0) -> AsyncIterator[dict]:
    for i in range(n):
        await asyncio.sleep(delay)
        yield {"i": i, "rank": int(os.environ["HOTPOD_RANK"])}


def count_then_fail(n: int) -> Iterator[int]:
    yield from range(n)
    raise ValueError(f"failed after {n} items")


def make_counter(n: int) -> Iterator[tuple[int, int]]:
    """A plain function that returns a generator (of tuples: pickled items)."""
    return ((i, i * i) for i in range(n))


def produce_until_stopped(path: str, delay: float) -> Iterator[int]:
    """Counts the items it produced in ``path``; notes when it was closed."""
    i = 0
    try:
        while True:
            Path(path).write_text(str(i))
            yield i
            i += 1
            time.sleep(delay)
    finally:
        Path(path + ".closed").write_text(str(i))


async def aproduce_until_stopped(path: str, delay: float) -> AsyncIterator[int]:
    i = 0
    try:
        while True:
            Path(path).write_text(str(i))
            yield i
            i += 1
            await asyncio.sleep(delay)
    except asyncio.CancelledError:
        Path(path + ".cancelled").write_text(str(i))
        raise


async def wait_or_note_cancel(path: str, seconds: float) -> str:
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        Path(path).write_text("cancelled")
        raise
    return "finished"


def sleep_then_note(path: str, seconds: float) -> str:
    time.sleep(seconds)
    Path(path).write_text("finished")
    return "finished"


async def asleep(seconds: float, x: int) -> int:
    await asyncio.sleep(seconds)
    return x


def square(x: int) -> int:
    return x * x


class Streamer:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def words(self, n: int) -> Iterator[str]:
        for i in range(n):
            yield f"{self.prefix}{i}"

    async def aupper(self, text: str) -> str:
        await asyncio.sleep(0.001)
        return text.upper()
