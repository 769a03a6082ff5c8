"""Large-payload throughput: a 256 MiB numpy array echoed through a hotpod handle with pickle,
beside a raw loopback socket echo of the same bytes in the same run.

The hotpod side deploys ``def echo(x): return x`` on one pod and calls it with
``serialization="pickle"``: the array is pickled, sent, unpickled on the pod, returned, pickled
again, sent back and unpickled here. The baseline is what two processes can do with a loopback
TCP socket and no serialization at all: the client sends the array's bytes (``sendall`` of a
memoryview) to an echo server in another process, which receives them into a fresh buffer
(``recv_into``) and sends them back into a fresh buffer here.

Both count the same thing: the payload moved both ways, 2 x the array's size, divided by the
time of one round trip, in MB/s (10^6 bytes per second). Repetitions alternate between the two;
each figure is the median over repetitions.

    python bench/payload.py [--mib 256] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ECHO_SERVER = """
import socket, struct, sys

def recv_exactly(conn, n):
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = conn.recv_into(view[got:], n - got)
        if not k:
            raise EOFError
        got += k
    return buf

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    try:
        (n,) = struct.unpack(">Q", recv_exactly(conn, 8))
    except EOFError:
        break
    data = recv_exactly(conn, n)
    conn.sendall(struct.pack(">Q", n))
    conn.sendall(memoryview(data))
"""


def echo(x: Any) -> Any:  # the function hotpod deploys
    return x


def recv_exactly(conn: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = conn.recv_into(view[got:], n - got)
        if not k:
            raise EOFError("the echo server closed the connection")
        got += k
    return buf


def raw_echo(conn: socket.socket, data: memoryview) -> float:
    t = time.perf_counter()
    conn.sendall(struct.pack(">Q", data.nbytes))
    conn.sendall(data)
    (n,) = struct.unpack(">Q", recv_exactly(conn, 8))
    back = recv_exactly(conn, n)
    elapsed = time.perf_counter() - t
    assert len(back) == data.nbytes
    return elapsed


def hotpod_echo(handle: Any, arr: Any) -> float:
    t = time.perf_counter()
    back = handle(arr)
    elapsed = time.perf_counter() - t
    assert back.shape == arr.shape and back.dtype == arr.dtype
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--reps", type=int, default=5)
    opts = parser.parse_args()

    import numpy as np

    size = opts.mib << 20
    arr = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8)
    data = memoryview(arr).cast("B")

    with tempfile.TemporaryDirectory(prefix="hotpod-bench-") as tmpdir:
        os.environ["HOTPOD_HOME"] = str(Path(tmpdir) / "home")
        import hotpod as kt

        server = subprocess.Popen(
            [sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            conn = socket.create_connection(("127.0.0.1", port))
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            handle = (
                kt.fn(echo, name="bench-payload")
                .to(kt.Compute(cpus="1"))
                .with_options(serialization="pickle", stream_logs=False)
            )
            back = handle(arr)  # warm, and check the round trip once
            assert np.array_equal(back, arr)
            del back
            raw_echo(conn, data)
            raw_t, hot_t = [], []
            for _ in range(opts.reps):
                raw_t.append(raw_echo(conn, data))
                hot_t.append(hotpod_echo(handle, arr))
            conn.close()
            handle.teardown()
        finally:
            server.terminate()
            server.wait()
            from hotpod.backends import get_backend

            get_backend().teardown_all()
            get_backend().stop_controller()  # type: ignore[attr-defined]

    moved = 2 * size / 1e6  # MB, both ways
    raw_rates = [moved / t for t in raw_t]
    hot_rates = [moved / t for t in hot_t]
    ratios = [h / r for h, r in zip(hot_rates, raw_rates, strict=True)]
    print(
        f"{opts.mib} MiB numpy uint8 array echoed (sent and returned), 1 pod, "
        f"{os.cpu_count()} cores; MB/s = 2 x {size:,} bytes / round trip; "
        f"medians of {opts.reps}"
    )
    print(f"{'':34}{'MB/s':>8}{'round trip s':>14}")
    raw_s, hot_s = statistics.median(raw_t), statistics.median(hot_t)
    print(
        f"{'raw loopback socket (no pickle)':34}{statistics.median(raw_rates):>8.0f}{raw_s:>14.3f}"
    )
    print(f"{'hotpod handle, pickle':34}{statistics.median(hot_rates):>8.0f}{hot_s:>14.3f}")
    print(
        f"hotpod / raw: {statistics.median(ratios):.0%} "
        f"(per rep: {', '.join(f'{r:.0%}' for r in ratios)}; target >= 50%, limit 30%)"
    )


if __name__ == "__main__":
    main()
