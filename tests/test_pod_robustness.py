"""A real pod (supervisor + worker processes) under abuse: bad requests, and a killed worker."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import pickle
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from hotpod import codesync, wire
from hotpod.backends.base import PodInfo
from hotpod.client import CallOptions, PodClient
from hotpod.errors import PodUnreachableError
from hotpod.store import LocalStore

pytestmark = pytest.mark.slow

TOKEN = "robust-token-0123456789"
MAX_BODY = 65536
MODULE = "robust_mod"
SOURCE = """
    import os
    import time

    def f(x, sleep=0.0):
        if sleep:
            print("started", flush=True)
            time.sleep(sleep)
        return [x * 2, os.getpid()]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RealPod:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def health(self) -> dict[str, Any] | None:
        try:
            status, body = self.request("GET", "/health")
        except OSError:
            return None
        return json.loads(body) if status == 200 else None

    def wait_ready(self, timeout: float = 20, not_pid: int | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the supervisor exited:\n{self.log()}"
            h = self.health()
            if h and h["ready"] and h["pid"] != not_pid:
                return h
            time.sleep(0.05)
        raise AssertionError(f"the pod did not become ready in {timeout} s:\n{self.log()}")

    def call(self, *args: Any, **kwargs: Any) -> Any:
        status, body = self.request(
            "POST",
            "/call",
            json.dumps({"args": args, "kwargs": kwargs}).encode(),
            {**AUTH, "Content-Type": wire.CT_JSON},
        )
        assert status == 200, body
        frames = [f for f in wire.FrameDecoder().feed(body) if f[0] != wire.FRAME_LOG]
        assert len(frames) == 1 and frames[0][0] == wire.FRAME_JSON, frames
        return json.loads(frames[0][1])


AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Hotpod-Protocol": wire.PROTOCOL_VERSION}


@pytest.fixture
def real_pod(tmp_path: Path) -> Iterator[RealPod]:
    home = tmp_path / "home"
    pod_root = home / "pods" / "robust-0"
    pod_root.mkdir(parents=True)
    store = LocalStore(home / "store")
    project = tmp_path / "project"
    project.mkdir()
    (project / f"{MODULE}.py").write_text(textwrap.dedent(SOURCE))
    manifest = codesync.sync(project, store, cache_dir=tmp_path / "hash-cache").manifest_id

    port = free_port()
    env = {
        **os.environ,
        "HOTPOD_HOME": str(home),
        "HOTPOD_PORT": str(port),
        "HOTPOD_POD_ROOT": str(pod_root),
        "HOTPOD_STORE": str(home / "store"),
        "HOTPOD_TOKEN": TOKEN,
        "HOTPOD_POD_NAME": "robust-0",
        "HOTPOD_RANK": "0",
        "HOTPOD_SERVICE": "robust",
        "HOTPOD_POD": "1",
        "HOTPOD_MAX_BODY_BYTES": str(MAX_BODY),
    }
    log_path = tmp_path / "pod.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hotpod.runtime.supervisor"],
            env=env,
            cwd=pod_root,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pod = RealPod(proc, port, log_path)
    try:
        deadline = time.monotonic() + 20
        while pod.health() is None:
            assert proc.poll() is None, f"the supervisor exited:\n{pod.log()}"
            assert time.monotonic() < deadline, f"no /health after 20 s:\n{pod.log()}"
            time.sleep(0.05)
        launch = {
            "launch_id": "l1",
            "service": "robust",
            "kind": "fn",
            "code": {
                "manifest": manifest,
                "paths": [""],
                "module": MODULE,
                "script": None,
                "qualname": "f",
                "by_value": None,
            },
            "init": None,
            "env": {},
        }
        status, body = pod.request("POST", "/_hotpod/launch", json.dumps(launch).encode(), AUTH)
        assert status == 200, body
        pod.wait_ready()
        yield pod
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


# -- bad requests ------------------------------------------------------------------------------


def http_request(
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]] | dict[str, str],
    body: bytes = b"",
    *,
    length: bool = True,
) -> bytes:
    if isinstance(headers, dict):
        headers = [(k.encode(), v.encode()) for k, v in headers.items()]
    head = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
    head += [k + b": " + v for k, v in headers]
    if length:
        head.append(f"Content-Length: {len(body)}".encode())
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def chunked(body: bytes, size: int = 8192) -> bytes:
    out = b"".join(
        f"{len(body[i : i + size]):x}\r\n".encode() + body[i : i + size] + b"\r\n"
        for i in range(0, len(body), size)
    )
    return out + b"0\r\n\r\n"


JSON_AUTH = {**AUTH, "Content-Type": wire.CT_JSON}
PICKLE_AUTH = {**AUTH, "Content-Type": wire.CT_PICKLE}
BIG = b'{"args": ["' + b"x" * (MAX_BODY + 5000) + b'"]}'


def bad_requests() -> list[tuple[str, bytes, str]]:
    """(name, bytes to send, mode).

    mode "http": a well-formed request, which must get a 4xx; "raw": malformed HTTP, answered with
    a 4xx or a closed connection; "eof": like raw, and the client half-closes after sending.
    """
    good_body = b'{"args": [1]}'
    cases: list[tuple[str, bytes, str]] = [
        ("no token", http_request("POST", "/call", {"X-Hotpod-Protocol": "1"}, good_body), "http"),
        (
            "wrong token",
            http_request(
                "POST", "/call", {"Authorization": "Bearer nope", "X-Hotpod-Protocol": "1"}
            ),
            "http",
        ),
        (
            "basic auth",
            http_request("POST", "/call", {"Authorization": f"Basic {TOKEN}"}, good_body),
            "http",
        ),
        (
            "huge token",
            http_request("POST", "/call", {"Authorization": "Bearer " + "A" * 60_000}),
            "http",
        ),
        (
            "no protocol",
            http_request("POST", "/call", {"Authorization": f"Bearer {TOKEN}"}, good_body),
            "http",
        ),
        (
            "wrong protocol",
            http_request("POST", "/call", {**JSON_AUTH, "X-Hotpod-Protocol": "0"}, good_body),
            "http",
        ),
        ("garbage json", http_request("POST", "/call", JSON_AUTH, b"{args: [1,"), "http"),
        ("json array", http_request("POST", "/call", JSON_AUTH, b"[1, 2]"), "http"),
        ("json args dict", http_request("POST", "/call", JSON_AUTH, b'{"args": {}}'), "http"),
        ("json non-utf8", http_request("POST", "/call", JSON_AUTH, b'{"args": ["\xff"]}'), "http"),
        ("deep json", http_request("POST", "/call", JSON_AUTH, b"[" * 50_000), "http"),
        (
            "wrong content type",
            http_request("POST", "/call", {**AUTH, "Content-Type": "text/plain"}, good_body),
            "http",
        ),
        ("no content type", http_request("POST", "/call", AUTH, good_body), "http"),
        ("pickle garbage", http_request("POST", "/call", PICKLE_AUTH, b"\x80\x05garbage"), "http"),
        ("pickle empty", http_request("POST", "/call", PICKLE_AUTH, b""), "http"),
        (
            "pickle wrong shape",
            http_request("POST", "/call", PICKLE_AUTH, pickle.dumps([1, 2, 3])),
            "http",
        ),
        (
            "bad accept",
            http_request("POST", "/call", {**JSON_AUTH, "X-Hotpod-Accept": "xml"}, good_body),
            "http",
        ),
        ("oversized with length", http_request("POST", "/call", JSON_AUTH, BIG), "http"),
        (
            "oversized declared only",
            http_request(
                "POST",
                "/call",
                {**JSON_AUTH, "Content-Length": str(10 * MAX_BODY)},
                good_body,
                length=False,
            ),
            "http",
        ),
        (
            "oversized chunked",
            http_request(
                "POST",
                "/call",
                {**JSON_AUTH, "Transfer-Encoding": "chunked"},
                chunked(BIG),
                length=False,
            ),
            "http",
        ),
        (
            "oversized chunked, one chunk",
            http_request(
                "POST",
                "/call",
                {**JSON_AUTH, "Transfer-Encoding": "chunked"},
                chunked(BIG, len(BIG)),
                length=False,
            ),
            "http",
        ),
        (
            "oversized without length, no token",
            http_request("POST", "/call", {"X-Hotpod-Protocol": "1"}, BIG, length=False),
            "raw",
        ),
        (
            "short length, long body",
            http_request("POST", "/call", {**JSON_AUTH, "Content-Length": "10"}, BIG, length=False),
            "raw",
        ),
        ("unknown path", http_request("POST", "/nope", JSON_AUTH, good_body), "http"),
        ("unknown path deep", http_request("GET", "/a/b/c/../../d?x=1", {}), "http"),
        ("path traversal", http_request("POST", "/call/../../etc/passwd", JSON_AUTH), "http"),
        ("method on fn", http_request("POST", "/call/add", JSON_AUTH, good_body), "http"),
        ("dunder method", http_request("POST", "/call/__class__", JSON_AUTH), "http"),
        ("GET /call", http_request("GET", "/call", AUTH, length=False), "http"),
        ("PUT /call", http_request("PUT", "/call", JSON_AUTH, good_body), "http"),
        ("DELETE launch", http_request("DELETE", "/_hotpod/launch", AUTH), "http"),
        ("POST health", http_request("POST", "/health", {}, good_body), "http"),
        ("PATCH info", http_request("PATCH", "/_hotpod/info", AUTH), "http"),
        ("odd method", http_request("BREW", "/call", JSON_AUTH, good_body), "raw"),
        ("launch no token", http_request("POST", "/_hotpod/launch", {}, b"{}"), "http"),
        ("launch garbage", http_request("POST", "/_hotpod/launch", AUTH, b"{{{"), "http"),
        ("launch no code", http_request("POST", "/_hotpod/launch", AUTH, b'{"x": 1}'), "http"),
        (
            "launch bad kind",
            http_request(
                "POST", "/_hotpod/launch", AUTH, b'{"kind": "nope", "code": {"module": "m"}}'
            ),
            "http",
        ),
        (
            "launch bad paths",
            http_request(
                "POST",
                "/_hotpod/launch",
                AUTH,
                b'{"code": {"module": "m", "qualname": "f", "paths": 7}, "env": []}',
            ),
            "http",
        ),
        (
            "non-utf8 token",
            http_request(
                "POST",
                "/call",
                [(b"Authorization", b"Bearer \xff\xfe\x80"), (b"X-Hotpod-Protocol", b"1")],
                good_body,
            ),
            "http",
        ),
        (
            "non-utf8 protocol",
            http_request(
                "POST",
                "/call",
                [
                    (b"Authorization", f"Bearer {TOKEN}".encode()),
                    (b"X-Hotpod-Protocol", b"\xc3\x28"),
                ],
                good_body,
            ),
            "http",
        ),
        (
            "non-utf8 content type",
            http_request(
                "POST",
                "/call",
                [(k.encode(), v.encode()) for k, v in AUTH.items()]
                + [(b"Content-Type", b"application/\xffjson")],
                good_body,
            ),
            "http",
        ),
        (
            "non-utf8 request id",
            http_request(
                "POST",
                "/call",
                [(k.encode(), v.encode()) for k, v in AUTH.items()]
                + [(b"Content-Type", b"text/x"), (b"X-Hotpod-Request-Id", b"\xff\xff")],
                good_body,
            ),
            "http",
        ),
        ("raw garbage", b"GARBAGE\r\n\r\n", "raw"),
        ("raw binary", bytes(range(256)) * 4, "raw"),
        ("truncated request line", b"POST /call HTT", "eof"),
        ("truncated headers", b"POST /call HTTP/1.1\r\nHost: x\r\nAuthor", "eof"),
        ("no colon header", b"GET /health HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n", "raw"),
        ("bad version", b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n", "raw"),
        ("http2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "raw"),
        (
            "bad content length",
            b"POST /call HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            "raw",
        ),
        (
            "negative content length",
            b"POST /call HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
            "raw",
        ),
        (
            "length and chunked",
            b"POST /call HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
            "raw",
        ),
        (
            "bad chunk size",
            b"POST /call HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nab\r\n",
            "raw",
        ),
        ("non-utf8 path", b"POST /call\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n", "raw"),
        (
            "body cut short",
            http_request(
                "POST", "/call", {**JSON_AUTH, "Content-Length": "100"}, b'{"args"', length=False
            ),
            "eof",
        ),
    ]
    return cases


def exchange(port: int, data: bytes, half_close: bool = False) -> int | None:
    """Send ``data`` on a new connection; the response's status, or None if closed unanswered."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered (and closed) before reading all of it
        buf = b""
        while b"\r\n" not in buf:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
    if not buf:
        return None
    line = buf.split(b"\r\n", 1)[0]
    parts = line.split()
    assert len(parts) >= 2 and parts[0].startswith(b"HTTP/1."), f"not an HTTP answer: {buf[:200]!r}"
    return int(parts[1])


def test_a_thousand_bad_requests(real_pod: RealPod) -> None:
    t0 = time.monotonic()
    before = real_pod.wait_ready()
    assert real_pod.call(5) == [10, before["pid"]]
    cases = bad_requests()
    rng = random.Random(1234)
    plan = [rng.choice(cases) for _ in range(1000 - len(cases))] + cases
    rng.shuffle(plan)
    assert len(plan) == 1000

    def one(case: tuple[str, bytes, str]) -> str | None:
        name, data, mode = case
        try:
            status = exchange(real_pod.port, data, half_close=mode == "eof")
        except (TimeoutError, OSError, AssertionError) as exc:
            return f"{name}: {type(exc).__name__}: {exc}"
        if status is None:
            return None if mode != "http" else f"{name}: closed without an answer"
        if not 400 <= status < 500:
            return f"{name}: answered {status}"
        return None

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(one, plan))
    failures = sorted({o for o in outcomes if o is not None})
    assert not failures, "\n".join(failures) + "\n" + real_pod.log()

    after = real_pod.wait_ready(timeout=5)
    assert after["pid"] == before["pid"], real_pod.log()
    assert after["launch_id"] == "l1"
    assert real_pod.call(21) == [42, before["pid"]]
    assert real_pod.proc.poll() is None
    assert "worker exited" not in real_pod.log()
    assert time.monotonic() - t0 < 30


# -- a killed worker ---------------------------------------------------------------------------


class _Lines:
    """A log_out for PodClient that notices when the call has printed."""

    def __init__(self) -> None:
        self.text = ""
        self.started = threading.Event()

    def write(self, s: str) -> int:
        self.text += s
        if "started" in self.text:
            self.started.set()
        return len(s)

    def flush(self) -> None:
        pass


def test_killed_worker_fails_the_call_and_comes_back(real_pod: RealPod) -> None:
    before = real_pod.wait_ready()
    sup = psutil.Process(real_pod.proc.pid)
    [worker] = sup.children()
    assert worker.pid == before["pid"]

    out = _Lines()
    client = PodClient("robust", TOKEN, log_out=out)  # type: ignore[arg-type]
    info = PodInfo(name="robust-0", rank=0, url=real_pod.url, status="running")
    outcome: dict[str, Any] = {}

    def long_call() -> None:
        try:
            outcome["result"] = client.call(info, "", (1,), {"sleep": 30}, CallOptions())
        except BaseException as exc:
            outcome["error"] = exc
        outcome["at"] = time.monotonic()

    caller = threading.Thread(target=long_call, daemon=True)
    try:
        caller.start()
        assert out.started.wait(10), f"the call did not start:\n{real_pod.log()}"
        assert "(robust-0) started" in out.text
        killed_at = time.monotonic()
        worker.send_signal(signal.SIGKILL)
        caller.join(5)
        assert not caller.is_alive(), "the call still waits 5 s after its worker was killed"
        assert outcome["at"] - killed_at < 5
        err = outcome.get("error")
        assert isinstance(err, PodUnreachableError), outcome
        assert err.pod == "robust-0"
        assert "robust-0" in str(err)

        # at once, while the supervisor restarts the worker: the call waits for it
        doubled, pid = client.call(info, "", (21,), {}, CallOptions(timeout=20))
        assert doubled == 42
        assert pid != before["pid"]
        after = real_pod.wait_ready(timeout=5)
        assert after["pid"] == pid
        assert after["launch_id"] == "l1"  # the new worker resumed the persisted launch
        [new_worker] = psutil.Process(real_pod.proc.pid).children()
        assert new_worker.pid == pid
        assert "resumed launch l1" in real_pod.log()
    finally:
        client._transport.close()  # PodClient.close() leaves this thread's connection open
        client.close()


def test_a_handed_launch_that_kills_its_worker_fails_and_the_pod_falls_back(
    real_pod: RealPod, tmp_path: Path
) -> None:
    """A new autoscaled pod is handed the pending launch (``launch.next.json``) besides the last
    good one: code that ends the process at import fails that launch, once, instead of
    restarting the worker into it again and again."""
    before = real_pod.wait_ready()
    project = tmp_path / "exits"
    project.mkdir()
    (project / "exits_mod.py").write_text("import os\nos._exit(3)\n\ndef f(x):\n    return x\n")
    store = LocalStore(tmp_path / "home" / "store")
    manifest = codesync.sync(project, store, cache_dir=tmp_path / "hash-cache").manifest_id
    code = {"manifest": manifest, "paths": [""], "module": "exits_mod", "script": None}
    pending = {"launch_id": "l2", "service": "robust", "kind": "fn", "init": None, "env": {}}
    pending["code"] = {**code, "qualname": "f", "by_value": None}
    state = tmp_path / "home" / "pods" / "robust-0" / ".hotpod"
    (state / "launch.next.json").write_text(json.dumps(pending))
    os.kill(before["pid"], signal.SIGKILL)  # the next worker is handed it, as a new pod's is

    after = real_pod.wait_ready(timeout=10, not_pid=before["pid"])
    assert after["launch_id"] == "l1"  # the last good launch, resumed
    assert after["launch_error"]["launch_id"] == "l2"  # what the controller waits to hear
    assert "exited with code 3 before it was ready" in after["launch_error"]["message"]
    assert not (state / "launch.next.json").exists()
    time.sleep(0.5)  # (a worker in a loop would have been restarted again by now)
    assert real_pod.health()["pid"] == after["pid"]
    assert real_pod.log().count("exited with code 3") == 1
