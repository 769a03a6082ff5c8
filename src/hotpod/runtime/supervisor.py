"""The first process of a pod: owns the listening socket and keeps a worker serving on it.

Started by a backend as ``python -m hotpod.runtime.supervisor`` with ``HOTPOD_PORT`` (and
optionally ``HOTPOD_HOST``) set. The socket stays open across worker restarts, so a crashed
worker comes back on the same address without the pod being replaced.

A worker asks to be replaced (SIGUSR1 to the supervisor) when a setup step changed a package it
has imported: the supervisor starts a successor on the same socket, and only when the successor
says it is ready (a byte on its ready pipe) does the old worker get SIGTERM and drain. Calls keep
being served by the old worker until then: no failed calls during the swap. SIGTERM stops the
workers gracefully, then the supervisor. SIGUSR2 (a distributed pool re-forms, or a caller asked
for fresh workers) kills the worker at once, since it may be stuck in a collective that will never
finish, and starts a new one that loads the same launch. Kept to the standard library so it
starts fast.

A pod of a distributed pool with ``HOTPOD_NUM_PROC`` = P > 1 runs P workers: local rank 0 on
the pod's socket, each other one on a loopback socket of its own (``HOTPOD_LOCAL_PEERS``), all
bound here once. The processes live and die together: one exiting, a kill-and-replace, or a
successor for local rank 0 replaces the others too (``hotpod.runtime.relay`` loads their launch
and relays calls to them).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

MIN_BACKOFF = 0.1
MAX_BACKOFF = 10.0
STABLE_AFTER = 30.0
DRAIN_TIMEOUT = 30.0


def pod_name(env: Mapping[str, str]) -> str:
    """The pod's name: ``HOTPOD_POD_NAME`` when the backend sets it, else the hostname (a
    Kubernetes pod's hostname is its name; a Knative revision's pods get no downward-API
    variables)."""
    return env.get("HOTPOD_POD_NAME") or env.get("HOSTNAME") or socket.gethostname() or "pod"


def _log(message: str) -> None:
    from hotpod.loglines import format_line

    pod = os.environ.get("HOTPOD_POD_NAME")
    rank = os.environ.get("HOTPOD_RANK")
    line = format_line(f"hotpod-supervisor: {message}", pod, int(rank) if rank else None)
    sys.stdout.write(line)
    sys.stdout.flush()


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    ready_fd: int  # the worker writes b"r" (ready) or b"f" (failed to load) here
    parent_fd: int  # our end of the pipe whose closing tells the worker we are gone
    started: float
    ready: bool = False
    retiring_since: float | None = None

    def close(self) -> None:
        for fd in (self.ready_fd, self.parent_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def _handover_failed(code: int | None) -> None:
    """A worker died before it said how a launch handed to it went (``launch.next.json``: a
    successor's, or a new pod's pending launch): say it failed, for it (the client, or the
    controller, waits to hear), so that the next worker resumes the last good launch."""
    root = os.environ.get("HOTPOD_POD_ROOT")
    if not root:
        return
    handed = os.path.join(root, ".hotpod", "launch.next.json")
    try:
        with open(handed) as fh:
            launch_id = json.load(fh).get("launch_id")
    except (OSError, ValueError, AttributeError):
        return  # the successor reported (and removed it) already
    error = {
        "launch_id": launch_id,
        "message": f"the new worker exited with code {code} before it was ready",
        "detail": "see the pod log ('hotpod logs SERVICE --pod POD')",
    }
    path = os.path.join(root, ".hotpod", "launch_error.json")
    with open(path + ".tmp", "w") as fh:
        json.dump(error, fh)
    os.replace(path + ".tmp", path)
    os.unlink(handed)


def spawn(sock: socket.socket, local_rank: int = 0) -> Worker:
    parent_r, parent_w = os.pipe()
    ready_r, ready_w = os.pipe()
    cmd = [sys.executable, "-m", "hotpod.runtime.worker", "--fd", str(sock.fileno())]
    cmd += ["--parent-fd", str(parent_r), "--ready-fd", str(ready_w)]
    env = {**os.environ, "HOTPOD_LOCAL_RANK": str(local_rank)}
    proc = subprocess.Popen(cmd, pass_fds=(sock.fileno(), parent_r, ready_w), env=env)
    os.close(parent_r)
    os.close(ready_w)
    os.set_blocking(ready_r, False)
    return Worker(proc, ready_r, parent_w, time.monotonic())


class Supervisor:
    def __init__(self, sock: socket.socket, local: list[socket.socket] | None = None) -> None:
        self.sock = sock
        self.local = local or []  # the sockets of local ranks 1..P-1 (num_proc > 1)
        self.siblings: list[Worker] = []
        self.sel = selectors.DefaultSelector()
        self.current: Worker | None = None
        self.successor: Worker | None = None
        self.retiring: list[Worker] = []
        self.stopping = False
        self.replace = False
        self.kill_replace = False  # SIGUSR2: kill the worker, then start a fresh one
        self.backoff = MIN_BACKOFF
        self.restart_at: float | None = 0.0  # start the first worker at once

    def _start(self) -> Worker:
        worker = spawn(self.sock)
        self.sel.register(worker.ready_fd, selectors.EVENT_READ, worker)
        return worker

    def _restart_siblings(self) -> None:
        """Kill the workers of local ranks 1..P-1 (if any) and start fresh ones."""
        for worker in self.siblings:
            worker.proc.kill()
            worker.proc.wait()
            self._forget(worker)
        self.siblings = []
        if not self.stopping:
            self.siblings = [spawn(s, k) for k, s in enumerate(self.local, 1)]

    def _forget(self, worker: Worker) -> None:
        try:
            self.sel.unregister(worker.ready_fd)
        except (KeyError, ValueError):
            pass
        worker.close()

    def _on_ready(self, worker: Worker) -> None:
        try:
            data = os.read(worker.ready_fd, 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the worker closed the pipe (it exited): handled by the reaper
            self.sel.unregister(worker.ready_fd)
            return
        if b"r" in data:
            worker.ready = True
            if worker is self.successor and self.current is not None:
                _log(f"worker {worker.proc.pid} ready; retiring {self.current.proc.pid}")
                self.current.proc.send_signal(signal.SIGTERM)
                self.current.retiring_since = time.monotonic()
                self.retiring.append(self.current)
                self.current, self.successor = worker, None
        elif b"f" in data and worker is self.successor:
            _log(f"worker {worker.proc.pid} could not load the launch; keeping the old one")
            worker.proc.kill()

    def _reap(self) -> None:
        now = time.monotonic()
        for worker in list(self.retiring):
            if worker.proc.poll() is not None:
                self.retiring.remove(worker)
                self._forget(worker)
            elif worker.retiring_since and now - worker.retiring_since > DRAIN_TIMEOUT:
                worker.proc.kill()
        if self.successor is not None and self.successor.proc.poll() is not None:
            code = self.successor.proc.returncode
            _log(f"successor {self.successor.proc.pid} exited ({code}) before it was ready")
            _handover_failed(code)
            self._forget(self.successor)
            self.successor = None
        lost = next((w for w in self.siblings if w.proc.poll() is not None), None)
        if lost is not None and not self.stopping:
            _log(f"worker {lost.proc.pid} exited ({lost.proc.returncode}); replacing them all")
            self.kill_replace = True  # the processes of a pod live and die together
        cur = self.current
        if cur is not None and cur.proc.poll() is not None:
            code = cur.proc.returncode
            self._forget(cur)
            self.current = None
            if self.successor is not None:  # the successor takes over at once
                self.current, self.successor = self.successor, None
                return
            if self.stopping:
                return
            if not cur.ready:  # it died loading: a launch handed to it failed (not tried again)
                _handover_failed(code)
            if self.siblings:  # they start again with the new local rank 0
                self._restart_siblings()
            ran = now - cur.started
            if ran > STABLE_AFTER:
                self.backoff = MIN_BACKOFF
            _log(
                f"worker exited with code {code} after {ran:.1f} s; restarting in {self.backoff:.1f} s"
            )
            self.restart_at = now + self.backoff
            self.backoff = min(self.backoff * 2, MAX_BACKOFF)

    def _kill_and_replace(self) -> None:
        """Kill the serving worker (and a successor still loading) and start a fresh one."""
        for worker in (self.current, self.successor):
            if worker is not None:
                _log(f"killing worker {worker.proc.pid} for a fresh one")
                worker.proc.kill()
                worker.proc.wait()
                self._forget(worker)
        self.successor = None
        self.current = self._start()
        self._restart_siblings()
        self.restart_at = None
        self.backoff = MIN_BACKOFF

    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        self.sel.register(wake_r, selectors.EVENT_READ, None)

        def on_signal(signum: int, _frame: object) -> None:
            if signum == signal.SIGUSR1:
                self.replace = True
            elif signum == signal.SIGUSR2:
                self.kill_replace = True
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self.stopping = True

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD):
            signal.signal(sig, on_signal)

        stop_deadline: float | None = None
        while True:
            now = time.monotonic()
            if self.stopping and stop_deadline is None:
                stop_deadline = now + 5
                # refuse new connections at once (clients wait for the pod to come back),
                # rather than queue them on a socket no worker will accept from again
                self.sock.close()
                for w in (self.current, self.successor, *self.retiring, *self.siblings):
                    if w is not None and w.proc.poll() is None:
                        w.proc.send_signal(signal.SIGTERM)
            if self.stopping:
                alive = [
                    w for w in (self.current, self.successor, *self.retiring, *self.siblings) if w
                ]
                if all(w.proc.poll() is not None for w in alive):
                    break
                if stop_deadline is not None and now > stop_deadline:
                    for w in alive:
                        w.proc.kill()
            elif self.current is None and self.restart_at is not None and now >= self.restart_at:
                self.current = self._start()
                if self.local and not self.siblings:
                    self._restart_siblings()
                self.restart_at = None
            if self.kill_replace and not self.stopping:
                self.kill_replace = False
                self._kill_and_replace()
            if self.replace and not self.stopping:
                self.replace = False
                if self.successor is None and self.current is not None:
                    _log(f"replacing worker {self.current.proc.pid}")
                    self.successor = self._start()
                    self._restart_siblings()  # (the successor loads the launch into them)
            timeout = 1.0
            if self.restart_at is not None:
                timeout = max(0.0, min(timeout, self.restart_at - now))
            for key, _ in self.sel.select(timeout):
                if key.data is None:
                    try:
                        while os.read(wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                else:
                    self._on_ready(key.data)
            self._reap()
        for w in (self.current, self.successor, *self.retiring, *self.siblings):
            if w is not None:
                w.proc.wait()
                w.close()
        _log("stopped")
        return 0


def main() -> int:
    os.environ["HOTPOD_POD_NAME"] = pod_name(os.environ)  # for the workers and the user's code
    host = os.environ.get("HOTPOD_HOST", "127.0.0.1")
    port = int(os.environ.get("HOTPOD_PORT", "0"))
    try:
        sock = bind(host, port)
    except OSError as exc:
        _log(f"cannot listen on {host}:{port}: {exc}")
        return 75
    _log(f"listening on {host}:{sock.getsockname()[1]} (pid {os.getpid()})")
    procs = int(os.environ.get("HOTPOD_NUM_PROC") or 1)
    local = [bind("127.0.0.1", 0) for _ in range(procs - 1)]  # local ranks 1..P-1
    if local:
        peers = ",".join(f"127.0.0.1:{s.getsockname()[1]}" for s in local)
        os.environ["HOTPOD_LOCAL_PEERS"] = peers
        _log(f"{procs} processes: local ranks 1..{procs - 1} on {peers}")
    return Supervisor(sock, local).run()


if __name__ == "__main__":
    sys.exit(main())
