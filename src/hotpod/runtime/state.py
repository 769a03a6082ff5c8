"""What the server of one pod knows (``PodState``) and where it keeps its files."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from hotpod.runtime.loader import Loaded
from hotpod.runtime.metrics import PodMetrics
from hotpod.runtime.threads import CallThreads
from hotpod.store import Store


@dataclass
class PodState:
    """Everything the server of one pod knows."""

    pod: str
    rank: int
    service: str
    token: str
    root: Path
    store: Store
    pod_log: TextIO
    max_body: int = 4 << 30
    threads: int = 64
    loaded: Loaded | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    launch_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    call_threads: CallThreads | None = None
    started: float = field(default_factory=time.time)
    venv: Path | None = None  # the service's virtual environment for pip steps
    request_restart: Callable[[], None] | None = None  # ask the supervisor for a new worker
    idle_reason: str | None = None  # why it serves no code (when it knows), for calls meanwhile
    metrics: PodMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = PodMetrics(self.service, self.pod, self.rank)

    @property
    def launch_file(self) -> Path:
        return self.root / ".hotpod" / "launch.json"

    @property
    def next_launch_file(self) -> Path:
        """The launch a successor worker must load (launch.json keeps the one being served)."""
        return self.root / ".hotpod" / "launch.next.json"

    @property
    def launch_error_file(self) -> Path:
        """Why the last launch failed, when it failed where no request could answer."""
        return self.root / ".hotpod" / "launch_error.json"

    @property
    def code_dir(self) -> Path:
        return self.root / ".hotpod" / "code"

    def pool(self) -> CallThreads:
        if self.call_threads is None:
            self.call_threads = CallThreads(self.threads)
        return self.call_threads


def read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON file the runtime keeps, or None when it is absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        print(f"hotpod: ignoring unreadable {path}: {exc}", flush=True)
        return None
    return data if isinstance(data, dict) else None
