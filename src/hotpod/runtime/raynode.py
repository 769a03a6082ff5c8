"""A pod's Ray node, for ``distribute("ray")`` on the local backend.

Rank 0's pod runs the Ray head (GCS on the pool's rendezvous port), the others run Ray worker
nodes joined to it, each started with ``ray start`` by the pod's worker while it loads a launch:

- ``--node-ip-address 127.0.0.1``: every pod shares this host;
- ``--num-cpus`` from the Compute's ``cpus``, rounded up (``HOTPOD_RAY_NUM_CPUS``);
- the dashboard off (``--include-dashboard=false``), usage stats off, ``RAY_AUTH_MODE=disabled``;
- the node's temp dir under the pod root (``.hotpod/ray``), reached through a short symlink in
  the system temp dir: Ray's Unix sockets live there and their paths may not pass 107 bytes.
  The link goes when the node stops (:func:`stop`, or :func:`forget` once the controller
  killed the pod); links left dangling all the same (a controller killed with its pods, a
  pod root deleted) are removed by the next node that starts: only this user's links to a
  pod's ``.hotpod/ray``, and only those whose target is gone.

The Ray processes outlive the worker that started them (a worker restart keeps the cluster)
and stay in the pod's process group, so they stop with the pod: the local controller kills a
stopped or dead pod's whole group. A launch with another head address, size or CPU count stops
the node and starts a new one (:func:`ensure`); a launch of another kind stops it (:func:`stop`).
``ray`` itself is only run, never imported here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from hotpod._ports import free_port

#: how long a worker node waits for the head's GCS to accept connections
HEAD_TIMEOUT = 120.0
START_TIMEOUT = 180.0

_lock = threading.Lock()


class RayNodeError(Exception):
    """``ray start`` failed; ``tail`` is the end of its output."""

    def __init__(self, message: str, tail: str = "") -> None:
        super().__init__(message)
        self.tail = tail


def node_dir(root: Path) -> Path:
    """Where the node keeps its files: under the pod root."""
    return root / ".hotpod" / "ray"


def temp_link(root: Path) -> Path:
    """The short path Ray is given as its temp dir: a symlink to :func:`node_dir`."""
    digest = hashlib.sha256(str(node_dir(root)).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"hotpod-ray-{digest}"


def processes(root: Path) -> list[int]:
    """The pids of the Ray processes of this pod's node (their command lines name its dir)."""
    import psutil

    link = str(temp_link(root))
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(link in part for part in proc.info["cmdline"] or ()):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def _wait_for(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def ensure(root: Path, env: Mapping[str, str], emit: Callable[[str], None]) -> str:
    """Make this pod's Ray node match ``env`` (a ``"ray"`` pool's worker environment):
    ``"running"`` when it already did, else ``"started"``. Raises :class:`RayNodeError`."""
    rank = int(env.get("RANK", "0"))
    host, _, port_text = env["RAY_ADDRESS"].rpartition(":")
    port = int(port_text)
    cpus = max(1, int(env.get("HOTPOD_RAY_NUM_CPUS") or 1))
    want = {
        "head": rank == 0,
        "address": f"{host}:{port}",
        "cpus": cpus,
        "peers": env.get("HOTPOD_PEERS"),
    }
    state_file = node_dir(root) / "node.json"
    with _lock:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(state_file.read_text()) == want and processes(root):
                return "running"
        stop(root)
        _start(root, want, host, port, cpus, env, emit)
        state_file.write_text(json.dumps(want))
        return "started"


def _start(
    root: Path,
    want: dict[str, object],
    host: str,
    port: int,
    cpus: int,
    env: Mapping[str, str],
    emit: Callable[[str], None],
) -> None:
    directory = node_dir(root)
    directory.mkdir(parents=True, exist_ok=True)
    _sweep_links()
    link = temp_link(root)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(directory, target_is_directory=True)
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--node-ip-address", "127.0.0.1"]
    cmd += ["--num-cpus", str(cpus), "--temp-dir", str(link), "--disable-usage-stats"]
    cmd += ["--dashboard-agent-listen-port", str(free_port())]
    if want["head"]:
        what = f"Ray head on port {port}"
        cmd += ["--head", "--port", str(port), "--include-dashboard=false"]
        cmd += ["--dashboard-port", str(free_port())]
    else:
        what = f"Ray worker node joined to {host}:{port}"
        emit(f"waiting for the Ray head at {host}:{port}")
        if not _wait_for(host, port, HEAD_TIMEOUT):
            raise RayNodeError(
                f"the Ray head at {host}:{port} (rank 0's pod) did not accept connections "
                f"within {HEAD_TIMEOUT:g} s; see rank 0's log ('hotpod logs SERVICE --pod ...-0')"
            )
        cmd += ["--address", f"{host}:{port}"]
    run_env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    run_env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    emit(f"starting the {what} ({cpus} CPU{'s' if cpus != 1 else ''})")
    t0 = time.perf_counter()
    try:
        out = subprocess.run(
            cmd,
            env=run_env,
            cwd=directory,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        stop(root)
        raise RayNodeError(
            f"'ray start' for the {what} did not finish in {START_TIMEOUT:g} s"
        ) from exc
    if out.returncode != 0:
        stop(root)
        tail = "\n".join((out.stdout + out.stderr).splitlines()[-30:])
        raise RayNodeError(f"'ray start' for the {what} failed (exit {out.returncode})", tail)
    emit(f"started the {what} in {time.perf_counter() - t0:.1f} s")


def _sweep_links() -> None:
    """Remove the dangling links of pods that are gone (a killed pod cannot remove its own):
    only links this user made to a pod's node dir, whose target no longer exists."""
    uid = os.getuid()
    for link in Path(tempfile.gettempdir()).glob("hotpod-ray-*"):
        with contextlib.suppress(OSError):
            if (
                link.is_symlink()
                and link.lstat().st_uid == uid
                and Path(os.readlink(link)).parts[-2:] == (".hotpod", "ray")
                and not link.exists()
            ):
                link.unlink()


def forget(root: Path) -> None:
    """After the pod's processes were killed (its node with them): remove its link and the
    record of its node."""
    link = temp_link(root)
    with contextlib.suppress(OSError):
        if link.is_symlink():
            link.unlink()
    with contextlib.suppress(OSError):
        (node_dir(root) / "node.json").unlink(missing_ok=True)


def stop(root: Path, grace: float = 3.0) -> int:
    """Stop this pod's Ray node (if any): SIGTERM, then SIGKILL after ``grace``. Returns how
    many processes it found."""
    import psutil

    pids = processes(root)
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            proc.send_signal(signal.SIGTERM)
            procs.append(proc)
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace)
    forget(root)
    return len(pids)


def running(root: Path) -> bool:
    """Whether this pod was told to run a Ray node (it may have died since)."""
    return (node_dir(root) / "node.json").exists()


__all__ = [
    "RayNodeError",
    "ensure",
    "forget",
    "node_dir",
    "processes",
    "running",
    "stop",
    "temp_link",
]
