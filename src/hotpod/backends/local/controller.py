"""The local controller: the part kubelet and the API server play in a cluster.

One controller runs per ``HOTPOD_HOME``, started on demand by the client and detached from it. It
serves a small JSON API on a Unix socket inside ``HOTPOD_HOME`` (a directory only its owner can
enter), keeps the registry in SQLite, starts each pod as a detached process group, holds replica
counts and restarts crashed pods with exponential backoff. Pods keep running when the client exits;
a restarted controller adopts the pods it finds alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from hotpod import loglines
from hotpod._ports import free_port
from hotpod.backends.local.registry import Registry
from hotpod.backends.local.scaling import Autoscalers
from hotpod.config import Settings, reload_settings
from hotpod.distribute import RAY_WORKER_PORTS, worker_env
from hotpod.runtime import raynode

MONITOR_INTERVAL = 0.2
#: a controller with no services exits after this many seconds (HOTPOD_CONTROLLER_IDLE)
IDLE_EXIT = float(os.environ.get("HOTPOD_CONTROLLER_IDLE", "600"))
MAX_BACKOFF = 30.0
STABLE_AFTER = 60.0
STOP_GRACE = 5.0
ROLL_TIMEOUT = 120.0  # how long a rolling replacement waits for each new pod
#: a pod log larger than this when its pod starts is kept as ``<pod>.log.1`` (one generation)
LOG_ROTATE_BYTES = 64 << 20


@dataclass
class Pod:
    service: str
    rank: int
    name: str
    port: int
    pid: int | None = None
    popen: subprocess.Popen[bytes] | None = None
    started_at: float | None = None
    restarts: int = 0
    consecutive: int = 0
    last_exit: int | None = None
    status: str = "starting"
    next_start: float = 0.0

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        if self.pid is None:
            return False
        try:
            p = psutil.Process(self.pid)
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def exit_code(self) -> int | None:
        return self.popen.returncode if self.popen is not None else None

    def record(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "name": self.name,
            "port": self.port,
            "pid": self.pid,
            "started_at": self.started_at,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
        }


def template_hash(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


class Controller:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = Registry(settings.home / "registry.sqlite")
        self.services: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, list[Pod]] = {}
        self.lock = asyncio.Lock()
        self.server: uvicorn.Server | None = None
        self.scalers = Autoscalers(self)  # routers and deciders of autoscaled services

    # -- paths ------------------------------------------------------------------------------

    def pod_root(self, service: str, pod: str) -> Path:
        return self.settings.pods_dir / service / pod

    def venv_dir(self, service: str) -> Path:
        """The service's virtual environment, where its pip steps install."""
        return self.settings.home / "venvs" / service

    def log_path(self, service: str, pod: str) -> Path:
        """A pod's log. Logs outlive their pods: teardown keeps them until purged."""
        return self.settings.home / "logs" / service / f"{pod}.log"

    def pod_event(self, pod: Pod, text: str) -> None:
        """Write what happened to a pod into its log, where ``hotpod logs`` shows it."""
        try:
            with open(self.log_path(pod.service, pod.name), "a") as fh:
                fh.write(loglines.format_line(f"hotpod-controller: {text}", pod.name, pod.rank))
        except OSError:
            pass

    # -- state ------------------------------------------------------------------------------

    def adopt(self) -> None:
        """Load the registry; adopt pods still alive, schedule the rest to start."""
        for svc in self.registry.services():
            self.services[svc["name"]] = svc
            pods = []
            for rec in self.registry.pods(svc["name"]):
                pod = Pod(service=svc["name"], **rec)
                if pod.alive() and self._is_our_pod(pod):
                    pod.status = "running"
                else:
                    pod.pid = None
                    pod.status = "restarting"
                pods.append(pod)
            self.pods[svc["name"]] = pods

    def _is_our_pod(self, pod: Pod) -> bool:
        try:
            return "hotpod.runtime.supervisor" in " ".join(psutil.Process(pod.pid).cmdline())
        except psutil.Error:
            return False

    def describe(self, name: str) -> dict[str, Any]:
        svc = self.services[name]
        pods = []
        for pod in self.pods.get(name, []):
            pods.append(
                {
                    "name": pod.name,
                    "rank": pod.rank,
                    "url": f"http://127.0.0.1:{pod.port}",
                    "status": pod.status,
                    "restarts": pod.restarts,
                    "pid": pod.pid,
                    "last_exit": pod.last_exit,
                    "log_path": str(self.log_path(name, pod.name)),
                }
            )
        desc = {**{k: v for k, v in svc.items() if k != "template_hash"}, "pods": pods}
        return self.scalers.describe(name, desc)

    # -- pods -------------------------------------------------------------------------------

    def start_pod(self, pod: Pod) -> None:
        svc = self.services[pod.service]
        tpl = svc["template"]
        root = self.pod_root(pod.service, pod.name)
        (root / ".hotpod").mkdir(parents=True, exist_ok=True)
        self.scalers.starting(pod, root)
        for vol in tpl.get("volumes", []):
            target = self.settings.volumes_dir / vol["name"]
            target.mkdir(parents=True, exist_ok=True)
            link = root / vol["mount_path"].lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                if link.is_symlink() and Path(os.readlink(link)) == target:
                    continue
                if link.is_symlink() or link.is_file():
                    link.unlink()
                else:
                    shutil.rmtree(link)
            link.symlink_to(target, target_is_directory=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOTPOD_")}
        env.update(tpl.get("env", {}))
        env.update(
            {
                "HOTPOD_POD": "1",
                "HOTPOD_HOME": str(self.settings.home),
                "HOTPOD_SERVICE": pod.service,
                "HOTPOD_POD_NAME": pod.name,
                "HOTPOD_RANK": str(pod.rank),
                "HOTPOD_WORLD_SIZE": str(svc["replicas"]),
                "HOTPOD_TOKEN": svc["token"],
                "HOTPOD_POD_ROOT": str(root),
                "HOTPOD_STORE": str(self.settings.store_dir),
                "HOTPOD_VENV": str(self.venv_dir(pod.service)),
                "HOTPOD_PORT": str(pod.port),
                "HOTPOD_RESTARTS": str(pod.restarts),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.dist_env(pod))
        gpus = int(tpl.get("gpus") or 0)
        if gpus:
            total = int(tpl.get("machine_gpus") or gpus)
            env["CUDA_VISIBLE_DEVICES"] = ",".join(
                str((pod.rank * gpus + i) % total) for i in range(gpus)
            )
        log = self.log_path(pod.service, pod.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            if log.stat().st_size > LOG_ROTATE_BYTES:
                os.replace(log, log.with_name(log.name + ".1"))
        with open(log, "ab") as fh:
            line = f"hotpod-controller: pod {pod.name} starting (restarts {pod.restarts})"
            fh.write(loglines.format_line(line, pod.name, pod.rank).encode())
            fh.flush()
            pod.popen = subprocess.Popen(
                [tpl.get("python") or sys.executable, "-m", "hotpod.runtime.supervisor"],
                cwd=root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        pod.pid = pod.popen.pid
        pod.started_at = time.time()
        pod.status = "running"
        self.registry.save_pod(pod.service, pod.record())

    def dist_env(self, pod: Pod) -> dict[str, str]:
        """The distribution environment of a pod of a distributed pool (else nothing).

        The peers are the pods' addresses in rank order, as this controller knows them; the
        launch spec carries the same, so pods that stay through a scale are brought up to date.
        """
        svc = self.services[pod.service]
        dist = svc["template"].get("distribute")
        if not isinstance(dist, dict):
            return {}
        pods = sorted(self.pods.get(pod.service, []), key=lambda p: p.rank)
        env = worker_env(
            str(dist["kind"]),
            rank=pod.rank,
            world_size=int(svc["replicas"]),
            peers=[f"127.0.0.1:{p.port}" for p in pods],
            port=dist.get("port") or svc["meta"].get("dist_port"),
            num_proc=int(dist.get("num_proc") or 1),  # (the supervisor starts that many workers)
        )
        if dist["kind"] == "ray":  # the Ray node's --num-cpus: the pod's cpus, rounded up
            env["HOTPOD_RAY_NUM_CPUS"] = str(math.ceil(float(svc["template"].get("cpus") or 1)))
        return env

    def _used_ports(self) -> set[int]:
        """Ports taken by pods and by distributed pools' rendezvous."""
        used = {p.port for ps in self.pods.values() for p in ps}
        used |= {
            int(s["meta"]["dist_port"])
            for s in self.services.values()
            if s["meta"].get("dist_port")
        }
        return used

    def _free_port(self) -> int:
        return free_port(self._used_ports())

    def _set_dist_port(self, svc: dict[str, Any], kept: int | None) -> None:
        """Give a distributed pool a rendezvous port of its own, kept across restarts.

        Locally every pool shares one host, so the frameworks' fixed ports (29500, 1234) would
        collide: a pool without ``port=`` gets a free port, allocated once and stored with the
        service (``meta["dist_port"]``, in the registry). An explicit ``port=`` is used as is.
        """
        dist = svc["template"].get("distribute")
        meta = {k: v for k, v in svc["meta"].items() if k != "dist_port"}
        if isinstance(dist, dict) and dist.get("kind") != "spmd" and not dist.get("port"):
            ray = dist.get("kind") == "ray"  # (its port must not be in its workers' range)
            port = kept
            if not port or (ray and port in RAY_WORKER_PORTS):
                used = self._used_ports()
                port = free_port(used | set(RAY_WORKER_PORTS) if ray else used)
            meta["dist_port"] = port
        svc["meta"] = meta

    def _signal_group(self, pod: Pod, sig: int) -> None:
        if pod.pid is None:
            return
        try:
            os.killpg(pod.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    async def stop_pod(self, pod: Pod) -> None:
        pod.status = "stopped"
        self.scalers.stopping(pod)
        try:  # the supervisor stops its workers in order: no new connections, then drain
            if pod.pid is not None:
                os.kill(pod.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + STOP_GRACE
        while pod.alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._signal_group(pod, signal.SIGKILL)
        raynode.forget(self.pod_root(pod.service, pod.name))  # (its Ray node went with it)
        if pod.popen is not None:
            try:
                pod.popen.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass

    async def wait_serving(self, pod: Pod, timeout: float) -> bool:
        """Wait until a pod answers /health as ready (its last launch resumed)."""
        deadline = time.monotonic() + timeout
        resumes = (self.pod_root(pod.service, pod.name) / ".hotpod" / "launch.json").exists()
        while time.monotonic() < deadline and pod.alive():
            health = await self.health(pod, 2.0)
            if health is not None and (health.get("ready") is True or not resumes):
                return True  # (a pod that never served a launch has nothing to resume)
            await asyncio.sleep(0.05)
        return False

    async def health(self, pod: Pod, timeout: float = 1.0) -> dict[str, Any] | None:
        """A pod's ``/health`` answer, or None when it does not answer (yet)."""
        request = b"GET /health HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n"
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", pod.port)
            try:
                writer.write(request)
                answer = await asyncio.wait_for(reader.read(), timeout)
            finally:
                writer.close()
            head, _, body = answer.partition(b"\r\n\r\n")
            health = json.loads(body) if b" 200 " in head.split(b"\r\n")[0] else None
        except (OSError, ValueError, asyncio.TimeoutError):
            return None
        return health if isinstance(health, dict) else None

    async def monitor(self) -> None:
        idle_since = time.monotonic()
        while True:
            await asyncio.sleep(MONITOR_INTERVAL)
            async with self.lock:
                now = time.time()
                for pods in self.pods.values():
                    for pod in pods:
                        self._tend(pod, now)
                if self.services:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > IDLE_EXIT and self.server is not None:
                    print(f"no services for {IDLE_EXIT:.0f} s; exiting", flush=True)
                    self.server.should_exit = True

    def _tend(self, pod: Pod, now: float) -> None:
        if pod.status == "running" and not pod.alive():
            pod.last_exit = pod.exit_code()
            self.scalers.stopping(pod)
            self._signal_group(pod, signal.SIGKILL)  # what the pod left behind goes too
            raynode.forget(self.pod_root(pod.service, pod.name))
            ran = now - (pod.started_at or now)
            pod.consecutive = 1 if ran > STABLE_AFTER else pod.consecutive + 1
            delay = min(0.2 * 2 ** (pod.consecutive - 1), MAX_BACKOFF)
            pod.restarts += 1
            pod.status = "restarting"
            pod.next_start = now + delay
            pod.popen = None
            self.registry.save_pod(pod.service, pod.record())
            what = (
                f"pod {pod.name} exited (code {pod.last_exit}); restart {pod.restarts} in "
                f"{delay:.1f} s"
            )
            print(what, flush=True)
            self.pod_event(pod, what)
        elif pod.status == "restarting" and now >= pod.next_start:
            try:
                self.start_pod(pod)
            except OSError as exc:
                pod.next_start = now + MAX_BACKOFF
                print(f"pod {pod.name} failed to start: {exc}", flush=True)
                self.pod_event(pod, f"pod {pod.name} failed to start: {exc}")

    # -- API --------------------------------------------------------------------------------

    async def apply(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        template = body["template"]
        thash = template_hash(template)
        async with self.lock:  # (the count too: the autoscaler changes it under this lock)
            replicas = self.scalers.replicas(name, template, int(body["replicas"]))
            svc = self.services.get(name)
            if svc is None:
                svc = {
                    "name": name,
                    "token": secrets.token_urlsafe(32),
                    "replicas": replicas,
                    "template": template,
                    "template_hash": thash,
                    "labels": body.get("labels", {}),
                    "meta": body.get("meta", {}),
                    "created_at": time.time(),
                }
                self.services[name] = svc
                self.pods[name] = []
                replace = False
                rollout = "created"
                self._set_dist_port(svc, None)
            else:
                kept = svc["meta"].get("dist_port")
                replace = svc["template_hash"] != thash
                rollout = (
                    "replaced"
                    if replace
                    else "scaled"
                    if svc["replicas"] != replicas
                    else "unchanged"
                )
                svc.update(
                    replicas=replicas,
                    template=template,
                    template_hash=thash,
                    labels=body.get("labels", svc["labels"]),
                    meta=body.get("meta", svc["meta"]),
                )
                self._set_dist_port(svc, kept)
            self.registry.save_service(svc)
            pods = self.pods[name]
            await self.scalers.settle(name, template)  # (autoscaling ends: ranks must be free)
            extra, missing = self.scalers.resize(name, pods, replicas, template)
            for pod in extra:  # (a pool of fixed size has the ranks 0..replicas-1)
                pods.remove(pod)
                await self.stop_pod(pod)
                self.registry.delete_pod(name, pod.rank)
                shutil.rmtree(self.pod_root(name, pod.name), ignore_errors=True)
            if replace:  # one pod at a time, the way a Deployment rolls: the others serve
                for pod in pods:
                    await self.stop_pod(pod)
                    self.start_pod(pod)
                    await self.wait_serving(pod, ROLL_TIMEOUT)
            new = []
            for rank in missing:  # every address first: the peer lists
                pod = Pod(service=name, rank=rank, name=f"{name}-{rank}", port=self._free_port())
                pods.append(pod)
                new.append(pod)
            pods.sort(key=lambda p: p.rank)
            for pod in new:
                self.start_pod(pod)
            await self.scalers.applied(name)
            return {**self.describe(name), "rollout": rollout}

    async def delete(self, name: str) -> bool:
        async with self.lock:
            if name not in self.services:
                return False
            await self.scalers.removed(name)
            pods = self.pods.pop(name, [])
            await asyncio.gather(*(self.stop_pod(p) for p in pods))
            for pod in pods:
                self.pod_event(pod, f"service {name} deleted; the log is kept until purged")
            del self.services[name]
            self.registry.delete_service(name)
            shutil.rmtree(self.settings.pods_dir / name, ignore_errors=True)
            shutil.rmtree(self.venv_dir(name), ignore_errors=True)
            (self.venv_dir(name).parent / f".{name}.lock").unlink(missing_ok=True)
            return True


def build_app(ctl: Controller) -> Starlette:
    async def ping(_: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "pid": os.getpid(), "home": str(ctl.settings.home)})

    async def list_services(_: Request) -> JSONResponse:
        return JSONResponse([ctl.describe(n) for n in sorted(ctl.services)])

    async def get_service(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        if name not in ctl.services:
            return JSONResponse({"error": f"no service named {name!r}"}, status_code=404)
        return JSONResponse(ctl.describe(name))

    async def put_service(request: Request) -> JSONResponse:
        try:
            body = await request.json()
            int(body["replicas"])
            dict(body["template"])
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": f"malformed apply request: {exc!r}"}, status_code=400)
        try:
            return JSONResponse(await ctl.apply(request.path_params["name"], body))
        except OSError as exc:
            return JSONResponse({"error": f"could not start pods: {exc}"}, status_code=500)

    async def delete_service(request: Request) -> JSONResponse:
        found = await ctl.delete(request.path_params["name"])
        return JSONResponse({"deleted": found}, status_code=200 if found else 404)

    async def delete_all(_: Request) -> JSONResponse:
        names = sorted(ctl.services)
        await asyncio.gather(*(ctl.delete(n) for n in names))
        return JSONResponse({"deleted": names})

    async def shutdown(_: Request) -> JSONResponse:
        if ctl.server is not None:
            ctl.server.should_exit = True
        return JSONResponse({"stopping": True, "services": sorted(ctl.services)})

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(ctl.monitor())
        await ctl.scalers.start()
        yield
        await ctl.scalers.stop()
        task.cancel()

    return Starlette(
        routes=[
            Route("/ping", ping),
            Route("/services", list_services),
            Route("/services", delete_all, methods=["DELETE"]),
            Route("/services/{name}", get_service),
            Route("/services/{name}", put_service, methods=["PUT"]),
            Route("/services/{name}", delete_service, methods=["DELETE"]),
            Route("/shutdown", shutdown, methods=["POST"]),
            *ctl.scalers.routes(),
        ],
        lifespan=lifespan,
    )


def _daemonize() -> None:
    """Fork once more so the controller is nobody's child: no zombie when it exits."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()


def main() -> int:
    if "--daemon" in sys.argv[1:]:
        _daemonize()
    settings = reload_settings()
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    settings.home.chmod(0o700)
    lock = open(settings.home / "controller.lock", "w")  # noqa: SIM115 (held for life)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("another controller serves this HOTPOD_HOME; exiting", flush=True)
        return 0
    sock = settings.controller_socket
    sock.unlink(missing_ok=True)
    ctl = Controller(settings)
    ctl.adopt()
    print(f"controller {os.getpid()} serving {settings.home}", flush=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock))
    sock.chmod(0o600)  # tokens and secrets are served here: its owner only
    listener.listen(256)
    config = uvicorn.Config(build_app(ctl), log_level="warning", access_log=False, lifespan="on")
    ctl.server = uvicorn.Server(config)
    ctl.server.run(sockets=[listener])
    sock.unlink(missing_ok=True)
    print("controller stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
