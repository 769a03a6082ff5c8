"""The client side of the local backend: talks to the local controller over its Unix socket."""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from hotpod._files import tail
from hotpod.backends.base import Backend, Plan, ServiceInfo
from hotpod.config import Settings
from hotpod.errors import HotpodError, ResourceUnavailableError, ServiceNotFoundError
from hotpod.store import LocalStore, Store

CONTROLLER_START_TIMEOUT = 20.0


def machine_gpus() -> int:
    """GPUs this machine has (CUDA_VISIBLE_DEVICES, else nvidia-smi), 0 when none."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


class LocalBackend(Backend):
    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: httpx.Client | None = None

    # -- controller -------------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        if self._client is None:
            transport = httpx.HTTPTransport(uds=str(self.settings.controller_socket))
            self._client = httpx.Client(
                transport=transport, base_url="http://controller", timeout=60
            )
        return self._client

    def _ping(self) -> bool:
        if not self.settings.controller_socket.exists():
            return False
        try:
            return self._http().get("/ping", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _log_file(self) -> Path:
        return self.settings.home / "logs" / "controller.log"

    def _known(self) -> bool:
        """True when a controller answers, or one is started because pods may be running.

        A controller that died leaves its registry behind; starting a new one adopts the pods
        still alive, so listing and teardown never miss them.
        """
        if self._ping():
            return True
        if not _registry_has_services(self.settings.home / "registry.sqlite"):
            return False
        self.ensure_controller()
        return True

    def ensure_controller(self) -> None:
        """Start the controller of this HOTPOD_HOME unless one is answering."""
        if self._ping():
            return
        home = self.settings.home
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        home.chmod(0o700)  # the controller's socket serves tokens and secrets
        log = self._log_file()
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(home / "controller.spawn.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._ping():
                return
            env = {**os.environ, "HOTPOD_HOME": str(home)}
            env.pop("HOTPOD_POD", None)
            with open(log, "ab") as fh:
                subprocess.run(  # returns at once: the controller forks itself away
                    [sys.executable, "-m", "hotpod.backends.local.controller", "--daemon"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=home,
                    check=False,
                )
            deadline = time.monotonic() + CONTROLLER_START_TIMEOUT
            while time.monotonic() < deadline:
                if self._ping():
                    return
                time.sleep(0.02)
        raise HotpodError(
            f"the local controller did not start within {CONTROLLER_START_TIMEOUT:.0f} s. "
            f"Its log ({log}) ends with:\n{tail(log, 20)}"
        )

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        if self.settings.controller_socket.exists():  # usually it answers: ask it first
            try:
                return self._http().request(method, path, **kw)
            except (httpx.ConnectError, httpx.RemoteProtocolError):
                pass
        self.ensure_controller()
        try:
            return self._http().request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise HotpodError(
                f"lost the local controller ({exc}); see {self._log_file()} and run the command "
                "again (the controller restarts on demand)"
            ) from exc

    def stop_controller(self) -> bool:
        """Ask the controller to exit (pods of live services keep running). True if one ran."""
        if not self._ping():
            return False
        pid = self._http().get("/ping").json().get("pid")
        try:
            self._http().post("/shutdown")
        except httpx.HTTPError:
            pass
        deadline = time.monotonic() + 10
        while pid and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        return True

    # -- Backend ----------------------------------------------------------------------------

    def store(self) -> Store:
        return LocalStore(self.settings.store_dir)

    def check(self, plan: Plan) -> None:
        tpl = plan.template
        gpus = int(tpl.get("gpus") or 0)
        if gpus:
            have = machine_gpus()
            if gpus > have:
                raise ResourceUnavailableError(
                    f"service {plan.name!r} asks for {gpus} GPU(s) per pod, but this machine has "
                    f"{have}. Use a Compute without gpus= locally, or set HOTPOD_BACKEND to a "
                    "cluster backend."
                )
        cpus = tpl.get("cpus")
        if cpus and cpus > (os.cpu_count() or 1):
            raise ResourceUnavailableError(
                f"service {plan.name!r} asks for {cpus:g} CPUs per pod, but this machine has "
                f"{os.cpu_count()}. Ask for at most {os.cpu_count()} (e.g. cpus='0.5')."
            )
        mem = tpl.get("memory_bytes")
        if mem:
            import psutil

            total = psutil.virtual_memory().total
            if mem > total:
                raise ResourceUnavailableError(
                    f"service {plan.name!r} asks for {mem / 2**30:.1f} GiB of memory per pod, but "
                    f"this machine has {total / 2**30:.1f} GiB."
                )

    def apply(self, plan: Plan) -> ServiceInfo:
        r = self._request(
            "PUT",
            f"/services/{plan.name}",
            json={
                "replicas": plan.replicas,
                "template": plan.template,
                "labels": plan.labels,
                "meta": plan.meta,
            },
        )
        if r.status_code != 200:
            raise HotpodError(f"the local controller refused service {plan.name!r}: {r.text}")
        return ServiceInfo.from_dict(r.json())

    def get(self, name: str) -> ServiceInfo:
        r = self._request("GET", f"/services/{name}")
        if r.status_code == 404:
            raise ServiceNotFoundError(
                f"no service named {name!r} on the local backend; 'hotpod list' shows what runs"
            )
        r.raise_for_status()
        return ServiceInfo.from_dict(r.json())

    def list(self) -> list[ServiceInfo]:
        if not self._known():
            return []
        return [ServiceInfo.from_dict(d) for d in self._request("GET", "/services").json()]

    def teardown(self, name: str) -> bool:
        if not self._known():
            return False
        return self._request("DELETE", f"/services/{name}").status_code == 200

    def teardown_all(self) -> builtins.list[str]:
        if not self._known():
            return []
        names: list[str] = self._request("DELETE", "/services").json()["deleted"]
        return names

    def logs(
        self, name: str, pod: str | None = None, follow: bool = False, tail: int | None = None
    ) -> Iterator[tuple[str, str]]:
        logdir = self.settings.home / "logs" / name
        files = sorted(logdir.glob("*.log")) if logdir.is_dir() else []
        if pod is not None:
            files = [f for f in files if f.stem == pod]
            if not files:
                raise ServiceNotFoundError(f"no logs for pod {pod!r} of service {name!r}")
        if not files:
            raise ServiceNotFoundError(
                f"no logs for service {name!r}; 'hotpod list' shows services"
            )
        yield from _read_logs(files, follow, tail)


def _registry_has_services(path: Path) -> bool:
    """Whether a registry left by a controller lists any service (read only, no controller)."""
    if not path.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return db.execute("SELECT COUNT(*) FROM services").fetchone()[0] > 0
    except sqlite3.Error:
        return True  # unreadable: let a controller look


def _read_logs(files: list[Path], follow: bool, tail: int | None) -> Iterator[tuple[str, str]]:
    handles = []
    for f in files:
        fh = open(f, errors="replace")  # noqa: SIM115 (closed below)
        lines = fh.readlines()
        for line in lines[-tail:] if tail else lines:
            yield f.stem, line.rstrip("\n")
        handles.append((f.stem, fh))
    try:
        while follow:
            got = False
            for pod, fh in handles:
                for line in fh.readlines():
                    got = True
                    yield pod, line.rstrip("\n")
            if not got:
                time.sleep(0.2)
    finally:
        for _, fh in handles:
            fh.close()
