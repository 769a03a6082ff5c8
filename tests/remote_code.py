"""Functions and classes the end-to-end tests deploy (imported by module name on the pods)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path


class CustomError(Exception):
    pass


def train(data, epochs):
    rank = int(os.environ["HOTPOD_RANK"])
    print(f"training on rank {rank} for {epochs} epochs")
    return {
        "rank": rank,
        "loss": sum(data) / (epochs + rank),
        "world": os.environ["HOTPOD_WORLD_SIZE"],
    }


def echo(*args, **kwargs):
    return args, kwargs


async def async_add(a, b):
    await asyncio.sleep(0.01)
    return a + b


def fail(kind: str = "value"):
    if kind == "value":
        raise ValueError("bad value on the pod")
    if kind == "custom":
        raise CustomError("custom failure")

    class Local(Exception):  # not importable on the client
        pass

    raise Local("local failure")


def fail_on_rank(rank: int):
    if int(os.environ["HOTPOD_RANK"]) == rank:
        raise RuntimeError(f"rank {rank} refuses")
    return int(os.environ["HOTPOD_RANK"])


def sleep(seconds: float):
    time.sleep(seconds)
    return seconds


def env(*names: str):
    return {n: os.environ.get(n) for n in names}


def volume_write(mount: str, name: str, text: str):
    root = Path(os.environ["HOTPOD_POD_ROOT"]) / mount.lstrip("/")
    (root / name).write_text(text)
    return str(root)


def volume_read(mount: str, name: str):
    root = Path(os.environ["HOTPOD_POD_ROOT"]) / mount.lstrip("/")
    return (root / name).read_text()


def pid():
    return os.getpid()


class Model:
    def __init__(self, model_name: str):
        self.model_name = model_name
        self.calls = 0

    def predict(self, text: str):
        self.calls += 1
        return f"{self.model_name}:{text.upper()}"

    def count(self):
        return self.calls


def log_then_sleep(seconds: float):
    import logging

    print("first line", flush=True)
    logging.getLogger("user").warning("a warning from logging")
    time.sleep(seconds)
    print("last line")
    return "done"


def blocking(seconds: float):
    start = time.time()
    time.sleep(seconds)
    return start


class BadInit:
    def __init__(self, fail: bool):
        if fail:
            raise RuntimeError("init refused")

    def ok(self):
        return "ok"


def exit_now(code: int):
    import sys

    sys.exit(code)


MODE_AT_IMPORT = os.environ.get("MODE_AT_IMPORT")


def mode_at_import():
    return MODE_AT_IMPORT, os.environ.get("HOTPOD_WORLD_SIZE")
