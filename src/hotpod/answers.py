"""What a pod answers to a call, read on the client: log lines printed as they arrive, remote
errors rebuilt as their own type, and streams of items (a generator function's answer: S, I...,
Z frames, see :mod:`hotpod.wire`) handed out one by one as they arrive.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import json
import pickle
import sys
import threading
import time
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any, TextIO

from hotpod import transport, wire
from hotpod.backends.base import PodInfo
from hotpod.errors import ProtocolError, RemoteError, RemoteTraceback

if TYPE_CHECKING:
    from hotpod.client import CallOptions, PodClient


_print_lock = threading.Lock()

#: the response header an autoscaled pool's router adds: the name of the pod that took the call
HEADER_POD = "x-hotpod-pod"


def answered_by(pod: PodInfo, resp: transport.ResponseHead) -> PodInfo:
    """The pod that ran a call: ``pod``, or the one a router in front of it picked."""
    name = resp.header(HEADER_POD)
    return dataclasses.replace(pod, name=name) if name and name != pod.name else pod


def print_log(pod: str, line: bytes, out: TextIO | None) -> None:
    stream = out or sys.stdout
    with _print_lock:
        stream.write(f"({pod}) {line.decode('utf-8', 'replace')}\n")
        stream.flush()


def rebuild_error(info: dict[str, Any], pickled: bytes | None) -> BaseException:
    """The remote exception as its own type when it can be imported here, else RemoteError."""
    exc: BaseException | None = None
    if pickled is not None:
        try:
            exc = pickle.loads(pickled)
        except Exception:
            exc = None
    if exc is None:
        try:
            obj: Any = importlib.import_module(info["module"])
            for part in info["qualname"].split("."):
                obj = getattr(obj, part)
            if isinstance(obj, type) and issubclass(obj, BaseException):
                exc = obj(info["message"])
        except Exception:
            exc = None
    if not isinstance(exc, Exception):  # SystemExit, KeyboardInterrupt: never end the caller
        exc = RemoteError(
            info.get("message", ""),
            type_name=info.get("type", ""),
            remote_traceback=info.get("traceback", ""),
            pod=info.get("pod"),
            rank=info.get("rank"),
        )
    exc.__cause__ = RemoteTraceback(info.get("traceback", ""))
    if hasattr(exc, "add_note"):
        exc.add_note(f"(raised on pod {info.get('pod')}, rank {info.get('rank')})")
    return exc


class AnswerReader:
    """The frames of a plain answer (log lines, then a result or an error), interpreted without
    I/O: the sync and async readers feed it each frame and handle what it does not take."""

    def __init__(self, pod: str, stream_logs: bool, log_out: TextIO | None) -> None:
        self.pod = pod
        self.stream_logs = stream_logs
        self.log_out = log_out
        self.outcome: tuple[bool, Any] | None = None
        self._pickled_exc: bytes | None = None

    def take(self, kind: bytes, payload: bytes) -> bool:
        """Interpret one frame; False for a frame the caller must handle (S, D, unknown)."""
        if kind == wire.FRAME_LOG:
            if self.stream_logs:
                print_log(self.pod, payload, self.log_out)
        elif kind in (wire.FRAME_JSON, wire.FRAME_PICKLE):
            self.outcome = (True, wire.decode_result(kind, payload))
        elif kind == wire.FRAME_EXC:
            self._pickled_exc = payload
        elif kind == wire.FRAME_ERROR:
            self.outcome = (False, rebuild_error(json.loads(payload), self._pickled_exc))
        else:
            return False
        return True

    def result(self) -> Any:
        """The call's result, or its remote error raised; Broken if none arrived."""
        if self.outcome is None:
            raise transport.Broken("the response ended without a result")
        ok, value = self.outcome
        if not ok:
            raise value
        return value


class StreamReader:
    """The frames of a streamed answer (S ... I ... Z), interpreted without I/O: the sync and
    async iterators feed it what they read and take the items it hands out."""

    def __init__(
        self,
        client: PodClient,
        pod: PodInfo,
        what: str,
        opts: CallOptions,
        decoder: wire.FrameDecoder,
        pending: list[tuple[bytes, bytes]],
    ) -> None:
        self.client = client
        self.pod = pod
        self.what = what
        self.opts = opts
        self.ended = False
        self._decoder = decoder
        self._pending = collections.deque(pending)
        self._pickled_exc: bytes | None = None

    def feed(self, chunk: bytes | bytearray) -> None:
        self._pending.extend(self._decoder.feed(chunk))

    def next(self) -> tuple[bytes, Any] | None:
        """``(FRAME_ITEM, item)``, ``(FRAME_DEBUG, payload)`` for a debugger session to attach,
        or None when more bytes are needed (or the stream ``ended``); raises the remote error."""
        while self._pending:
            kind, payload = self._pending.popleft()
            if kind == wire.FRAME_ITEM:
                return kind, wire.decode_item(payload)
            if kind == wire.FRAME_LOG:
                if self.opts.stream_logs:
                    print_log(self.pod.name, payload, self.client.log_out)
            elif kind == wire.FRAME_END:
                self.ended = True
            elif kind == wire.FRAME_EXC:
                self._pickled_exc = payload
            elif kind == wire.FRAME_ERROR:
                self.ended = True
                raise rebuild_error(json.loads(payload), self._pickled_exc)
            elif kind == wire.FRAME_DEBUG:
                return kind, payload
            else:
                raise ProtocolError(f"{self.what}: unknown frame type {kind!r} from the pod")
        return None


def stream_items(
    reader: StreamReader,
    resp: transport.Response,
    chunks: Iterator[bytes | bytearray],
    deadline: float | None,
) -> Generator[Any, None, None]:
    """Yield a stream's items as they arrive; closing it early closes the connection."""
    client, what = reader.client, reader.what
    with client.reading(resp, reader.pod, what, reader.opts):
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                raise transport.TimedOut("deadline passed")
            got = reader.next()
            if got is not None:
                if got[0] == wire.FRAME_DEBUG:
                    client.other_frame(wire.FRAME_DEBUG, got[1], what, resp)
                    deadline = None
                    continue
                yield got[1]
                continue
            if reader.ended:
                for _ in chunks:  # read the response to its end: the connection is reused
                    pass
                return
            if deadline is not None:
                resp.set_timeout(max(deadline - time.monotonic(), 0.001))
            chunk = next(chunks, None)
            if chunk is None:
                raise transport.Broken("the stream ended without its end frame")
            reader.feed(chunk)


class Stream(Iterator[Any]):
    """The items of a streamed call (a generator function's), yielded as they arrive.

    Leaving it early (``break``, ``close()``, or dropping it) closes the connection, and the pod
    stops the generator. Errors raised by the generator on the pod are raised here, after the
    items it yielded before.
    """

    def __init__(self, items: Generator[Any, None, None], resp: transport.Response) -> None:
        self._items = items
        self._resp = resp

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Any:
        return next(self._items)

    def close(self) -> None:
        self._items.close()
        if not self._resp.complete:
            self._resp.abandon()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
