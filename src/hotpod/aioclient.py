"""The async twin of a call (``await handle.aio(...)``): same requests, frames and errors as
:class:`hotpod.client.PodClient`'s sync path, over :mod:`hotpod.aiotransport`.

A broadcast gathers one task per pod; on a pool that meets in collectives it fails as fast as
the sync call (``membership.Watch.tasks``: a lost pod, a changed pool, a rank that raised), and
the tasks still running are cancelled. A pool with ``num_proc`` > 1, or past the tree threshold,
goes through the pods' relays (``tree``), one result per process. Cancelling an awaited call closes its connection; the pod
then cancels async user code (sync user code runs to its end on the pod, its result dropped).
A streamed answer comes back as an async iterator of the items; ``break`` out of ``async for``
(once the iterator is collected) or ``aclose()`` closes the connection, and the pod stops the
generator.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from hotpod import aiotransport, transport, tree, wire
from hotpod.answers import AnswerReader, StreamReader, answered_by
from hotpod.backends.base import PodInfo
from hotpod.client import CallOptions, PodClient
from hotpod.runtime import relay

if TYPE_CHECKING:
    from hotpod.membership import Watch


async def call(
    client: PodClient, pod: PodInfo, method: str, args: tuple, kwargs: dict, opts: CallOptions
) -> Any:
    body, ctype = wire.encode_request(args, kwargs, opts.serialization)
    return await _call(client, pod, method, body, ctype, opts)


async def broadcast(
    client: PodClient,
    pods: Sequence[PodInfo],
    method: str,
    args: tuple,
    kwargs: dict,
    opts: CallOptions,
    watch: Watch | None = None,
    procs: int = 1,
) -> list[Any]:
    """Call every pod at once; results in rank order (BroadcastError when some failed).
    ``watch``: a collective pool's (it may raise to fail the call early)."""
    body, ctype = wire.encode_request(args, kwargs, opts.serialization)
    request_id = uuid.uuid4().hex  # one id for the call on every pod: one 'logs --request'
    down_a_tree = watch is None and tree.use_tree(pods)
    relayed = procs > 1 or down_a_tree
    calls = tree.plan(pods, procs, down_a_tree) if relayed else []
    if relayed:
        works = [
            _call_pod(
                client,
                pod,
                targets,
                names,
                method,
                body,
                ctype,
                opts,
                request_id,
                watch is not None,
            )
            for pod, targets, names in tree.named(calls, pods, procs)
        ]
    else:
        works = [_call(client, p, method, body, ctype, opts, request_id) for p in pods]
    tasks = [asyncio.ensure_future(w) for w in works]
    try:
        if watch is not None:
            await watch.tasks(tasks)
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for task in tasks:  # (the call failed early, or was cancelled: nobody waits for them)
            task.cancel()
    if relayed:
        return tree.gather(client, pods, procs, calls, outcomes)  # type: ignore[no-any-return]
    results: list[Any] = [None] * len(pods)
    errors: dict[int, BaseException] = {}
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, BaseException):
            errors[i] = outcome
        else:
            results[i] = outcome
    return client.gathered(pods, results, errors)


async def _call_pod(
    client: PodClient,
    pod: PodInfo,
    targets: list[Any],
    names: Sequence[str],
    method: str,
    body: wire.Body,
    ctype: str,
    opts: CallOptions,
    request_id: str,
    fail_fast: bool,
) -> list[tuple[bool, Any]]:
    """The async twin of ``tree.call_pod``: one relay call, its leaves' outcomes."""
    headers, start, deadline, what = tree.relay_headers(
        client, pod, method, ctype, opts, request_id, targets, fail_fast
    )
    resp = await _send(client, pod, relay.PATH, body, headers, what, opts, start, deadline)
    with client.reading(resp, pod, what, opts):
        if resp.status != 200:
            raise client._status_error(pod, method, resp.status, await resp.read())
        reader = tree.RelayReader(names, opts.stream_logs, client.log_out)
        async for chunk in resp.chunks():
            reader.feed(chunk)
    return reader.outcomes()


async def _call(
    client: PodClient,
    pod: PodInfo,
    method: str,
    body: wire.Body,
    ctype: str,
    opts: CallOptions,
    request_id: str | None = None,
) -> Any:
    path, headers, start, deadline, what = client.call_setup(pod, method, ctype, opts, request_id)
    resp = await _send(client, pod, path, body, headers, what, opts, start, deadline)
    with client.reading(resp, pod, what, opts):  # cancelled too: abandoned, which tells the pod
        if resp.status != 200:
            raise client._status_error(pod, method, resp.status, await resp.read())
        return await _read_frames(client, pod, resp, what, opts)


async def _send(
    client: PodClient,
    pod: PodInfo,
    path: str,
    body: wire.Body,
    headers: dict[str, str],
    what: str,
    opts: CallOptions,
    start: float,
    deadline: float | None,
) -> aiotransport.AsyncResponse:
    """The async twin of ``PodClient.send``: the request sent, its answer's head arrived."""
    if pod.name in client._suspect:
        await asyncio.to_thread(client._await_pod, pod, what, start, deadline)
    atransport = _transport(client)
    retried = False
    while True:
        try:
            return await atransport.request(pod.url, path, body, headers, deadline)
        except (transport.Broken, transport.Unreachable, transport.TimedOut) as exc:
            await asyncio.sleep(client.retry_delay(exc, retried, what, pod, opts, start, deadline))
            retried = retried or isinstance(exc, transport.Broken)


def _transport(client: PodClient) -> aiotransport.AsyncTransport:
    """The client's async transport, made on first use (sync-only programs never need one)."""
    t = client._atransport
    if t is None:
        t = client._atransport = aiotransport.AsyncTransport(client._transport.connect_timeout)
    return t


async def _read_frames(
    client: PodClient,
    pod: PodInfo,
    resp: aiotransport.AsyncResponse,
    what: str,
    opts: CallOptions,
) -> Any:
    pod = answered_by(pod, resp)  # (behind a router: the pod it picked)
    decoder = wire.FrameDecoder()
    answer = AnswerReader(pod.name, opts.stream_logs, client.log_out)
    chunks = resp.chunks()
    async for chunk in chunks:
        frames = decoder.feed(chunk)
        for i, (kind, payload) in enumerate(frames):
            if answer.take(kind, payload):
                continue
            if kind == wire.FRAME_STREAM:
                reader = StreamReader(client, pod, what, opts, decoder, frames[i + 1 :])
                return AsyncStream(_items(reader, resp, chunks), resp)
            await _other_frame(client, kind, payload, what, resp)
    return answer.result()


async def _other_frame(
    client: PodClient, kind: bytes, payload: bytes, what: str, resp: aiotransport.AsyncResponse
) -> None:
    resp.deadline = None  # a person is debugging: no deadline meanwhile
    await asyncio.to_thread(client.other_frame, kind, payload, what, None)


class AsyncStream(AsyncIterator[Any]):
    """The items of a streamed call, as they arrive: ``async for item in await remote.aio()``.

    Leaving it early (``aclose()``, or dropping it after ``break``) closes the connection, and
    the pod stops the generator. Errors raised by the generator on the pod are raised here,
    after the items it yielded before.
    """

    def __init__(self, items: AsyncGenerator[Any, None], resp: aiotransport.AsyncResponse) -> None:
        self._items = items
        self._resp = resp

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> Any:
        return await self._items.__anext__()

    async def aclose(self) -> None:
        await self._items.aclose()
        self._resp.abandon()

    def __del__(self) -> None:
        if not self._resp.complete:
            try:
                self._resp.abandon()
            except RuntimeError:  # its loop is closed (and closed the connection)
                pass


async def _items(
    reader: StreamReader, resp: aiotransport.AsyncResponse, chunks: AsyncIterator[bytes]
) -> AsyncGenerator[Any, None]:
    """Yield a stream's items as they arrive; closing it early closes the connection."""
    client, what = reader.client, reader.what
    with client.reading(resp, reader.pod, what, reader.opts):
        while True:
            if resp.deadline is not None and time.monotonic() >= resp.deadline:
                raise transport.TimedOut("deadline passed")
            got = reader.next()
            if got is not None:
                if got[0] == wire.FRAME_DEBUG:
                    await _other_frame(client, wire.FRAME_DEBUG, got[1], what, resp)
                    continue
                yield got[1]
                continue
            if reader.ended:
                async for _ in chunks:  # read the response to its end: the connection is reused
                    pass
                return
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                raise transport.Broken("the stream ended without its end frame") from None
            reader.feed(chunk)
