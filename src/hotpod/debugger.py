"""The client end of a remote debugging session: bridge this terminal to a pod's pdb.

A pod announces a waiting session (a ``D`` frame during a call, or ``GET /_hotpod/debug``);
:func:`attach` connects, sends the service token, then copies lines between this terminal and
the session until the pod ends it (``c`` continues the call, ``q`` aborts it).
"""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
from typing import Any, TextIO

_attached = threading.Lock()  # one session at a time in a terminal


def in_foreground_terminal() -> bool:
    """True when this process reads a terminal it owns (not a pipe, not in the background)."""
    try:
        fd = sys.stdin.fileno()
        return os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp()
    except (OSError, ValueError, AttributeError):
        return False


def attach(
    host: str,
    port: int,
    token: str,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> bool:
    """Run a session in this terminal until the pod ends it. False if it could not attach."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    try:
        sock = socket.create_connection((host, port), timeout=10)
    except OSError as exc:
        stdout.write(f"hotpod: could not reach the debugger at {host}:{port}: {exc}\n")
        return False
    with _attached, sock:
        sock.settimeout(None)
        sock.sendall(token.encode() + b"\n")
        in_fd = stdin.fileno()
        while True:
            readable, _, _ = select.select([sock, in_fd], [], [])
            if sock in readable:
                data = sock.recv(65536)
                if not data:
                    break  # the session ended: the call goes on
                stdout.write(data.decode("utf-8", "replace"))
                stdout.flush()
            if in_fd in readable:
                line = os.read(in_fd, 65536)
                if not line:  # end of input: let the call continue
                    sock.sendall(b"c\n")
                    continue
                sock.sendall(line)
    return True


def attach_announced(info: dict[str, Any], token: str) -> bool:
    """Attach to a session a pod announced during a call, when this is an interactive terminal
    and no other session is attached here; otherwise the log line with the command suffices."""
    if info.get("kind") == "debugpy":  # an IDE attaches to that one, not this terminal
        return False
    if not in_foreground_terminal() or _attached.locked():
        return False
    return attach(str(info.get("host", "127.0.0.1")), int(info["port"]), token)


def waiting_sessions(service: str, pod: str | None = None) -> list[dict[str, Any]]:
    """The debugger sessions waiting on a service's pods (``pod`` narrows it to one pod)."""
    import json

    import httpx

    from hotpod.backends import get_backend
    from hotpod.errors import ServiceNotFoundError
    from hotpod.wire import HEADER_PROTOCOL, PROTOCOL_VERSION

    info = get_backend().get(service)
    pods = [p for p in info.pods if pod is None or p.name == pod]
    if pod is not None and not pods:
        names = ", ".join(p.name for p in info.pods)
        raise ServiceNotFoundError(f"service {service!r} has no pod {pod!r} (pods: {names})")
    headers = {"Authorization": f"Bearer {info.token}", HEADER_PROTOCOL: PROTOCOL_VERSION}
    found: list[dict[str, Any]] = []
    with httpx.Client(headers=headers, timeout=5) as http:
        for p in pods:
            try:
                r = http.get(f"{p.url}/_hotpod/debug")
            except httpx.HTTPError:
                continue
            if r.status_code == 200:
                host = p.url.split("//", 1)[1].rsplit(":", 1)[0]
                found += [{**s, "host": host, "token": info.token} for s in json.loads(r.text)]
    return found


def attach_service(service: str, pod: str | None = None) -> bool:
    """Attach this terminal to the first session waiting on the service; False if none."""
    sessions = waiting_sessions(service, pod)
    if not sessions:
        return False
    s = sessions[0]
    sys.stdout.write(f"hotpod: attaching to {s['pod']} at {s['location']}\n")
    return attach(s["host"], int(s["port"]), s["token"])
