"""A broadcast's requests written from the caller's thread, its answers read as they arrive.

A thread per pod costs the client more CPU than the pods spend on a trivial call (a hand-off to
each thread and back, each thread's own connection), and on a machine with fewer cores than pods
that CPU delays the pods. Here every request is written first, one ``sendall`` each, then the
answers are read with ``select`` as they arrive, and an answer that is complete once read is
decoded in the caller's thread. An answer still coming when its head arrived (log lines, a
stream, a large result) is read to its end on the client's thread pool, as a call to one pod is;
so is the whole call of a pod reached through a proxy (TLS), of a pod whose connection broke
before, and of a pod that refused the connection or closed it unread (those are retried there).
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from hotpod import transport, wire
from hotpod.backends.base import PodInfo

if TYPE_CHECKING:
    from hotpod.client import CallOptions, PodClient


class _Pending:
    """One pod's request, written; its answer's head not yet read."""

    __slots__ = ("i", "pod", "resp", "sent", "what")

    def __init__(self, i: int, pod: PodInfo, resp: transport.Response, what: str) -> None:
        self.i = i
        self.pod = pod
        self.resp = resp
        self.what = what
        self.sent = time.monotonic()


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
    pending: dict[socket.socket, _Pending] = {}
    deadline = time.monotonic() + opts.timeout if opts.timeout else None

    def on_pool(i: int) -> None:
        later[i] = client.executor(len(pods)).submit(
            client._call, pods[i], method, body, ctype, opts, request_id
        )

    try:
        for i, pod in enumerate(pods):
            sent = _send(client, pod, method, body, ctype, opts, request_id, deadline)
            if sent is None:
                on_pool(i)
            else:
                pending[sent[0].sock] = _Pending(i, pod, sent[1], sent[2])
        while pending:
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                for p in pending.values():
                    p.resp.abandon()
                    errors[p.i] = client._timeout(p.what, opts)
                pending.clear()
                break
            readable, _, _ = select.select(list(pending), [], [], timeout)
            for sock in readable:
                p = pending[sock]
                try:
                    p.resp._feed()  # readable: this recv does not wait
                except (transport.Broken, transport.TimedOut) as exc:
                    del pending[sock]
                    unread = not p.resp.received and (
                        time.monotonic() - p.sent < transport.IDLE_CLOSE_WINDOW
                    )
                    if unread and isinstance(exc, transport.Broken):  # closed while idle
                        on_pool(p.i)
                    else:
                        errors[p.i] = client._broken(p.what, p.pod, exc)
                    continue
                if not p.resp._headers_done:
                    continue
                del pending[sock]
                if p.resp.complete or p.resp.status != 200:
                    try:
                        results[p.i] = client._answer(p.pod, method, p.resp, deadline, p.what, opts)
                    except Exception as exc:
                        errors[p.i] = exc
                else:  # still coming: read on as a call to one pod does
                    later[p.i] = client.executor(len(pods)).submit(
                        client._answer, p.pod, method, p.resp, deadline, p.what, opts
                    )
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


def _send(
    client: PodClient,
    pod: PodInfo,
    method: str,
    body: wire.Body,
    ctype: str,
    opts: CallOptions,
    request_id: str,
    deadline: float | None,
) -> tuple[Any, transport.Response, str] | None:
    """Write one pod's request on a pooled direct connection: (connection, response, what);
    None when the call must be made on the thread pool instead (it waits, retries or proxies)."""
    if pod.name in client._suspect:
        return None
    path, headers, _, _, what = client.call_setup(pod, method, ctype, opts, request_id)
    host, port, path, route = transport.target(pod.url, path)
    if route is not None:
        return None
    tr = client._transport
    try:
        conn = tr._connection(host, port)
    except transport.Unreachable:
        return None
    idle = tr._idle()

    def release(c: Any) -> None:
        if idle.setdefault((host, port), c) is not c:
            c.close()

    resp = transport.Response(conn, release)
    try:
        conn.sock.settimeout(None if deadline is None else max(deadline - time.monotonic(), 1e-3))
        for buffer in transport.request_buffers(path, conn.host, headers, body):
            conn.sock.sendall(buffer)
    except OSError:  # nothing of the answer read: sending again is safe
        conn.close()
        return None
    return conn, resp, what
