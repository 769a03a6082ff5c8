"""The worker process of a pod: serves the pod's HTTP API on the socket its supervisor owns.

Started by the supervisor as ``python -m hotpod.runtime.worker --fd N --parent-fd M``. It learns
who it is from the environment the backend set (``HOTPOD_POD_NAME``, ``HOTPOD_RANK``,
``HOTPOD_SERVICE``, ``HOTPOD_TOKEN``, ``HOTPOD_POD_ROOT``, ``HOTPOD_STORE``) and exits as soon as
its supervisor is gone.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hotpod-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--parent-fd", type=int)
    opts = parser.parse_args(argv)
    if opts.parent_fd is not None:
        _exit_with_parent(opts.parent_fd)

    import uvicorn

    from hotpod.runtime import logs
    from hotpod.runtime.app import PodApp, PodState
    from hotpod.store import LocalStore

    env = os.environ
    token = env.pop("HOTPOD_TOKEN", "")
    if not token:
        sys.exit("hotpod-worker: HOTPOD_TOKEN is not set")
    root = Path(env.get("HOTPOD_POD_ROOT", os.getcwd()))
    pod_log = logs.install()
    state = PodState(
        pod=env.get("HOTPOD_POD_NAME", "pod"),
        rank=int(env.get("HOTPOD_RANK", "0")),
        service=env.get("HOTPOD_SERVICE", ""),
        token=token,
        root=root,
        store=LocalStore(Path(env["HOTPOD_STORE"])),
        pod_log=pod_log,
        max_body=int(env.get("HOTPOD_MAX_BODY_BYTES", str(4 << 30))),
        threads=int(env.get("HOTPOD_THREADS", "64")),
    )
    sock = socket.socket(fileno=opts.fd)
    config = uvicorn.Config(
        PodApp(state),
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
