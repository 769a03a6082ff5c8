"""The worker process of a pod: serves the pod's HTTP API on the socket its supervisor owns.

Started by the supervisor as ``python -m hotpod.runtime.worker --fd N --parent-fd M``. It learns
who it is from the environment the backend set (``HOTPOD_POD_NAME``, ``HOTPOD_RANK``,
``HOTPOD_SERVICE``, ``HOTPOD_TOKEN``, ``HOTPOD_POD_ROOT``, ``HOTPOD_STORE``) and exits as soon as
its supervisor is gone.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path


def _exit_with_parent(fd: int) -> None:
    """Block on the supervisor's pipe; its end closing means the supervisor died."""

    def watch() -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        os._exit(70)

    threading.Thread(target=watch, name="hotpod-parent-watch", daemon=True).start()


def _ask_for_successor() -> None:
    """Ask the supervisor for a new worker; this one serves until the new one is ready."""
    os.kill(os.getppid(), signal.SIGUSR1)


def _ready_reporter(fd: int | None) -> Callable[[bool], None] | None:
    """Tell the supervisor, once, whether this worker loaded the pod's launch."""
    if fd is None:
        return None

    def report(ok: bool) -> None:
        try:
            os.write(fd, b"r" if ok else b"f")
            os.close(fd)
        except OSError:
            pass

    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hotpod-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--parent-fd", type=int)
    parser.add_argument("--ready-fd", type=int)
    opts = parser.parse_args(argv)
    if opts.parent_fd is not None:
        _exit_with_parent(opts.parent_fd)

    import uvicorn

    from hotpod.runtime import debug, logs
    from hotpod.runtime.app import PodApp, PodState
    from hotpod.runtime.fastcall import protocol_factory
    from hotpod.runtime.setup import activate
    from hotpod.runtime.supervisor import pod_name
    from hotpod.store import LocalStore

    env = os.environ
    token = env.pop("HOTPOD_TOKEN", "")
    if not token:
        sys.exit("hotpod-worker: HOTPOD_TOKEN is not set")
    root = Path(env.get("HOTPOD_POD_ROOT", os.getcwd()))
    venv = Path(env["HOTPOD_VENV"]) if env.get("HOTPOD_VENV") else None
    if venv is not None and (venv / "bin" / "python").exists():
        activate(venv)  # packages the service's pip steps installed come first
    pod_log = logs.install()
    debug.install(
        token,
        pod_name(env),
        int(env.get("HOTPOD_RANK", "0")),
        env.get("HOTPOD_SERVICE", ""),
        env.get("HOTPOD_HOST", "127.0.0.1"),
    )
    state = PodState(
        pod=pod_name(env),
        rank=int(env.get("HOTPOD_RANK", "0")),
        service=env.get("HOTPOD_SERVICE", ""),
        token=token,
        root=root,
        store=LocalStore(Path(env["HOTPOD_STORE"])),
        pod_log=pod_log,
        max_body=int(env.get("HOTPOD_MAX_BODY_BYTES", str(4 << 30))),
        threads=int(env.get("HOTPOD_THREADS", "64")),
        venv=venv,
        request_restart=(  # (a pod's other processes are replaced with its local rank 0)
            _ask_for_successor
            if opts.parent_fd is not None and int(env.get("HOTPOD_LOCAL_RANK") or 0) == 0
            else None
        ),
    )
    sock = socket.socket(fileno=opts.fd)
    app = PodApp(state, _ready_reporter(opts.ready_fd))
    config = uvicorn.Config(
        app,
        http=protocol_factory(app),  # type: ignore[arg-type]  # plain calls skip ASGI
        loop="uvloop",
        proxy_headers=False,
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=300,
        timeout_graceful_shutdown=5,
        server_header=False,
        date_header=False,
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
