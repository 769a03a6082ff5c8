"""``breakpoint()`` in remote code: a pdb session on a socket the caller's terminal attaches to.

``install()`` (at worker start) makes ``sys.breakpointhook`` open a session: a TCP listener on the
pod's host, announced to the caller as a ``D`` frame (the client attaches when it runs in the
foreground of a terminal) and as a log line naming the ``hotpod debug`` command that attaches
from anywhere. The first line a debugger client sends is the service token. ``c`` ends the
session and the call goes on; ``q`` raises ``BdbQuit`` in the call.

Call options (header ``X-Hotpod-Debug``): ``rank=N`` lets only that rank stop (the others skip
their breakpoints and meet it at their next synchronization), ``post_mortem=1`` opens a session
on the frame that raised when the call fails, ``debugger=debugpy`` listens for an IDE instead.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import json
import os
import pdb
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any

#: a session nobody attaches to gives up after this many seconds (the call then goes on)
ACCEPT_TIMEOUT = float(os.environ.get("HOTPOD_DEBUG_WAIT", "600"))

Announce = Callable[[dict[str, Any], str], None]


@dataclass(frozen=True)
class DebugOptions:
    rank: int | None = None
    post_mortem: bool = False
    debugger: str = "pdb"

    @classmethod
    def parse(cls, header: str | None) -> DebugOptions:
        """``rank=0;post_mortem=1;debugger=pdb`` (unknown keys are ignored)."""
        if not header:
            return cls()
        values = dict(p.split("=", 1) for p in header.split(";") if "=" in p)
        rank = values.get("rank")
        return cls(
            rank=int(rank) if rank and rank.lstrip("-").isdigit() else None,
            post_mortem=values.get("post_mortem") == "1",
            debugger=values.get("debugger", "pdb"),
        )


@dataclass
class CallDebug:
    """What a call's breakpoints need: who to announce to, and the call's options."""

    options: DebugOptions
    announce: Announce  # (session info, log line) -> sends the D frame and the log line
    request_id: str
    streaming: bool = True  # False: the caller hears nothing until the call ends


@dataclass
class Session:
    port: int
    request_id: str
    location: str
    started: float = field(default_factory=time.time)


current: contextvars.ContextVar[CallDebug | None] = contextvars.ContextVar(
    "hotpod_call_debug", default=None
)
_state: dict[str, Any] = {"token": "", "pod": "", "rank": 0, "service": "", "host": "127.0.0.1"}
_sessions: dict[int, Session] = {}
_debugpy_address: tuple[str, int] | None = None
_lock = threading.Lock()


def install(token: str, pod: str, rank: int, service: str, host: str = "127.0.0.1") -> None:
    """Route ``breakpoint()`` of user code on this worker to remote sessions."""
    _state.update(token=token, pod=pod, rank=rank, service=service, host=host)
    sys.breakpointhook = breakpointhook


def sessions() -> list[dict[str, Any]]:
    """The sessions waiting for a debugger (``hotpod debug`` lists and attaches to them)."""
    with _lock:
        return [
            {
                "port": s.port,
                "request_id": s.request_id,
                "location": s.location,
                "pod": _state["pod"],
            }
            for s in _sessions.values()
        ]


class _RemotePdb(pdb.Pdb):
    """pdb over a socket; the session ends (and the socket closes) on continue or quit."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._file = conn.makefile("rw", encoding="utf-8", errors="replace", newline="\n")
        super().__init__(stdin=self._file, stdout=self._file, nosigint=True)
        self.use_rawinput = False
        self.prompt = "(Pdb) "

    def _close(self) -> None:
        try:
            self._file.flush()
            self._file.close()
        except (OSError, ValueError):  # closed already, or the client went away
            pass
        self._conn.close()

    def do_continue(self, arg: str) -> bool | None:
        result = super().do_continue(arg)
        self._close()
        return result

    do_c = do_cont = do_continue

    def do_quit(self, arg: str) -> bool | None:
        result = super().do_quit(arg)
        self._close()
        return result

    do_q = do_exit = do_quit

    def do_EOF(self, arg: str) -> bool | None:  # the debugger went away: carry on
        return self.do_continue(arg)


def _wait_for_debugger(listener: socket.socket) -> socket.socket | None:
    """Accept the first client that sends the service token."""
    deadline = time.monotonic() + ACCEPT_TIMEOUT
    while time.monotonic() < deadline:
        listener.settimeout(max(deadline - time.monotonic(), 0.1))
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            return None
        conn.settimeout(10)
        try:
            line = b""
            while not line.endswith(b"\n") and len(line) < 4096:
                chunk = conn.recv(1)
                if not chunk:
                    break
                line += chunk
        except OSError:
            conn.close()
            continue
        if line.strip().decode("utf-8", "replace") == _state["token"]:
            conn.settimeout(None)
            conn.sendall(b"hotpod: attached\n")
            return conn
        conn.sendall(b"hotpod: wrong token\n")
        conn.close()
    return None


def _open(frame: FrameType | None, tb: TracebackType | None, what: str) -> None:
    call = current.get()
    listener = socket.socket()
    listener.bind((_state["host"], 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    where = frame or (tb.tb_frame if tb else None)
    location = f"{where.f_code.co_filename}:{where.f_lineno}" if where else "?"
    request_id = call.request_id if call else ""
    info = {
        "pod": _state["pod"],
        "rank": _state["rank"],
        "host": _state["host"],
        "port": port,
        "request_id": request_id,
        "location": location,
        "kind": what,
    }
    line = (
        f"{what} at {location}: the debugger waits. Attach with: "
        f"hotpod debug {_state['service']} --pod {_state['pod']}"
    )
    with _lock:
        _sessions[port] = Session(port, request_id, location)
    try:
        if call is not None:
            call.announce(info, line)
        else:
            print(f"hotpod: {line}", file=sys.__stdout__, flush=True)
        conn = _wait_for_debugger(listener)
    finally:
        listener.close()
        with _lock:
            _sessions.pop(port, None)
    if conn is None:
        return
    debugger = _RemotePdb(conn)
    if tb is not None:
        debugger.reset()
        debugger.interaction(None, tb)
        debugger._close()
    else:
        debugger.set_trace(frame)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def breakpointhook(*args: Any, **kwargs: Any) -> None:
    """``sys.breakpointhook`` of a worker: open a remote session at the caller's frame."""
    if os.environ.get("PYTHONBREAKPOINT") == "0":
        return
    call = current.get()
    options = call.options if call else DebugOptions()
    if options.rank is not None and options.rank != _state["rank"]:
        return  # another rank debugs; this one goes on to meet it at the next sync point
    frame = sys._getframe(1)
    if call is not None and not call.streaming:
        print(
            f"hotpod: breakpoint() at {frame.f_code.co_filename}:{frame.f_lineno} skipped: the "
            "caller does not stream this call (stream_logs=False), so no debugger could attach",
            file=sys.stderr,
            flush=True,
        )
        return
    if _on_event_loop():
        print(
            f"hotpod: breakpoint() at {frame.f_code.co_filename}:{frame.f_lineno} skipped: it "
            "would stop the pod's event loop (async def code); use a sync function to debug",
            file=sys.stderr,
            flush=True,
        )
        return
    if options.debugger == "debugpy" and _debugpy(frame):
        return
    _open(frame, None, "breakpoint()")


def post_mortem(exc: BaseException) -> None:
    """After a call raised: a session on the frame that raised, when the call asked for it."""
    try:
        _post_mortem(exc)
    except Exception as err:  # the debugger must never cost the call its result
        print(f"hotpod: post-mortem session failed: {err!r}", file=sys.stderr, flush=True)


def _post_mortem(exc: BaseException) -> None:
    call = current.get()
    if call is None or not call.options.post_mortem or _on_event_loop():
        return
    if call.options.rank is not None and call.options.rank != _state["rank"]:
        return
    tb = exc.__traceback__
    while (
        tb is not None
        and tb.tb_next is not None
        and "hotpod/runtime" in tb.tb_frame.f_code.co_filename
    ):
        tb = tb.tb_next  # start at the user's frames
    _open(None, tb, f"post-mortem of {type(exc).__name__}")


def _debugpy(frame: FrameType) -> bool:
    try:
        import debugpy  # type: ignore[import-not-found]
    except ImportError:
        print(
            "hotpod: debugger='debugpy' but debugpy is not installed on the pod "
            "(add .pip_install(['debugpy']) to the Image); using pdb",
            file=sys.stderr,
            flush=True,
        )
        return False
    global _debugpy_address
    if _debugpy_address is None:  # one listener per worker, adapter in this process
        try:
            _debugpy_address = debugpy.listen((_state["host"], 0), in_process_debug_adapter=True)
        except TypeError:  # an older debugpy: its adapter is a child of this worker
            _debugpy_address = debugpy.listen((_state["host"], 0))
    host, port = _debugpy_address
    call = current.get()
    line = f"debugpy listens on {host}:{port}: attach your IDE (the call waits for it)"
    if call is not None:
        call.announce({"pod": _state["pod"], "host": host, "port": port, "kind": "debugpy"}, line)
    debugpy.wait_for_client()
    try:  # stop in the user's frame, not in hotpod's
        importlib.import_module("debugpy._vendored.force_pydevd")  # puts pydevd on the path
        pydevd: Any = importlib.import_module("pydevd")

        pydevd.settrace(
            suspend=True,
            trace_only_current_thread=True,
            patch_multiprocessing=False,
            stop_at_frame=frame,
        )
    except Exception:
        debugpy.breakpoint()
    finally:
        sys.breakpointhook = breakpointhook  # later breakpoints come back to hotpod
    return True


def describe_exception(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def session_json() -> bytes:
    return json.dumps(sessions()).encode()
