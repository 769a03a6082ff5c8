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

from hotpod import loglines
from hotpod._files import tail
from hotpod.backends.base import Backend, Plan, PodShell, PodStats, ServiceInfo, pick_pods
from hotpod.config import Settings
from hotpod.errors import (
    HotpodError,
    ResourceUnavailableError,
    ServiceNotFoundError,
)
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

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

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
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                self.close()  # its connections were to a controller now gone
                if isinstance(exc, httpx.ReadError) and method != "GET":
                    raise HotpodError(
                        f"lost the local controller during {method} {path} ({exc}); see "
                        f"{self._log_file()} and run the command again (the controller restarts "
                        "on demand)"
                    ) from exc
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

    def set_launch(self, name: str, spec: dict[str, Any]) -> ServiceInfo:
        """Give the controller an autoscaled service's launch: pods it starts resume it."""
        r = self._request("PUT", f"/services/{name}/launch", json=spec)
        if r.status_code != 200:
            raise HotpodError(f"the local controller refused the launch of {name!r}: {r.text}")
        return ServiceInfo.from_dict(r.json())

    def get(self, name: str) -> ServiceInfo:
        r = self._request("GET", f"/services/{name}")
        if r.status_code == 404:
            kept = (
                f" (its logs are kept: 'hotpod logs {name}')"
                if name in self.logged_services()
                else ""
            )
            raise ServiceNotFoundError(
                f"no service named {name!r} on the local backend{kept}; 'hotpod list' shows "
                "what runs"
            )
        r.raise_for_status()
        return ServiceInfo.from_dict(r.json())

    def list(self) -> list[ServiceInfo]:
        if not self._known():
            return []
        return [ServiceInfo.from_dict(d) for d in self._request("GET", "/services").json()]

    def teardown(self, name: str, volumes: bool = False) -> bool:
        if volumes:
            raise HotpodError(
                f"the {self.name} backend makes no volume claims: tear {name!r} down without "
                f"deleting volumes ('hotpod teardown {name}')"
            )
        if not self._known():
            return False
        return self._request("DELETE", f"/services/{name}").status_code == 200

    def teardown_all(self) -> builtins.list[str]:
        if not self._known():
            return []
        names: list[str] = self._request("DELETE", "/services").json()["deleted"]
        return names

    # -- logs -----------------------------------------------------------------------------

    def _log_dir(self, name: str) -> Path:
        return self.settings.home / "logs" / name

    def _log_files(self, name: str, pod: str | None) -> builtins.list[Path]:
        logdir = self._log_dir(name)
        files = sorted(logdir.glob("*.log"), key=_pod_order) if logdir.is_dir() else []
        if not files:
            raise ServiceNotFoundError(
                f"no logs for service {name!r}; 'hotpod logs' lists the services with logs"
            )
        by_pod = {f.stem: f for f in files}
        return [by_pod[p] for p in pick_pods(name, pod, list(by_pod))]

    def logs(
        self,
        name: str,
        pod: str | None = None,
        follow: bool = False,
        tail: int | None = None,
        keep: loglines.LogFilter | None = None,
    ) -> Iterator[loglines.LogLine]:
        files = self._log_files(name, pod)
        return _LogReader(files, keep, tail).lines(follow, None if pod else self._log_dir(name))

    def purge_logs(self, name: str) -> bool:
        logdir = self._log_dir(name)
        if not logdir.is_dir():
            return False
        running = self._known() and self._request("GET", f"/services/{name}").status_code == 200
        if running:  # its pods keep their files open: empty them instead
            for f in logdir.iterdir():
                if f.name.endswith(".log"):
                    with open(f, "r+b") as fh:
                        fh.truncate(0)
                else:
                    f.unlink(missing_ok=True)
        else:
            shutil.rmtree(logdir, ignore_errors=True)
        return True

    def logged_services(self) -> builtins.list[str]:
        root = self.settings.home / "logs"
        if not root.is_dir():
            return []
        return sorted(d.name for d in root.iterdir() if d.is_dir() and any(d.glob("*.log")))

    # -- top and shell ----------------------------------------------------------------------

    def top(self, name: str | None = None, interval: float = 0.5) -> builtins.list[PodStats]:
        import psutil

        services = [self.get(name)] if name is not None else self.list()
        trees: dict[tuple[str, str], builtins.list[psutil.Process]] = {}
        for svc in services:
            for pod in svc.pods:
                trees[(svc.name, pod.name)] = _process_tree(pod.pid)
        for procs in trees.values():
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    proc.cpu_percent(None)  # the first sample: the next call measures from here
        if trees:
            time.sleep(interval)
        out = []
        for svc in services:
            for pod in svc.pods:
                cpu, rss, alive = 0.0, 0, 0
                for proc in trees[(svc.name, pod.name)]:
                    try:
                        with proc.oneshot():
                            cpu += proc.cpu_percent(None)
                            rss += proc.memory_info().rss
                        alive += 1
                    except psutil.Error:
                        continue
                out.append(
                    PodStats(
                        service=svc.name,
                        pod=pod.name,
                        status=pod.status,
                        cpu_percent=cpu if alive else None,
                        rss_bytes=rss if alive else None,
                        processes=alive,
                        cpus=svc.template.get("cpus"),
                        memory_bytes=svc.template.get("memory_bytes"),
                    )
                )
        return out

    def shell(self, name: str, pod: str | None = None) -> PodShell:
        import json

        import psutil

        info = self.get(name)
        pods = {p.name: p for p in info.pods}
        target = next((pods[p] for p in pick_pods(name, pod, list(pods))), None)
        if target is None or target.pid is None or target.status != "running":
            if target is None:
                raise HotpodError(f"service {name!r} has no pods; 'hotpod check {name}' says why")
            raise HotpodError(
                f"pod {target.name} is not running ({target.status}); 'hotpod check {name}' "
                "says why"
            )
        try:
            env = dict(psutil.Process(target.pid).environ())
        except psutil.Error as exc:
            raise HotpodError(
                f"cannot read the environment of pod {target.name} (pid {target.pid}): {exc}; "
                f"'hotpod check {name}' says how it is"
            ) from exc
        env.pop("HOTPOD_TOKEN", None)  # the shell is yours, the service's token is not needed
        root = Path(env.get("HOTPOD_POD_ROOT") or self.settings.pods_dir / name / target.name)
        cwd = root
        try:
            spec = json.loads((root / ".hotpod" / "launch.json").read_text())
        except (OSError, ValueError):
            spec = {}
        env.update({k: str(v) for k, v in (spec.get("env") or {}).items()})
        snapshot = root / ".hotpod" / "code" / "current"
        if snapshot.is_dir():
            cwd = snapshot
            paths = [str(snapshot / p) if p else str(snapshot) for p in _code_paths(spec)]
            if env.get("PYTHONPATH"):
                paths.append(env["PYTHONPATH"])
            env["PYTHONPATH"] = os.pathsep.join(paths)
        venv = Path(env["HOTPOD_VENV"]) if env.get("HOTPOD_VENV") else None
        if venv is not None and (venv / "bin" / "python").exists():
            env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
            env["VIRTUAL_ENV"] = str(venv)
        else:
            venv = None
        return PodShell(target.name, str(cwd), env, str(venv) if venv else None)


def _code_paths(spec: dict[str, Any]) -> list[str]:
    paths = (spec.get("code") or {}).get("paths") or [""]
    return [p for p in paths if isinstance(p, str)]


def _process_tree(pid: int | None) -> list[Any]:
    """A pod's processes: its supervisor, the workers and whatever they started."""
    import psutil

    if pid is None:
        return []
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def _pod_order(path: Path) -> tuple[int, str]:
    """Pod logs in rank order (``svc-2`` before ``svc-10``)."""
    _, _, rank = path.stem.rpartition("-")
    return (int(rank) if rank.isdigit() else 1 << 30, path.stem)


def _registry_has_services(path: Path) -> bool:
    """Whether a registry left by a controller lists any service (read only, no controller)."""
    if not path.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return db.execute("SELECT COUNT(*) FROM services").fetchone()[0] > 0
    except sqlite3.Error:
        return True  # unreadable: let a controller look


class _LogReader:
    """Reads pod log files: first what they hold, merged in time order, then (``follow``) new
    lines as they are written, across truncation (purge), rotation and pods that appear."""

    def __init__(
        self, files: list[Path], keep: loglines.LogFilter | None, tail: int | None
    ) -> None:
        self.files = files
        self.keep = keep
        self.tail = tail
        self.open: dict[Path, tuple[Any, int]] = {}  # path -> (binary file, inode)
        self.partial: dict[Path, bytes] = {}  # a line still being written
        self.last_ts: dict[Path, str] = {}

    def lines(self, follow: bool, logdir: Path | None) -> Iterator[loglines.LogLine]:
        try:
            yield from loglines.merge([self._history(f) for f in self.files])
            next_scan = time.monotonic() + 1.0
            while follow:
                got = False
                for path in list(self.open):
                    for line in self._new_lines(path):
                        got = True
                        yield line
                if logdir is not None and time.monotonic() > next_scan:  # pods scaled up
                    for path in sorted(logdir.glob("*.log"), key=_pod_order):
                        if path not in self.open and self._reopen(path):
                            yield from self._new_lines(path)
                    next_scan = time.monotonic() + 1.0
                if not got:
                    time.sleep(0.2)
        finally:
            for fh, _ in self.open.values():
                fh.close()

    def _history(self, path: Path) -> list[loglines.LogLine]:
        raw: list[bytes] = []
        rotated = path.with_name(path.name + ".1")
        with contextlib.suppress(OSError), open(rotated, "rb") as old:
            raw.extend(old)
        if self._reopen(path):
            raw.extend(self.open[path][0].readlines())
        if self.keep is None and self.tail:  # parse only what is shown
            raw = raw[-self.tail :]
        lines = loglines.read(path.stem, (_text(b) for b in raw), self.keep, self.tail)
        if lines:
            self.last_ts[path] = lines[-1].ts
        return lines

    def _reopen(self, path: Path) -> bool:
        old = self.open.pop(path, None)
        if old is not None:
            old[0].close()
        self.partial.pop(path, None)
        try:
            fh = open(path, "rb")  # noqa: SIM115 (closed in lines())
        except OSError:
            return False
        self.open[path] = (fh, os.fstat(fh.fileno()).st_ino)
        return True

    def _new_lines(self, path: Path) -> Iterator[loglines.LogLine]:
        fh, inode = self.open[path]
        data = self.partial.pop(path, b"") + fh.read()
        try:
            st = os.stat(path)
            moved = st.st_ino != inode or st.st_size < fh.tell()  # rotated, or purged
            if moved and self._reopen(path):
                data += self.open[path][0].read()
        except OSError:
            pass
        *complete, rest = data.split(b"\n")
        if rest:
            self.partial[path] = rest
        last = self.last_ts.get(path, "")
        for raw in complete:
            line = loglines.parse(path.stem, _text(raw), last)
            last = line.ts
            if self.keep is None or self.keep.keep(line):
                yield line
        self.last_ts[path] = last


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").rstrip("\r\n")
