"""Capture of the user's output during a call.

``sys.stdout`` and ``sys.stderr`` of the worker are replaced by a router. While a call runs, the
call's :class:`CallLog` is in a context variable (copied into the thread that runs sync code), so
each line the call prints is written to the pod log stamped and tagged with the request id, rank
and pod (the format of :mod:`hotpod.loglines`) and, when the caller asked for it, sent to the
caller as a log frame (through the event loop's queue, or a connection thread's ``sink``). Output outside a call goes to the pod log stamped and tagged with the pod.
"""

from __future__ import annotations

import asyncio
import io
import sys
import threading
from collections.abc import Callable
from contextvars import ContextVar
from typing import TextIO

from hotpod import loglines, wire

current_call: ContextVar[CallLog | None] = ContextVar("hotpod_call_log", default=None)


class CallLog:
    """The log of one call: complete lines go to the pod log and, if streaming, to the caller."""

    def __init__(
        self,
        request_id: str,
        pod_log: TextIO,
        loop: asyncio.AbstractEventLoop | None = None,
        queue: asyncio.Queue[object] | None = None,
        pod: str | None = None,
        rank: int | None = None,
        sink: Callable[[bytes], None] | None = None,
    ) -> None:
        self.request_id = request_id
        self._sink = sink  # takes the log frames itself (a connection thread's call)
        self._tag = loglines.tag(pod, rank, request_id)
        self._pod_log = pod_log
        self._loop = loop
        self._queue = queue
        self._loop_thread = threading.get_ident()
        self._partial: dict[str, str] = {}
        self._lock = threading.Lock()

    def write(self, stream: str, text: str) -> None:
        with self._lock:
            text = self._partial.pop(stream, "") + text
            *lines, rest = text.split("\n")
            if rest:
                self._partial[stream] = rest
        for line in lines:
            self._emit(line)

    def flush(self) -> None:
        with self._lock:
            rest = list(self._partial.values())
            self._partial.clear()
        for line in rest:
            self._emit(line)

    def _emit(self, line: str) -> None:
        line = line.rstrip("\r")
        try:
            self._pod_log.write(loglines.timestamp() + self._tag + line + "\n")
            self._pod_log.flush()
        except (OSError, ValueError):
            pass
        if self._sink is not None:
            self._sink(wire.frame(wire.FRAME_LOG, line.encode("utf-8", "replace")))
            return
        if self._queue is None or self._loop is None:
            return
        data = wire.frame(wire.FRAME_LOG, line.encode("utf-8", "replace"))
        if threading.get_ident() == self._loop_thread:
            self._queue.put_nowait(data)
        else:
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, data)
            except RuntimeError:  # the loop is closed: the pod is shutting down
                pass


class StreamRouter(io.TextIOBase):
    """A text stream that sends writes to the current call's log, or to the real stream.

    Lines written to the real stream get a timestamp and the tag :func:`tag_output` set.
    """

    _tag = loglines.tag()
    _lock = threading.Lock()
    _at_line_start = True  # shared by the routers: they write to the same pod log

    def __init__(self, name: str, real: TextIO) -> None:
        self.name = name
        self._real = real

    def write(self, s: str) -> int:
        log = current_call.get()
        if log is None:
            with StreamRouter._lock:
                self._real.write(self._stamp(s))
            if "\n" in s:
                self._real.flush()
            return len(s)
        log.write(self.name, s)
        return len(s)

    def _stamp(self, s: str) -> str:
        if not s:
            return s
        out = []
        start = 0
        while start < len(s):
            if StreamRouter._at_line_start:
                out.append(loglines.timestamp() + StreamRouter._tag)
            end = s.find("\n", start) + 1 or len(s)
            out.append(s[start:end])
            StreamRouter._at_line_start = s[end - 1] == "\n"
            start = end
        return "".join(out)

    def flush(self) -> None:
        self._real.flush()

    def fileno(self) -> int:
        return self._real.fileno()

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._real, "encoding", "utf-8")


def tag_output(pod: str | None, rank: int | None) -> None:
    """Tag the lines written outside calls with the pod's name and rank."""
    StreamRouter._tag = loglines.tag(pod, rank)


def install() -> TextIO:
    """Route ``sys.stdout``/``sys.stderr`` through call logs; returns the real stdout."""
    real_out, real_err = sys.stdout, sys.stderr
    if not isinstance(real_out, StreamRouter):
        sys.stdout = StreamRouter("stdout", real_out)  # type: ignore[assignment]
        sys.stderr = StreamRouter("stderr", real_err)  # type: ignore[assignment]
    return real_out
