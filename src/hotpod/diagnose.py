"""``hotpod check``: why a service is not ready, and what to try.

It looks at what the backend knows of each pod (running, restarting, exit codes), at what each
pod says of itself (ready, the launch it serves, the last launch's failure with the failing setup
step and its output, kept in the pod root until a launch succeeds) and at the end of each pod's
log, and turns that into one problem and one fix per pod.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hotpod.backends import Backend, get_backend
from hotpod.errors import HotpodError

LOG_LINES = 10


@dataclass
class PodCheck:
    """One pod's state, and what is wrong with it (``problem`` None: nothing)."""

    name: str
    status: str
    restarts: int
    last_exit: int | None
    answering: bool
    ready: bool
    launch_id: str | None
    launch_error: dict[str, Any] | None
    log_tail: list[str]
    app: dict[str, Any] | None = None  # kt.app: its process, restarts, last exit
    problem: str | None = None
    detail: str = ""  # the output or traceback behind the problem
    fix: str | None = None


@dataclass
class Check:
    service: str
    replicas: int
    pods: list[PodCheck]
    problems: list[str] = field(default_factory=list)  # the service's, beyond each pod's
    fixes: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems and all(p.problem is None for p in self.pods)

    @property
    def ready(self) -> int:
        return sum(p.ready for p in self.pods)


def check(name: str, backend: Backend | None = None) -> Check:
    """Diagnose the service ``name`` (raises ServiceNotFoundError when there is none)."""
    from hotpod.services import pod_info

    backend = backend or get_backend()
    info = backend.get(name)
    result = Check(info.name, info.replicas, [])
    for pod, live in zip(info.pods, pod_info(info), strict=True):
        try:
            tail = [line.display() for line in backend.logs(name, pod=pod.name, tail=LOG_LINES)]
        except HotpodError:
            tail = []
        pc = PodCheck(
            name=pod.name,
            status=pod.status,
            restarts=pod.restarts,
            last_exit=pod.last_exit,
            answering=bool(live),
            ready=bool(live.get("ready")),
            launch_id=live.get("launch_id"),
            launch_error=live.get("launch_error") or None,
            log_tail=tail,
            app=live.get("app"),
        )
        _diagnose(name, pod.url, pc)
        result.pods.append(pc)
    if len(info.pods) < info.replicas:
        result.problems.append(f"{len(info.pods)} of {info.replicas} pods exist")
        result.fixes.append("the controller starts the missing pods; check again in a moment")
    served = sorted({p.launch_id for p in result.pods if p.ready and p.launch_id})
    if len(served) > 1:
        result.problems.append(f"the pods serve different launches ({', '.join(served)})")
        result.fixes.append("run .to() again so that every pod loads the same launch")
    return result


def _diagnose(service: str, url: str, pc: PodCheck) -> None:
    logs = f"hotpod logs {service} --pod {pc.name} --tail 100"
    if pc.status != "running":
        exited = f", last exit code {pc.last_exit}" if pc.last_exit is not None else ""
        pc.problem = f"the pod is {pc.status} ({pc.restarts} restarts{exited})"
        pc.fix = (
            f"the pod's process keeps exiting: its log ({logs}) says why; a crash at start is "
            "most often an error at import time or a missing package"
            if pc.restarts
            else "it is starting: check again in a few seconds"
        )
        return
    if not pc.answering:
        pc.problem = f"the pod's process runs but does not answer at {url}"
        pc.fix = f"it may still be starting: check again in a few seconds, else read {logs}"
        return
    error = pc.launch_error
    if error and error.get("launch_id") != pc.launch_id:
        launch = error.get("launch_id") or "?"
        message = error.get("message")
        if error.get("phase") == "setup" or error.get("step"):
            pc.problem = f"launch {launch} failed at setup step '{error.get('step')}'"
            message = error.get("reason") or message
            pc.fix = (
                "fix that step of the Image (its output is above) and run .to() again; the pod "
                "keeps the steps it applied and runs only that step and those after it"
            )
        elif error.get("phase") in ("import", "init"):
            what = "importing the code" if error.get("phase") == "import" else "running __init__"
            pc.problem = f"launch {launch} failed {what}"
            pc.fix = "fix the error the traceback above shows and run .to() again"
        else:
            pc.problem = f"launch {launch} failed"
            pc.fix = f"read the error above and the pod's log ({logs}), then run .to() again"
        if message:
            pc.problem += f": {message}"
        pc.detail = str(error.get("tail") or error.get("traceback") or error.get("detail") or "")
        if pc.ready:
            pc.fix += f" (meanwhile the pod serves launch {pc.launch_id})"
        return
    app = pc.app
    if app is not None and not (app.get("running") and app.get("ready")):
        pc.problem = (
            f"the app exited with code {app.get('last_exit')} ({app.get('restarts')} restarts); "
            "the pod starts it again, with a growing back-off while it keeps exiting"
        )
        pc.fix = f"its output ({logs}) says why it exits; fix that and run .to() again"
        return
    if not pc.ready:
        pc.problem = "the pod serves no code yet"
        pc.fix = (
            "deploy it with .to() (e.g. kt.fn(f).to(compute)); if a deploy is running, wait for "
            "it to finish"
        )
