"""One container of a fake pod: its process group, state, restarts, logs and probes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import probes
from .environment import ConfigError, base_env, command_line, container_env, mount, rewrite_path
from .objects import now

if TYPE_CHECKING:
    from .runner import PodRunner

BACKOFF_START, BACKOFF_MAX = 0.2, 2.0
#: each container process carries this variable (cluster id / pod uid / container) so that
#: processes that left the container's process group can still be found and killed
MARKER = "K8SFAKE_CONTAINER"


class Container:
    """One container of a pod: its process, state, restarts and probes."""

    def __init__(self, runner: PodRunner, spec: dict[str, Any], init: bool):
        self.runner = runner
        self.spec = spec
        self.name: str = spec["name"]
        self.init = init
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.starts = 0
        self.state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: dict[str, Any] = {}
        self.ready = False
        self.done = False  # terminated for good (no restart)
        self.exit_code: int | None = None
        self.next_start = 0.0
        self.backoff = BACKOFF_START
        self.started_mono = 0.0
        self.pull_failed_at: float | None = None
        self.container_id = ""
        self.env: dict[str, str] = {}
        self.probes = probes.ProbeState(self)

    # logs: one file per start, numbered from 0
    def log_file(self, index: int) -> Path:
        return self.runner.dir / "logs" / self.name / f"{index}.log"

    def log_index(self) -> int | None:
        return self.starts - 1 if self.starts else None

    def waiting_reason(self) -> str | None:
        return (self.state.get("waiting") or {}).get("reason")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)
        if sig == signal.SIGKILL:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    @property
    def marker(self) -> str:
        return f"{self.runner.kubelet.cluster_id}/{self.runner.uid}/{self.name}"

    def status(self) -> dict[str, Any]:
        image = self.spec.get("image", "")
        started = self.running()
        out: dict[str, Any] = {
            "name": self.name,
            "image": image,
            "imageID": f"docker.io/library/{image}@sha256:{'0' * 64}" if self.starts else "",
            "ready": self.ready,
            "started": started,
            "restartCount": self.restarts,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out

    # -- start and exit ------------------------------------------------------------------------

    def try_start(self) -> None:
        r = self.runner
        kubelet, pod = r.kubelet, r.pod
        image = self.spec.get("image", "")
        if image in kubelet.missing_images:
            if self.pull_failed_at is None:
                r.event("Pulling", f'Pulling image "{image}"')
            message = (
                f'failed to pull and unpack image "docker.io/library/{image}": failed to resolve '
                f'reference "docker.io/library/{image}": pull access denied, repository does '
                "not exist or may require authorization: server message: insufficient_scope: "
                "authorization failed"
            )
            self.state = {"waiting": {"reason": "ErrImagePull", "message": message}}
            r.event("Failed", f'Failed to pull image "{image}": {message}', warning=True)
            r.event("Failed", "Error: ErrImagePull", warning=True)
            self.pull_failed_at = time.monotonic()
            self.next_start = time.monotonic() + self.backoff
            self.backoff = min(self.backoff * 2, BACKOFF_MAX)
            return
        if self.pull_failed_at is not None or not self.starts:
            r.event("Pulled", f'Container image "{image}" already present on machine')
            self.pull_failed_at = None
            self.backoff = BACKOFF_START if not self.starts else self.backoff
        try:
            env = base_env(pod, r.fs, kubelet.api_port)
            env.update(
                container_env(kubelet.store, kubelet.kind, pod, self.spec, kubelet.node.allocatable)
            )
            mounts = mount(self.spec, r.volumes or {}, r.fs)
            env = {k: rewrite_path(v, mounts, r.fs) for k, v in env.items()}
            env["HOTPOD_HOST"] = r.ip  # the manifests' 0.0.0.0 would clash between pods
            argv = command_line(self.spec, env)
            self.env = env
        except ConfigError as e:
            if e.reason == "StartError":
                self._start_error(e.message)
                return
            self.state = {"waiting": {"reason": e.reason, "message": e.message}}
            reason = "FailedMount" if e.reason == "ContainerCreating" else "Failed"
            r.event(
                reason,
                e.message if reason == "FailedMount" else f"Error: {e.message}",
                warning=True,
            )
            self.next_start = time.monotonic() + 0.5
            return
        env[MARKER] = self.marker
        workdir = r.fs
        if self.spec.get("workingDir"):
            workdir = Path(rewrite_path(self.spec["workingDir"], ["/"], r.fs))
            workdir.mkdir(parents=True, exist_ok=True)
        log = self.log_file(self.starts)
        log.parent.mkdir(parents=True, exist_ok=True)
        if self.starts:
            self.restarts += 1
        self.starts += 1
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.container_id = f"containerd://{uuid.uuid4().hex}{uuid.uuid4().hex}"
        self.started_mono = time.monotonic()
        self.state = {"running": {"startedAt": now()}}
        self.probes.reset()
        self.ready = not self.init and not self.probes.has_readiness()
        r.event("Created", f"Created container {self.name}")
        r.event("Started", f"Started container {self.name}")

    def _start_error(self, message: str) -> None:
        if self.starts:
            self.restarts += 1
        self.starts += 1
        log = self.log_file(self.starts - 1)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.touch()
        stamp = now()
        self.state = {
            "terminated": {
                "exitCode": 128,
                "reason": "StartError",
                "message": message,
                "startedAt": stamp,
                "finishedAt": stamp,
            }
        }
        self.runner.event("Failed", f"Error: {message}", warning=True)
        self._after_exit(128)

    def check_exit(self) -> bool:
        """Notice a process that ended; True when one did."""
        if self.proc is None or self.proc.poll() is None:
            return False
        code = self.proc.returncode
        self.signal(signal.SIGKILL)  # the rest of its process group, as a container's end does
        self.proc = None
        exit_code = 128 - code if code < 0 else code
        started = (self.state.get("running") or {}).get("startedAt")
        self.state = {
            "terminated": {
                "exitCode": exit_code,
                "reason": "Completed" if exit_code == 0 else "Error",
                "startedAt": started,
                "finishedAt": now(),
                "containerID": self.container_id,
            }
        }
        self.ready = False
        self.runner.background(self.runner.reap_container(self.marker))
        if time.monotonic() - self.started_mono > 10:
            self.backoff = BACKOFF_START
        self._after_exit(exit_code)
        return True

    def _after_exit(self, exit_code: int) -> None:
        policy = self.runner.pod["spec"].get("restartPolicy", "Always")
        if self.init and policy == "Always":
            policy = "OnFailure"
        self.exit_code = exit_code
        if policy == "Never" or (policy == "OnFailure" and exit_code == 0):
            self.done = True
            return
        self.last_state = {"terminated": self.state["terminated"]}
        r = self.runner
        delay = self.backoff
        self.state = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {int(delay * 1000)}ms restarting failed container="
                f"{self.name} pod={r.name}_{r.ns}({r.uid})",
            }
        }
        r.event(
            "BackOff",
            f"Back-off restarting failed container {self.name} in pod {r.name}_{r.ns}({r.uid})",
            warning=True,
        )
        self.next_start = time.monotonic() + delay
        self.backoff = min(self.backoff * 2, BACKOFF_MAX)

    def tick(self) -> None:
        """Start, restart, flip image-pull states, run probes."""
        t = time.monotonic()
        if self.done:
            return
        if self.proc is None:
            if self.pull_failed_at is not None and t - self.pull_failed_at > 0.3:
                image = self.spec.get("image", "")
                if self.waiting_reason() == "ErrImagePull":
                    self.state = {
                        "waiting": {
                            "reason": "ImagePullBackOff",
                            "message": f'Back-off pulling image "{image}"',
                        }
                    }
                    self.runner.event("BackOff", f'Back-off pulling image "{image}"', warning=True)
            if t >= self.next_start:
                self.try_start()
            return
        if not self.check_exit():
            self.probes.tick()
