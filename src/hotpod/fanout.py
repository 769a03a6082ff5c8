"""A broadcast's requests written from the caller's thread, its answers read as they arrive.

A thread per pod costs the client more CPU than the pods spend on a trivial call (a hand-off to
each thread and back, each thread's own connection), and on a machine with fewer cores than pods
that CPU delays the pods. Here the request is encoded once (only its ``Host`` line differs
between pods), written to every pod first, one ``sendall`` each, then the answers are read with
``poll`` as they arrive, and an answer that is complete once read is decoded in the caller's
thread (one JSON result frame, the common case, at once). An answer still coming when its head
arrived (log lines, a stream, a large result) is read to its end on the client's thread pool, as
a call to one pod is; so is the whole call of a pod reached through a proxy (TLS), of a pod
whose connection broke before, and of a pod that refused the connection or closed it unread
(those are retried there).
"""

from __future__ import annotations

import select
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from hotpod import transport, wire
from hotpod.backends.base import PodInfo

if TYPE_CHECKING:
    from hotpod.client import CallOptions, PodClient

_READABLE = select.POLLIN | select.POLLERR | select.POLLHUP


class _Pending:
    """One pod's request, written; its answer's head not yet read."""

    __slots__ = ("i", "pod", "resp", "sent")

    def __init__(self, i: int, pod: PodInfo, resp: transport.Response, sent: float) -> None:
        self.i = i
        self.pod = pod
        self.resp = resp
        self.sent = sent


def broadcast(
    client: PodClient,
    pods: Sequence[PodInfo],
    method: str,
    body: wire.Body,
    ctype: str,
    opts: CallOptions,
    request_id: str,
) -> list[Any]:
    """Call every pod at once; results in rank order (BroadcastError when some failed)."""
    results: list[Any] = [None] * len(pods)
    errors: dict[int, BaseException] = {}
    later: dict[int, Future[Any]] = {}  # calls finished (or made) on the thread pool
    pending: dict[int, _Pending] = {}  # by socket descriptor
    deadline = time.monotonic() + opts.timeout if opts.timeout else None

    def on_pool(i: int) -> None:
        later[i] = client.executor(len(pods)).submit(
            client._call, pods[i], method, body, ctype, opts, request_id
        )

    def what(pod: PodInfo) -> str:  # (only for errors)
        return client.describe(pod, method)

    # one request for every pod: same path, headers and body (only Host differs)
    path, headers, _, _, _ = client.call_setup(pods[0], method, ctype, opts, request_id)
    request = transport.Request(headers, body)
    tr = client._transport
    poller = select.poll()
    try:
        for i, pod in enumerate(pods):
            if pod.name in client._suspect or transport.target(pod.url, path)[3] is not None:
                on_pool(i)  # it waits for a pod coming back; a proxy's TLS: not with poll
                continue
            timeout = None if deadline is None else max(deadline - time.monotonic(), 1e-3)
            try:
                resp = tr.send(pod.url, path, request, timeout)
            except transport.Unreachable:  # nothing answered: made on the pool, which retries
                on_pool(i)
                continue
            fd = resp.fileno()
            pending[fd] = _Pending(i, pod, resp, time.monotonic())
            poller.register(fd, _READABLE)
        while pending:
            timeout_ms = None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    for p in pending.values():
                        p.resp.abandon()
                        errors[p.i] = client._timeout(what(p.pod), opts)
                    pending.clear()
                    break
                timeout_ms = max(int(left * 1000), 1)
            for fd, _ in poller.poll(timeout_ms):
                p = pending[fd]
                try:
                    if not p.resp.poll():  # readable: this recv does not wait
                        continue
                except (transport.Broken, transport.TimedOut) as exc:
                    del pending[fd]
                    poller.unregister(fd)
                    unread = transport.unanswered(p.resp.received, p.sent)
                    if unread and isinstance(exc, transport.Broken):  # closed while idle
                        on_pool(p.i)
                    else:
                        errors[p.i] = client._broken(what(p.pod), p.pod, exc)
                    continue
                del pending[fd]
                poller.unregister(fd)
                _done(client, p, method, deadline, opts, results, errors, later, len(pods), what)
    except BaseException:
        for p in pending.values():  # interrupted: those connections are mid-answer
            p.resp.abandon()
        raise
    for i, fut in later.items():
        try:
            results[i] = fut.result()
        except BaseException as exc:
            errors[i] = exc
    return client.gathered(pods, results, errors)


def _done(
    client: PodClient,
    p: _Pending,
    method: str,
    deadline: float | None,
    opts: CallOptions,
    results: list[Any],
    errors: dict[int, BaseException],
    later: dict[int, Future[Any]],
    n: int,
    what: Any,
) -> None:
    """A pod's answer head arrived: its result (a whole answer that is one JSON result frame
    is decoded here at once), or its answer read on as a call to one pod reads it."""
    resp = p.resp
    if resp.complete and resp.status == 200:
        single = wire.single_frame(resp.peek())
        if single is not None and single[0] == wire.FRAME_JSON:
            try:
                results[p.i] = wire.decode_result(*single)
            except ValueError:
                pass
            else:
                resp.read()  # (already read: the connection goes back to the pool)
                return
    if resp.complete or resp.status != 200:
        try:
            results[p.i] = client._answer(p.pod, method, resp, deadline, what(p.pod), opts)
        except Exception as exc:
            errors[p.i] = exc
    else:  # still coming: read on as a call to one pod does
        later[p.i] = client.executor(n).submit(
            client._answer, p.pod, method, resp, deadline, what(p.pod), opts
        )
