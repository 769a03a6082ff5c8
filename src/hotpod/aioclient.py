"""The async twin of a call (``await handle.aio(...)``): same requests, frames and errors as
:class:`hotpod.client.PodClient`'s sync path, over :mod:`hotpod.aiotransport`.

A broadcast gathers one task per pod. Cancelling an awaited call closes its connection; the pod
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
from typing import Any

from hotpod import aiotransport, transport, wire
from hotpod.answers import AnswerReader, StreamReader
from hotpod.backends.base import PodInfo
from hotpod.client import CallOptions, PodClient


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
) -> list[Any]:
    """Call every pod at once; results in rank order (BroadcastError when some failed)."""
    body, ctype = wire.encode_request(args, kwargs, opts.serialization)
    request_id = uuid.uuid4().hex  # one id for the call on every pod: one 'logs --request'
    outcomes = await asyncio.gather(
        *(_call(client, p, method, body, ctype, opts, request_id) for p in pods),
        return_exceptions=True,
    )
    results: list[Any] = [None] * len(pods)
    errors: dict[int, BaseException] = {}
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, BaseException):
            errors[i] = outcome
        else:
            results[i] = outcome
    return client.gathered(pods, results, errors)


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
    if pod.name in client._suspect:
        await asyncio.to_thread(client._await_pod, pod, what, start, deadline)
    atransport = _transport(client)
    retried = False
    while True:
        try:
            resp = await atransport.request(pod.url, path, body, headers, deadline)
            break
        except (transport.Broken, transport.Unreachable, transport.TimedOut) as exc:
            await asyncio.sleep(client.retry_delay(exc, retried, what, pod, opts, start, deadline))
            retried = retried or isinstance(exc, transport.Broken)
    try:
        if resp.status != 200:
            data = await resp.read()
            raise client._status_error(pod, method, resp.status, data)
        return await _read_frames(client, pod, resp, what, opts)
    except transport.TimedOut:
        resp.abandon()
        raise client._timeout(what, opts) from None
    except transport.Broken as exc:
        resp.abandon()
        raise client._broken(what, pod, exc) from None
    except BaseException:  # cancelled too: closing the connection tells the pod
        resp.abandon()
        raise


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
    try:
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
    except transport.TimedOut:
        raise client._timeout(what, reader.opts) from None
    except transport.Broken as exc:
        raise client._broken(what, reader.pod, exc) from None
    finally:
        if not resp.complete:
            resp.abandon()
