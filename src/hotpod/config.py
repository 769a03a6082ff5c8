"""hotpod's configuration, read once from the environment into one typed object."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from hotpod.errors import ConfigError

BACKENDS = ("local",)


@dataclass(frozen=True)
class Settings:
    """Where hotpod keeps its state and which backend it uses.

    ``HOTPOD_HOME``     directory for the local controller, pods, store and tokens (``~/.hotpod``)
    ``HOTPOD_BACKEND``  ``local`` (the default)
    ``HOTPOD_POD``      set inside a pod; makes ``.to()`` return the local object
    """

    home: Path
    backend: str
    in_pod: bool

    @property
    def store_dir(self) -> Path:
        return self.home / "store"

    @property
    def pods_dir(self) -> Path:
        return self.home / "pods"

    @property
    def volumes_dir(self) -> Path:
        return self.home / "volumes"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def controller_socket(self) -> Path:
        return self.home / "controller.sock"


def _read() -> Settings:
    home = Path(os.environ.get("HOTPOD_HOME") or Path.home() / ".hotpod").expanduser().absolute()
    backend = os.environ.get("HOTPOD_BACKEND", "local").strip().lower() or "local"
    if backend not in BACKENDS:
        raise ConfigError(
            f"HOTPOD_BACKEND={backend!r}: expected one of {', '.join(BACKENDS)}. "
            "Unset it to use the local backend."
        )
    return Settings(home=home, backend=backend, in_pod=os.environ.get("HOTPOD_POD") == "1")


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The settings of this process (read on first use; ``reload_settings()`` re-reads them)."""
    return _read()


def reload_settings() -> Settings:
    """Forget the cached settings and read the environment again (tests change HOTPOD_HOME)."""
    settings.cache_clear()
    return settings()
