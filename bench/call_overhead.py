"""Trivial-call overhead: a hotpod handle against a bare Starlette + uvicorn echo endpoint.

Both servers run as separate processes on this machine; both are called over a warm keep-alive
connection, one call at a time. Rounds alternate between the two so that machine noise hits both
alike; each figure is the median over rounds.

    python bench/call_overhead.py [--calls 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

BARE_APP = textwrap.dedent(
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def echo(request: Request) -> Response:
        return Response(await request.body(), media_type="application/json")

    app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
    """
)


def echo(x):  # the function hotpod deploys
    return x


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_bare(tmp: Path) -> tuple[subprocess.Popen, int]:
    (tmp / "bare_app.py").write_text(BARE_APP)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bare_app:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=tmp,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("bare server did not start")


def percentiles(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return s[len(s) // 2] * 1e3, s[min(int(len(s) * 0.99), len(s) - 1)] * 1e3


def time_bare(port: int, calls: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    body = json.dumps({"args": [1], "kwargs": {}}).encode()
    headers = {"Content-Type": "application/json"}
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        conn.request("POST", "/echo", body=body, headers=headers)
        conn.getresponse().read()
        out.append(time.perf_counter() - t)
    conn.close()
    return out


def time_hotpod(handle, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        handle(1)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hotpod-bench-") as tmpdir:
        tmp = Path(tmpdir)
        os.environ["HOTPOD_HOME"] = str(tmp / "home")
        import hotpod as kt

        bare, port = start_bare(tmp)
        try:
            handle = kt.fn(echo, name="bench-echo").to(kt.Compute(cpus="1"))
            time_hotpod(handle, 200)  # warm both
            time_bare(port, 200)
            rows = []
            for _ in range(opts.rounds):
                b = percentiles(time_bare(port, opts.calls))
                h = percentiles(time_hotpod(handle, opts.calls))
                rows.append((b, h))
            handle.teardown()
        finally:
            bare.terminate()
            bare.wait()
            from hotpod.backends import get_backend

            get_backend().teardown_all()
            get_backend().stop_controller()  # type: ignore[attr-defined]

    bare_p50 = statistics.median(r[0][0] for r in rows)
    bare_p99 = statistics.median(r[0][1] for r in rows)
    hot_p50 = statistics.median(r[1][0] for r in rows)
    hot_p99 = statistics.median(r[1][1] for r in rows)
    ratios = [r[1][0] / r[0][0] for r in rows]
    print(f"trivial call, 1 pod, JSON, warm connection; {opts.rounds} rounds x {opts.calls} calls")
    print(f"{'':28}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'bare Starlette (http.client)':28}{bare_p50:>10.3f}{bare_p99:>10.3f}")
    print(f"{'hotpod handle':28}{hot_p50:>10.3f}{hot_p99:>10.3f}")
    print(
        f"p50 ratio hotpod/bare: {statistics.median(ratios):.2f}x "
        f"(per round: {', '.join(f'{r:.2f}' for r in ratios)}; target <= 1.3x, limit 2x)"
    )


if __name__ == "__main__":
    main()
