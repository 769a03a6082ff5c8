"""The line format of pod logs, shared by the pod runtime that writes it and the readers.

Every line a pod writes through hotpod carries a UTC timestamp, and where known the request id of
the call that printed it, the pod's rank and the pod's name, then `` | `` and the text::

    2026-11-27T09:00:00.123Z r=1a2b3c4d rank=0 pod=train-0 | epoch 1 loss 0.31
    2026-11-27T09:00:01.002Z rank=0 pod=train-0 | hotpod: serving launch 5a2b2f12ceb3

The format is compact and greppable (``grep r=1a2b3c4d``), and since the timestamps have a fixed
width and are all UTC, sorting lines as strings sorts them in time. Lines that reach the log
file without going through Python (a subprocess writing to the pod's stdout) carry no tag: a
reader gives them the time of the tagged line before them.
"""

from __future__ import annotations

import calendar
import heapq
import re
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

#: how many characters of a request id the logs keep
REQUEST_ID_CHARS = 8

_LINE = re.compile(
    r"(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)"
    r"(?: r=(?P<request>[0-9A-Za-z_-]+))?"
    r"(?: rank=(?P<rank>\d+))?"
    r"(?: pod=(?P<pod>\S+))?"
    r" \| (?P<text>.*)",
    re.DOTALL,
)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def timestamp(t: float | None = None) -> str:
    """``t`` (default: now) as the logs write it: ``2026-11-27T09:00:00.123Z``."""
    ms = int((time.time() if t is None else t) * 1000)
    seconds, ms = divmod(ms, 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{ms:03d}Z"


def tag(pod: str | None = None, rank: int | None = None, request: str | None = None) -> str:
    """What follows the timestamp: `` r=ID rank=N pod=NAME | `` (the parts that are known)."""
    parts = [""]
    if request:
        parts.append(f"r={request[:REQUEST_ID_CHARS]}")
    if rank is not None:
        parts.append(f"rank={rank}")
    if pod:
        parts.append(f"pod={pod}")
    return " ".join(parts) + " | "


def format_line(text: str, pod: str | None = None, rank: int | None = None) -> str:
    """One complete log line (with its newline), stamped now."""
    return timestamp() + tag(pod, rank) + text + "\n"


def to_epoch(ts: str) -> float:
    """A timestamp the logs wrote, as seconds since the epoch."""
    y, mo, d = int(ts[0:4]), int(ts[5:7]), int(ts[8:10])
    h, mi, s = int(ts[11:13]), int(ts[14:16]), int(ts[17:19])
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) + int(ts[20:23]) / 1000


@dataclass(frozen=True)
class LogLine:
    """One line of a pod log. ``ts`` is the line's own time, or the last one before it."""

    pod: str  # the pod whose log holds the line
    raw: str
    ts: str = ""
    tagged: bool = False  # the line carries its own tag
    request: str | None = None
    rank: int | None = None
    text: str = ""

    def display(self) -> str:
        """The line as ``hotpod logs`` prints it: as written, or tagged with its pod."""
        return self.raw if self.tagged else f"pod={self.pod} | {self.raw}"

    def matches_request(self, request: str) -> bool:
        """Whether the line belongs to the call ``request`` (an id, or a prefix of one)."""
        mine = self.request
        if not mine or not request:
            return False
        return mine.startswith(request) or request.startswith(mine)


def parse(pod: str, raw: str, last_ts: str = "") -> LogLine:
    """Parse one line (without its newline) of ``pod``'s log."""
    m = _LINE.match(raw)
    if m is None:
        return LogLine(pod=pod, raw=raw, ts=last_ts, text=raw)
    rank = m.group("rank")
    return LogLine(
        pod=pod,
        raw=raw,
        ts=m.group("ts"),
        tagged=True,
        request=m.group("request"),
        rank=int(rank) if rank is not None else None,
        text=m.group("text"),
    )


def parse_since(value: str, now: float | None = None) -> float:
    """``--since``: a duration back from now (``90s``, ``10m``, ``2h``, ``1d``, ``1h30m``) or
    an ISO 8601 time (``2026-11-27T09:00``, local time unless it names a zone); epoch seconds.

    Raises ValueError with a message that says what is accepted.
    """
    text = value.strip()
    if text and _DURATION.sub("", text).strip() == "":
        seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(text))
        return (time.time() if now is None else now) - seconds
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{value!r} is neither a duration (e.g. 90s, 10m, 2h, 1d) nor an ISO 8601 time "
            "(e.g. 2026-11-27T09:00 or 2026-11-27T09:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # a naive time is the local time
    return when.astimezone(timezone.utc).timestamp()


@dataclass(frozen=True)
class LogFilter:
    """Which lines to keep: newer than ``since`` (epoch seconds), of the call ``request``."""

    since: float | None = None
    request: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "_cutoff", timestamp(self.since) if self.since else "")

    def keep(self, line: LogLine) -> bool:
        cutoff: str = self._cutoff  # type: ignore[attr-defined]
        if cutoff and line.ts < cutoff:
            return False
        return not (self.request and not line.matches_request(self.request))


def read(
    pod: str, lines: Iterable[str], keep: LogFilter | None = None, tail: int | None = None
) -> list[LogLine]:
    """Parse the lines of one pod's log, keep those ``keep`` accepts, the last ``tail`` of them."""
    out: deque[LogLine] | list[LogLine] = deque(maxlen=tail) if tail else []
    last = ""
    for raw in lines:
        line = parse(pod, raw.rstrip("\n"), last)
        last = line.ts
        if keep is None or keep.keep(line):
            out.append(line)
    return list(out)


def merge(per_pod: Iterable[list[LogLine]]) -> Iterator[LogLine]:
    """The lines of several pods in time order (each pod's own order kept)."""
    return heapq.merge(*per_pod, key=lambda line: line.ts)
