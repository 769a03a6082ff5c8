"""A pod passing one call on to others and gathering their answers (``POST /_hotpod/relay``).

Two things use it:

- **processes of a pod** (``distribute(..., num_proc=P)`` with P > 1): the supervisor runs P
  workers, local rank 0 on the pod's socket and the others on loopback sockets of their own
  (``HOTPOD_LOCAL_PEERS``). Local rank 0 loads every launch into them (:func:`launch_siblings`)
  and a call reaches them through its relay (``"local:K"`` targets);
- **a tree fan-out** (large pools): the caller sends the call to a few pods, each passing it on
  to its subtree (``{"addr": "host:port", "targets": [...]}`` targets).

The request is the call's own (body, token, request id, options) with ``X-Hotpod-Relay``:
``{"path": "/call[/method]", "targets": [...], "fail_fast": bool, "grace": seconds}``; a target
is ``"self"`` (this worker, in process), ``"local:K"`` or a pod with its own targets. The answer
is a stream of ``R`` frames, each ``>I`` the leaf's index (in target order, a subtree's leaves in
its order) then one frame of that leaf's answer (log lines as they come, then its result or
error): the caller reads each leaf's answer as if it came alone. A generator's stream cannot be
relayed: that leaf answers with an error.

``fail_fast`` (a pool that meets in collectives): a leaf whose process dies ends the relay at
once, the leaves still running get ``PodTerminatedError`` and this pod's processes are replaced
(their part of the collective cannot finish); when a leaf raises, the others get ``grace``
seconds first.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import time
from typing import TYPE_CHECKING, Any

from hotpod import wire
from hotpod.runtime.asgi import (
    HTTPError,
    Receive,
    Scope,
    Send,
    _header,
    _read_body,
    _start_frames,
)

if TYPE_CHECKING:
    from hotpod.aiotransport import AsyncTransport
    from hotpod.runtime.app import PodApp
    from hotpod.runtime.state import PodState

PATH = "/_hotpod/relay"
HEADER = "x-hotpod-relay"
FRAME_PART = b"R"  # one frame of one leaf's answer: >I leaf index, then the frame
_INDEX = struct.Struct(">I")
#: how long a relay waits for a sibling process that refuses connections (it is starting)
START_WINDOW = 30.0
#: the request headers a relayed call carries on
_FORWARDED = (
    b"content-type",
    b"x-hotpod-protocol",
    b"x-hotpod-accept",
    b"x-hotpod-request-id",
    b"x-hotpod-stream-logs",
    b"x-hotpod-debug",
)


def local_rank() -> int:
    """This worker's rank among its pod's processes (0 but in the other workers of a pod with
    ``num_proc`` > 1)."""
    return int(os.environ.get("HOTPOD_LOCAL_RANK") or 0)


def local_peers() -> list[str]:
    """``host:port`` of this pod's processes of local rank 1..P-1 (set by the supervisor)."""
    peers = os.environ.get("HOTPOD_LOCAL_PEERS") or ""
    return [p for p in peers.split(",") if p] if local_rank() == 0 else []


def part(index: int, kind: bytes, payload: bytes | memoryview) -> bytes:
    """One leaf's frame, wrapped."""
    inner = wire.frame(kind, bytes(payload))
    return wire.frame(FRAME_PART, _INDEX.pack(index) + inner)


def unpart(payload: bytes) -> tuple[int, bytes, bytes]:
    """(leaf index, frame kind, frame payload) of an ``R`` frame."""
    (index,) = _INDEX.unpack_from(payload, 0)
    kind, size = struct.unpack_from(">cI", payload, _INDEX.size)
    start = _INDEX.size + wire.HEAD_SIZE
    return index, kind, payload[start : start + size]


def error_info(type_name: str, message: str, pod: str, rank: int, lost: bool = False) -> bytes:
    """The E frame payload of an error the relay itself reports for a leaf; ``lost``: the
    leaf's process is gone (the caller's fail-fast reads it)."""
    module, _, qualname = type_name.rpartition(".")
    info = {
        "type": type_name,
        "module": module,
        "qualname": qualname,
        "message": message,
        "traceback": "",
        "pod": pod,
        "rank": rank,
        "relay": "lost" if lost else "error",
    }
    return json.dumps(info).encode()


def width(target: Any) -> int:
    """How many leaves (processes) a target answers for."""
    if isinstance(target, dict):
        return sum(width(t) for t in target.get("targets") or [])
    return 1


def check(plan: Any) -> dict[str, Any]:
    """The relay header's plan, checked; raises ValueError naming what is wrong."""
    if not isinstance(plan, dict) or not isinstance(plan.get("path"), str):
        raise ValueError("expected a JSON object with a 'path'")
    if not (plan["path"] == "/call" or plan["path"].startswith("/call/")):
        raise ValueError(f"'path' {plan['path']!r}: only calls (/call...) are relayed")

    def walk(targets: Any, depth: int) -> None:
        if depth > 16 or not isinstance(targets, list) or not targets:
            raise ValueError("'targets' must be a non-empty list (nested at most 16 deep)")
        for t in targets:
            if isinstance(t, dict):
                if not isinstance(t.get("addr"), str):
                    raise ValueError("a pod target needs 'addr': 'host:port'")
                walk(t.get("targets"), depth + 1)
            elif t != "self" and not (isinstance(t, str) and t.startswith("local:")):
                raise ValueError(f"target {t!r}: expected 'self', 'local:K' or a pod")

    walk(plan.get("targets"), 0)
    return plan


_transport: AsyncTransport | None = None


def _http() -> AsyncTransport:
    global _transport
    if _transport is None:
        from hotpod.aiotransport import AsyncTransport

        _transport = AsyncTransport(5.0)
    return _transport


def _auth_headers(state: PodState) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {state.token}",
        wire.HEADER_PROTOCOL: wire.PROTOCOL_VERSION,
    }


# -- launches ---------------------------------------------------------------------------------


async def launch_siblings(state: PodState, spec: dict[str, Any]) -> None:
    """Load ``spec`` into this pod's other processes (local rank 0 only, after its own launch
    succeeded: the setup steps already ran, the others skip them); raises LoadError naming the
    process that failed."""
    from hotpod.runtime.loader import LoadError

    peers = local_peers()
    if not peers:
        return
    body = json.dumps(spec).encode()
    headers = {**_auth_headers(state), "Content-Type": wire.CT_JSON}

    async def one(k: int, addr: str) -> None:
        resp = await _request(f"http://{addr}", "/_hotpod/launch", body, headers)
        data = await resp.read()
        if resp.status != 200:
            try:
                info = json.loads(data)
            except ValueError:
                info = {"error": data.decode("utf-8", "replace")}
            raise LoadError(
                str(info.get("phase") or "import"),
                f"process {k} of pod {state.pod} (local rank {k}): {info.get('error')}",
                str(info.get("traceback") or info.get("tail") or ""),
            )

    await asyncio.gather(*(one(k, addr) for k, addr in enumerate(peers, 1)))


async def _request(url: str, path: str, body: bytes, headers: dict[str, str]) -> Any:
    """POST to a sibling or a pod, waiting (within ``START_WINDOW``) while it refuses."""
    from hotpod import transport

    start = time.monotonic()
    retried = False
    while True:
        try:
            return await _http().request(url, path, body, headers, None)
        except transport.Unreachable:
            if time.monotonic() - start > START_WINDOW:
                raise
            await asyncio.sleep(0.05)
        except transport.Broken as exc:  # closed idle by a restarting server: never read
            if not exc.unanswered or retried:
                raise
            retried = True


# -- calls ------------------------------------------------------------------------------------


async def handle(app: PodApp, scope: Scope, receive: Receive, send: Send) -> None:
    """``POST /_hotpod/relay``: the call to every target at once, the leaves' frames streamed
    back wrapped as they come."""
    st = app.state
    try:
        plan = check(json.loads(_header(scope, HEADER.encode()) or "null"))
    except (ValueError, RecursionError) as exc:
        raise HTTPError(400, f"malformed {HEADER}: {exc}") from None
    body = await _read_body(scope, receive, st.max_body)
    if app._resuming is not None and not app._resuming.done():
        await asyncio.wait([app._resuming])  # (its siblings get their launch there too)
    headers = {k.decode(): v.decode() for k, v in scope["headers"] if k in _FORWARDED}
    headers.update(_auth_headers(st))
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    relay = _Relay(app, scope, plan, body, headers, queue)
    await _start_frames(send)
    task = asyncio.get_running_loop().create_task(relay.run())
    connected = True
    try:
        while True:
            data = await queue.get()
            chunks = [data]
            while not queue.empty() and chunks[-1] is not None:
                chunks.append(queue.get_nowait())
            end = chunks[-1] is None
            out = b"".join(c for c in chunks if c is not None)
            if connected:
                try:
                    await send({"type": "http.response.body", "body": out, "more_body": not end})
                except Exception:  # the caller went away: the leaves are told below
                    connected = False
            if end:
                break
    finally:
        if not task.done():
            task.cancel()
    if relay.replace_local:
        print("hotpod: a process of this pod's call is gone; replacing them all", flush=True)
        os.kill(os.getppid(), signal.SIGUSR2)


class _Relay:
    """One relayed call: a task per target, each putting its leaves' frames on ``queue``."""

    def __init__(
        self,
        app: PodApp,
        scope: Scope,
        plan: dict[str, Any],
        body: bytes,
        headers: dict[str, str],
        queue: asyncio.Queue[bytes | None],
    ) -> None:
        self.app = app
        self.scope = scope
        self.path: str = plan["path"]
        self.targets: list[Any] = plan["targets"]
        self.fail_fast = bool(plan.get("fail_fast"))
        self.grace = float(plan.get("grace") or 10.0)
        self.body = body
        self.headers = headers
        self.queue = queue
        self.pending: dict[int, int] = {}  # a target's first leaf -> its width, while it runs
        self.replace_local = False  # once answered: this pod's processes are replaced

    def emit(self, index: int, kind: bytes, payload: bytes | memoryview) -> None:
        self.queue.put_nowait(part(index, kind, payload))

    def fail(self, index: int, type_name: str, message: str, lost: bool = False) -> None:
        st = self.app.state
        self.emit(index, wire.FRAME_ERROR, error_info(type_name, message, st.pod, st.rank, lost))

    async def run(self) -> None:
        try:
            starts, offset = [], 0
            for t in self.targets:
                starts.append(offset)
                offset += width(t)
            tasks: dict[asyncio.Future[str], int] = {
                asyncio.ensure_future(self._target(t, first)): first
                for t, first in zip(self.targets, starts, strict=True)
            }
            self.pending = {first: width(t) for t, first in zip(self.targets, starts, strict=True)}
            await self._gather(tasks)
        finally:
            self.queue.put_nowait(None)

    async def _gather(self, tasks: dict[asyncio.Future[str], int]) -> None:
        first_error: float | None = None
        waiting = set(tasks)
        while waiting:
            timeout = None
            if first_error is not None:
                timeout = max(0.0, first_error + self.grace - time.monotonic())
            done, waiting = await asyncio.wait(
                waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for fut in done:
                self.pending.pop(tasks[fut], None)
                outcome = fut.result()
                if self.fail_fast and outcome == "lost":
                    self._stop(waiting, "its process is gone")
                    return
                if self.fail_fast and outcome == "error" and first_error is None:
                    first_error = time.monotonic()
            if waiting and first_error is not None and time.monotonic() >= first_error + self.grace:
                self._stop(
                    waiting, f"another rank raised and it did not end within {self.grace:g} s"
                )
                return

    def _stop(self, waiting: set[asyncio.Future[str]], why: str) -> None:
        """End the relay now: the leaves still running are stopped (their processes replaced)."""
        for fut in waiting:
            fut.cancel()
        st = self.app.state
        for first, n in sorted(self.pending.items()):
            for i in range(first, first + n):
                self.fail(
                    i,
                    "hotpod.errors.PodTerminatedError",
                    f"the call was stopped on pod {st.pod} ({why}): a collective without it "
                    "cannot finish, so this pod's processes are replaced",
                )
        self.replace_local = True

    async def _target(self, target: Any, first: int) -> str:
        """Run one target; 'ok', 'error' (a leaf raised) or 'lost' (a leaf's process died)."""
        if target == "self":
            return await self._self(first)
        if isinstance(target, str):  # local:K
            k = int(target.partition(":")[2])
            peers = local_peers()
            if not 1 <= k <= len(peers):
                self.fail(first, "hotpod.errors.CallError", f"this pod has no process {k}")
                return "error"
            url = f"http://{peers[k - 1]}"
            return await self._remote(url, self.path, {}, first, None, f"process {k} of pod")
        if target["targets"] == ["self"]:  # a pod that relays to nobody: its plain call
            url = f"http://{target['addr']}"
            return await self._remote(url, self.path, {}, first, None, f"pod at {url}, via")
        sub = {"path": self.path, "targets": target["targets"], "fail_fast": self.fail_fast}
        sub["grace"] = self.grace
        extra = {HEADER: json.dumps(sub)}
        url = f"http://{target['addr']}"
        return await self._remote(url, PATH, extra, first, width(target), f"pod at {url}, via")

    async def _self(self, first: int) -> str:
        """This worker's own part, called in process through its call path."""
        method = self.path[len("/call/") :] if self.path != "/call" else ""
        scope = {**self.scope, "path": self.path, "raw_path": self.path.encode()}
        sent = False
        status = 200
        body: list[bytes] = []
        decoder = wire.FrameDecoder()
        outcome = "ok"

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": self.body, "more_body": False}
            await asyncio.Event().wait()  # the caller stays until the relay ends
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, outcome
            if message["type"] == "http.response.start":
                status = message["status"]
                return
            data = message.get("body", b"")
            if status != 200:
                body.append(bytes(data))
                return
            for kind, payload in decoder.feed(data):
                outcome = self._leaf_frame(first, kind, payload) or outcome

        try:
            await self.app._handle_call(scope, receive, send, method)
        except HTTPError as exc:
            status, body = exc.status, [json.dumps({"error": exc.message}).encode()]
        if status != 200:
            self._status(first, status, b"".join(body), method)
            return "error"
        return outcome

    def _leaf_frame(self, index: int, kind: bytes, payload: bytes) -> str | None:
        """Pass one frame of a leaf on; 'error' when it is the leaf's error."""
        if kind in (wire.FRAME_STREAM, wire.FRAME_DEBUG):
            what = "a generator's stream" if kind == wire.FRAME_STREAM else "a debugger session"
            self.fail(
                index,
                "hotpod.errors.CallError",
                f"{what} cannot be relayed (a pod with num_proc > 1, or a tree fan-out): call "
                "a function that returns its result, or use workers=[ranks] with a small pool",
            )
            raise _Ended()
        self.emit(index, kind, payload)
        return "error" if kind == wire.FRAME_ERROR else None

    def _status(self, index: int, status: int, data: bytes, method: str) -> None:
        message = wire.error_message(data)
        kind = "builtins.AttributeError" if status == 404 and method else "hotpod.errors.CallError"
        self.fail(index, kind, f"pod {self.app.state.pod} answered {status}: {message}")

    async def _remote(
        self,
        url: str,
        path: str,
        extra: dict[str, str],
        first: int,
        leaves: int | None,
        where: str,
    ) -> str:
        """A sibling's call (``leaves`` None) or another pod's relay, its frames passed on."""
        from hotpod import transport

        outcome = "ok"
        method = self.path[len("/call/") :] if self.path != "/call" else ""
        try:
            resp = await _request(url, path, self.body, {**self.headers, **extra})
            if resp.status != 200:
                data = await resp.read()
                for i in range(first, first + (leaves or 1)):
                    self._status(i, resp.status, data, method)
                return "error"
            decoder = wire.FrameDecoder()
            try:
                async for chunk in resp.chunks():
                    for kind, payload in decoder.feed(chunk):
                        if leaves is None:
                            outcome = self._leaf_frame(first, kind, payload) or outcome
                            continue
                        index, inner, data = unpart(payload)
                        self.emit(first + index, inner, data)
                        if inner == wire.FRAME_ERROR:
                            outcome = _worse(outcome, json.loads(data).get("relay"))
            except _Ended:
                resp.abandon()
                return "error"
        except (transport.Broken, transport.Unreachable, transport.TimedOut) as exc:
            for i in range(first, first + (leaves or 1)):
                self.fail(
                    i,
                    "hotpod.errors.PodTerminatedError",
                    f"the {where} {self.app.state.pod} went away mid-call ({exc}); its "
                    "process probably died",
                    lost=True,
                )
            return "lost"
        return outcome


def _worse(outcome: str, relay: Any) -> str:
    if relay == "lost" or outcome == "lost":
        return "lost"
    return "error"


class _Ended(Exception):
    """A leaf's answer cannot be relayed (it was answered with an error instead)."""


__all__ = [
    "FRAME_PART",
    "HEADER",
    "PATH",
    "check",
    "handle",
    "launch_siblings",
    "local_peers",
    "local_rank",
    "part",
    "unpart",
    "width",
]
