from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from k8sfake.fixture import fake_cluster  # noqa: F401  (the fake Kubernetes cluster's fixture)


def hotpod_processes(home: Path) -> list[psutil.Process]:
    """Processes started for this HOTPOD_HOME (controller, supervisors, workers)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if "hotpod." not in cmd:
                continue
            if proc.environ().get("HOTPOD_HOME") == str(home):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="session")
def hotpod_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A HOTPOD_HOME of its own for the session; everything in it is torn down at the end."""
    from hotpod.config import reload_settings
    from hotpod.services import teardown

    home = tmp_path_factory.mktemp("hotpod-home")
    old = os.environ.get("HOTPOD_HOME")
    os.environ["HOTPOD_HOME"] = str(home)
    reload_settings()
    try:
        yield home
    finally:
        try:
            teardown(all=True)
        finally:
            from hotpod.backends import close_backends

            close_backends()
            for proc in hotpod_processes(home):
                proc.kill()
            if old is None:
                os.environ.pop("HOTPOD_HOME", None)
            else:
                os.environ["HOTPOD_HOME"] = old
            reload_settings()
