"""The environment ``hotpod shell`` gives, composed from a pod's process and root (no pods)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotpod.backends.base import PodInfo, ServiceInfo
from hotpod.backends.local.backend import LocalBackend
from hotpod.config import Settings
from hotpod.errors import HotpodError, ServiceNotFoundError


@pytest.fixture
def backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalBackend]:
    home = tmp_path / "home"
    root = home / "pods" / "svc" / "svc-0"
    (root / ".hotpod" / "code" / "current" / "src").mkdir(parents=True)
    launch = {"env": {"FROM_IMAGE": "1"}, "code": {"paths": ["src"]}}
    (root / ".hotpod" / "launch.json").write_text(json.dumps(launch))
    venv = home / "venvs" / "svc"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    env = {
        **os.environ,
        "HOTPOD_TOKEN": "secret",
        "HOTPOD_POD_ROOT": str(root),
        "HOTPOD_VENV": str(venv),
    }
    sleeper = subprocess.Popen(["sleep", "60"], env=env)  # plays the pod's process
    pods = (
        PodInfo("svc-0", 0, "http://127.0.0.1:1", "running", pid=sleeper.pid),
        PodInfo("svc-1", 1, "http://127.0.0.1:2", "restarting", pid=None),
    )
    info = ServiceInfo("svc", "secret", 2, pods, created_at=0.0)
    b = LocalBackend(Settings(home=home, backend="local", in_pod=False))
    monkeypatch.setattr(b, "get", lambda name: info)
    try:
        yield b
    finally:
        sleeper.kill()
        sleeper.wait()


def test_shell_env_has_code_tree_image_env_and_venv_but_no_token(backend: LocalBackend) -> None:
    sh = backend.shell("svc")
    assert sh.pod == "svc-0" and sh.cwd.endswith("svc-0/.hotpod/code/current")
    assert "HOTPOD_TOKEN" not in sh.env
    assert sh.env["FROM_IMAGE"] == "1"
    assert sh.env["PYTHONPATH"].split(os.pathsep)[0] == f"{sh.cwd}/src"
    assert sh.venv is not None and sh.env["PATH"].startswith(f"{sh.venv}/bin")
    assert sh.env["VIRTUAL_ENV"] == sh.venv


def test_shell_refuses_pods_that_do_not_run(backend: LocalBackend) -> None:
    with pytest.raises(HotpodError, match=r"pod svc-1 is not running \(restarting\)"):
        backend.shell("svc", "svc-1")
    with pytest.raises(ServiceNotFoundError, match="its pods: svc-0, svc-1"):
        backend.shell("svc", "svc-9")
