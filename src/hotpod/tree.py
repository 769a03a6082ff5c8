"""Broadcasts that pods pass on (:mod:`hotpod.runtime.relay`): to the processes of a pod with
``num_proc`` > 1, and down a tree for large pools.

- **Processes**: a pool of N pods running P processes each answers one result per process,
  N·P in rank order (``RANK = node_rank * P + local_rank``): each pod's relay calls its own
  processes and answers for the P of them.
- **Tree**: past ``HOTPOD_FANOUT_TREE`` pods (:func:`threshold`), the caller sends the call to
  ``DEGREE`` pods, each of which passes it on to a subtree of the rest (and so on), with the same
  token, request id and options; every leaf's log lines and outcome travel back up, so the
  caller prints each line prefixed with its pod and gathers the results in rank order as a flat
  broadcast does. A pool that meets in collectives (watched for a lost pod) is never treated as
  a tree: its fail-fast needs one connection per pod.

What a relay answers is read by :class:`RelayReader` (no I/O), shared by the sync and the async
twin of a call.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TextIO

from hotpod import transport, wire
from hotpod.answers import AnswerReader
from hotpod.backends.base import PodInfo
from hotpod.config import DEFAULT_FANOUT_TREE, settings
from hotpod.errors import CallError, PodTerminatedError
from hotpod.runtime.relay import FRAME_PART, HEADER, PATH, unpart

if TYPE_CHECKING:
    from hotpod.client import CallOptions, PodClient

#: pods a caller (or a relaying pod) sends a tree broadcast to directly
DEGREE = 4
#: a broadcast to more pods than this goes down a tree unless ``HOTPOD_FANOUT_TREE`` says
#: otherwise (``hotpod.config``)
DEFAULT_THRESHOLD = DEFAULT_FANOUT_TREE


def threshold() -> int:
    """Pools larger than this many pods broadcast through a tree (0: never): the setting
    ``fanout_tree`` (``HOTPOD_FANOUT_TREE``)."""
    return settings().fanout_tree


def use_tree(pods: Sequence[PodInfo]) -> bool:
    """Whether a broadcast to ``pods`` goes down a tree: past the threshold, and every pod
    reached directly (a pod behind a proxy cannot be reached by its peers at its url)."""
    limit = threshold()
    if limit <= 0 or len(pods) <= limit:
        return False
    return all(transport.route_for(p.url) is None for p in pods)


def leaves(pods: Sequence[PodInfo], procs: int) -> list[PodInfo]:
    """One entry per process, in rank order: ``pod/K`` for local rank K when ``procs`` > 1."""
    if procs <= 1:
        return list(pods)
    return [
        PodInfo(f"{p.name}/{k}", p.rank * procs + k, p.url, p.status, p.restarts, p.pid)
        for p in pods
        for k in range(procs)
    ]


def _split(pods: Sequence[PodInfo], n: int) -> list[Sequence[PodInfo]]:
    """``pods`` in at most ``n`` contiguous groups of near-equal size."""
    n = max(1, min(n, len(pods)))
    size, extra = divmod(len(pods), n)
    groups, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        groups.append(pods[start:end])
        start = end
    return [g for g in groups if g]


def targets(group: Sequence[PodInfo], procs: int, degree: int) -> list[Any]:
    """The relay targets of ``group``'s first pod: its processes, then a subtree per part of
    the rest (leaves in rank order)."""
    out: list[Any] = ["self", *(f"local:{k}" for k in range(1, procs))]
    for sub in _split(group[1:], degree) if len(group) > 1 else []:
        out.append({"addr": sub[0].peer, "targets": targets(sub, procs, degree)})
    return out


def plan(
    pods: Sequence[PodInfo], procs: int, tree: bool, degree: int | None = None
) -> list[tuple[PodInfo, list[Any], int]]:
    """(pod the caller calls, its relay targets, how many leaves it answers for), in order."""
    degree = degree or DEGREE
    groups = _split(pods, degree) if tree else [[p] for p in pods]
    return [(g[0], targets(g, procs, degree), len(g) * procs) for g in groups]


class LeafErrors(CallError):
    """Some processes a relay answered for raised (their outcomes are in ``outcomes``)."""

    def __init__(self, message: str, outcomes: list[tuple[bool, Any]]) -> None:
        super().__init__(message)
        self.outcomes = outcomes


class RelayReader:
    """The frames of a relay's answer: each leaf's log lines printed with its name as they come,
    and its outcome kept. :meth:`outcomes` gives them, or raises ``PodTerminatedError`` when a
    leaf's process was lost (so a collective pool's watch fails the call at once), or
    :class:`LeafErrors` when some leaves raised."""

    def __init__(self, names: Sequence[str], stream_logs: bool, log_out: TextIO | None) -> None:
        self.names = list(names)
        self.answers = [AnswerReader(n, stream_logs, log_out) for n in names]
        self.lost: list[int] = []
        self.decoder = wire.FrameDecoder()

    def feed(self, chunk: bytes | bytearray) -> None:
        for kind, payload in self.decoder.feed(chunk):
            if kind != FRAME_PART:
                raise transport.Broken(f"a relay answered an unexpected frame {kind!r}")
            index, inner, data = unpart(payload)
            if not 0 <= index < len(self.answers):
                raise transport.Broken(f"a relay answered for leaf {index} of {len(self.names)}")
            if inner == wire.FRAME_ERROR and json.loads(data).get("relay") == "lost":
                self.lost.append(index)
            if not self.answers[index].take(inner, data):
                raise transport.Broken(f"a relay passed on an unexpected frame {inner!r}")

    def outcomes(self) -> list[tuple[bool, Any]]:
        out: list[tuple[bool, Any]] = []
        for name, answer in zip(self.names, self.answers, strict=True):
            if answer.outcome is None:
                out.append((False, PodTerminatedError(f"no answer came for {name}", pod=name)))
            else:
                out.append(answer.outcome)
        if self.lost:
            i = self.lost[0]
            exc = out[i][1]
            pod = self.names[i].partition("/")[0]
            raise PodTerminatedError(f"{self.names[i]}: {exc}", pod=pod) from exc
        failed = [self.names[i] for i, (ok, _) in enumerate(out) if not ok]
        if failed:
            raise LeafErrors(f"{', '.join(failed)} failed", out)
        return out


def relay_headers(
    client: PodClient,
    pod: PodInfo,
    method: str,
    ctype: str,
    opts: CallOptions,
    request_id: str,
    relay_targets: list[Any],
    fail_fast: bool,
) -> tuple[dict[str, str], float, float | None, str]:
    """A relay request's headers, start, deadline and description."""
    from hotpod import membership

    call_path, headers, start, deadline, what = client.call_setup(
        pod, method, ctype, opts, request_id
    )
    relay = {"path": call_path, "targets": relay_targets, "fail_fast": fail_fast}
    relay["grace"] = membership.RANK_ERROR_GRACE
    headers[HEADER] = json.dumps(relay)
    return headers, start, deadline, what


def call_pod(
    client: PodClient,
    pod: PodInfo,
    relay_targets: list[Any],
    names: Sequence[str],
    method: str,
    body: wire.Body,
    ctype: str,
    opts: CallOptions,
    request_id: str,
    fail_fast: bool,
) -> list[tuple[bool, Any]]:
    """One relay call (sync): the outcomes of the leaves it answers for (see RelayReader)."""
    headers, start, deadline, what = relay_headers(
        client, pod, method, ctype, opts, request_id, relay_targets, fail_fast
    )
    resp = client.send(pod, PATH, body, headers, what, opts, start, deadline)
    with client.reading(resp, pod, what, opts):
        if resp.status != 200:
            raise client._status_error(pod, method, resp.status, resp.read())
        reader = RelayReader(names, opts.stream_logs, client.log_out)
        for chunk in resp.chunks():
            reader.feed(chunk)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise transport.TimedOut("deadline passed")
                resp.set_timeout(left)
    return reader.outcomes()


def gather(
    client: PodClient,
    pods: Sequence[PodInfo],
    procs: int,
    calls: Sequence[tuple[PodInfo, list[Any], int]],
    outcomes: Sequence[list[tuple[bool, Any]] | BaseException],
) -> Any:
    """Every leaf's outcome in rank order: the results (``client.gathered``) or BroadcastError."""
    flat = leaves(pods, procs)
    results: list[Any] = [None] * len(flat)
    errors: dict[int, BaseException] = {}
    i = 0
    for (_, _, n), got in zip(calls, outcomes, strict=True):
        if isinstance(got, LeafErrors):
            got = got.outcomes
        if isinstance(got, BaseException):
            for j in range(i, i + n):
                errors[j] = got
        else:
            for j, (ok, value) in enumerate(got, i):
                if ok:
                    results[j] = value
                else:
                    errors[j] = value
        i += n
    return client.gathered(flat, results, errors)


def named(
    calls: Sequence[tuple[PodInfo, list[Any], int]], pods: Sequence[PodInfo], procs: int
) -> list[tuple[PodInfo, list[Any], list[str]]]:
    """The calls of a :func:`plan`, each with the names of the leaves it answers for."""
    names = [p.name for p in leaves(pods, procs)]
    out, i = [], 0
    for pod, targets, n in calls:
        out.append((pod, targets, names[i : i + n]))
        i += n
    return out


def broadcast(
    client: PodClient,
    pods: Sequence[PodInfo],
    method: str,
    body: wire.Body,
    ctype: str,
    opts: CallOptions,
    request_id: str,
    procs: int,
    watch: Callable[[Sequence[Future[Any]]], None] | None,
) -> Any:
    """A broadcast through relays: each pod's processes (``procs`` > 1), down a tree past the
    threshold (not for a watched pool); results in rank order, one per process."""
    calls = plan(pods, procs, watch is None and use_tree(pods))
    futures = [
        client.executor(len(calls)).submit(
            call_pod,
            client,
            pod,
            relay_targets,
            names,
            method,
            body,
            ctype,
            opts,
            request_id,
            watch is not None,
        )
        for pod, relay_targets, names in named(calls, pods, procs)
    ]
    if watch is not None:
        watch(futures)
    outcomes: list[list[tuple[bool, Any]] | BaseException] = []
    for fut in futures:
        try:
            outcomes.append(fut.result())
        except BaseException as exc:
            outcomes.append(exc)
    return gather(client, pods, procs, calls, outcomes)


__all__ = [
    "DEFAULT_THRESHOLD",
    "DEGREE",
    "LeafErrors",
    "RelayReader",
    "broadcast",
    "call_pod",
    "gather",
    "leaves",
    "named",
    "plan",
    "targets",
    "threshold",
    "use_tree",
]
