"""The first process of a pod: owns the listening socket and keeps a worker serving on it.

Started by a backend as ``python -m hotpod.runtime.supervisor`` with ``HOTPOD_PORT`` (and
optionally ``HOTPOD_HOST``) set. The socket stays open across worker restarts, so a crashed
worker comes back on the same address without the pod being replaced. SIGTERM stops the worker
gracefully, then the supervisor. Kept to the standard library so it starts fast.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

MIN_BACKOFF = 0.1
MAX_BACKOFF = 10.0
STABLE_AFTER = 30.0


def _log(message: str) -> None:
    print(f"hotpod-supervisor: {message}", flush=True)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def main() -> int:
    host = os.environ.get("HOTPOD_HOST", "127.0.0.1")
    port = int(os.environ.get("HOTPOD_PORT", "0"))
    try:
        sock = bind(host, port)
    except OSError as exc:
        _log(f"cannot listen on {host}:{port}: {exc}")
        return 75
    _log(f"listening on {host}:{sock.getsockname()[1]} (pid {os.getpid()})")
    stopping = False
    worker: subprocess.Popen[bytes] | None = None

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    backoff = MIN_BACKOFF
    while not stopping:
        read_end, write_end = os.pipe()
        cmd = [sys.executable, "-m", "hotpod.runtime.worker", "--fd", str(sock.fileno())]
        cmd += ["--parent-fd", str(read_end)]
        started = time.monotonic()
        worker = subprocess.Popen(cmd, pass_fds=(sock.fileno(), read_end))
        os.close(read_end)
        while True:
            try:
                code = worker.wait(timeout=5 if stopping else None)
                break
            except subprocess.TimeoutExpired:
                worker.kill()
        os.close(write_end)
        if stopping:
            break
        ran = time.monotonic() - started
        if ran > STABLE_AFTER:
            backoff = MIN_BACKOFF
        _log(f"worker exited with code {code} after {ran:.1f} s; restarting in {backoff:.1f} s")
        time.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF)
    _log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
