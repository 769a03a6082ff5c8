"""Free TCP ports for what binds them later: pods, rendezvous ports, apps, Ray's agents.

A port the kernel hands out for ``bind(0)`` lies in its ephemeral range, the range it also takes
the local ports of outgoing connections from: between choosing such a port and binding it, any
connection this machine opens may take it (``EADDRINUSE`` in ``init_process_group``). So ports
are chosen below that range, where the kernel never hands one out by itself.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Collection

#: the lowest port handed out: below are Ray's worker ports (10002-19999) and many services
LOW = 20000
_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
_DEFAULT_EPHEMERAL = (32768, 60999)


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections."""
    try:
        with open(_RANGE_FILE) as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return _DEFAULT_EPHEMERAL


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))  # every address: a rendezvous server listens on all of them
        except OSError:
            return False
    return True


def free_port(used: Collection[int] = ()) -> int:
    """A port nothing listens on now, outside the ephemeral range and not in ``used``."""
    low, high = ephemeral_range()
    choices = range(LOW, low) if low - LOW >= 1000 else range(high + 1, 65536)
    if len(choices) >= 1000:
        for _ in range(256):
            port = random.choice(choices)
            if port not in used and _bindable(port):
                return port
    for _ in range(256):  # (a machine without room outside its ephemeral range)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in used:
            return port
    raise OSError(f"no free TCP port outside the {len(used)} in use here")
