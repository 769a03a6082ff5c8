"""The call path of the pod's server (``POST /call`` and ``POST /call/{method}``).

Sync user code runs on call threads (``threads``), async user code on the event loop; the call
path does not poll.

A generator (or async generator) function, or a function that returns one, is answered with a
stream: its items are sent as they are produced (``wire``: S, I..., Z). When the caller goes
away (``http.disconnect``) during async code or a stream, async code is cancelled and a sync
generator is closed once the item it is producing is done; plain sync code cannot be
interrupted, so it runs to its end and its result is dropped.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
import traceback
import types
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from hotpod import loglines, wire
from hotpod.errors import ProtocolError
from hotpod.runtime import debug, logs
from hotpod.runtime.asgi import (
    HTTPError,
    Receive,
    Scope,
    Send,
    _header,
    _read_body,
    _send_bytes,
    _send_pieces,
    _start_frames,
)
from hotpod.runtime.state import PodState


class CallsMixin:
    """The call path of ``PodApp``: invoking the user's code and answering with frames."""

    state: PodState
    _resuming: asyncio.Task[bool] | None  # resuming the persisted launch (``LaunchMixin``)

    async def _handle_call(self, scope: Scope, receive: Receive, send: Send, method: str) -> None:
        started = time.perf_counter()
        st = self.state
        accept = _header(scope, b"x-hotpod-accept") or "auto"
        if accept not in wire.SERIALIZATIONS:
            raise HTTPError(
                400, f"X-Hotpod-Accept {accept!r}: expected one of {wire.SERIALIZATIONS}"
            )
        body = await _read_body(scope, receive, st.max_body)
        try:
            args, kwargs = wire.decode_request(body, _header(scope, b"content-type") or "")
        except ProtocolError as exc:
            raise HTTPError(400, str(exc)) from None
        if st.loaded is None and self._resuming is not None and not self._resuming.done():
            await asyncio.wait([self._resuming])  # a restarted worker: wait for its code
        if st.loaded is None:
            raise HTTPError(
                503, st.idle_reason or "this pod serves no code yet; deploy it with .to() first"
            )
        loaded = st.loaded
        try:
            target, value = loaded.resolve(method)
        except LookupError as exc:
            raise HTTPError(404, str(exc)) from None
        request_id = _header(scope, b"x-hotpod-request-id") or uuid.uuid4().hex
        stream = _header(scope, b"x-hotpod-stream-logs") == "1"
        loop = asyncio.get_running_loop()
        items = _is_generator_function(target)  # its answer streams, logs asked for or not
        queue: asyncio.Queue[object] | None = asyncio.Queue() if stream or items else None
        log = logs.CallLog(request_id, st.pod_log, loop, queue if stream else None, st.pod, st.rank)

        if target is None:
            if args or kwargs:
                raise HTTPError(
                    400, f"{method!r} is an attribute, not a method; call it with no arguments"
                )
            target = partial(lambda v: v, value)
        # async code is cancelled when the caller goes away; sync code cannot be interrupted
        cancellable = items or inspect.iscoroutinefunction(target)

        debugging = debug.current.set(self._call_debug(scope, request_id, log, loop, queue))
        try:
            work = self._measured(
                method, started, self._invoke(target, args, kwargs, accept, log, queue)
            )
            if queue is None:
                out = await (_until_disconnect(receive, work) if cancellable else work)
                if isinstance(out, (bytes, wire.Parts)):
                    await _send_bytes(send, 200, out, wire.CT_FRAMES)
                    return
                # a plain function returned a generator (the call was counted when it returned)
                queue = asyncio.Queue()
                work = self._stream_items(out, accept, log, queue)
            await self._stream(send, queue, work, receive if cancellable else None, receive)
        except _Disconnected:
            return  # the caller went away: its work was cancelled, nobody to answer
        finally:
            debug.current.reset(debugging)

    async def _measured(self, method: str, started: float, work: Awaitable[_Out]) -> _Out:
        """``work``'s result frames, counted in the pod's metrics."""
        metrics = self.state.metrics
        metrics.call_started()
        error: str | None = "CancelledError"
        try:
            payload = await work
            error = _error_type(payload) if isinstance(payload, bytes) else None
            return payload
        except BaseException as exc:
            error = type(exc).__name__
            raise
        finally:
            metrics.call_done(method, started, error)

    def _call_debug(
        self,
        scope: Scope,
        request_id: str,
        log: logs.CallLog,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[object] | None,
    ) -> debug.CallDebug:
        """How this call's breakpoints announce a waiting debugger session."""

        def announce(info: dict[str, Any], line: str) -> None:  # from the call's thread
            log.write("stderr", f"hotpod: {line}\n")
            if queue is not None:
                data = wire.frame(wire.FRAME_DEBUG, json.dumps(info).encode())
                loop.call_soon_threadsafe(queue.put_nowait, data)

        options = debug.DebugOptions.parse(_header(scope, b"x-hotpod-debug"))
        return debug.CallDebug(options, announce, request_id, streaming=queue is not None)

    async def _stream(
        self,
        send: Send,
        queue: asyncio.Queue[object],
        work: Awaitable[object],
        watch: Receive | None = None,
        receive: Receive | None = None,
    ) -> None:
        """Answer with frames: those ``queue`` gets while ``work`` runs, then ``work``'s own.

        Work that finishes before anything is queued is answered with one plain body. With
        ``watch``, the caller going away (``http.disconnect``) cancels ``work`` at once; with
        ``receive``, from the moment a stream of items starts (raises ``_Disconnected``).
        """
        loop = asyncio.get_running_loop()
        done = object()

        async def run() -> None:
            try:
                queue.put_nowait(await work)
            finally:  # even when the runtime itself failed: the response must end, not hang
                queue.put_nowait(done)

        task = loop.create_task(run())
        watcher = _watch(watch, task) if watch is not None else None
        try:
            first = await queue.get()
            if first is done:
                await task  # raises the runtime's error
                raise HTTPError(500, "the call ended without a result")
            if not queue.empty() and queue._queue[0] is done:  # type: ignore[attr-defined]
                await _send_bytes(send, 200, first, wire.CT_FRAMES)  # type: ignore[arg-type]
                await task
                return
            await _start_frames(send)
            item: object = first
            connected = True
            while True:
                if watcher is None and receive is not None and item == _STREAM_START:
                    watcher = _watch(receive, task)  # a stream the caller may stop early
                chunk = [item]
                finished = False
                while not queue.empty():
                    nxt = queue.get_nowait()
                    if nxt is done:
                        finished = True
                        break
                    chunk.append(nxt)
                if connected:
                    try:  # (large results are written as they are, not joined: no copy)
                        await _send_pieces(send, wire.coalesce(chunk), not finished)  # type: ignore[arg-type]
                    except Exception:  # the caller went away; the call still runs to its end
                        connected = False
                if finished:
                    break
                item = await queue.get()
                if item is done:
                    if connected:
                        try:
                            await send(
                                {"type": "http.response.body", "body": b"", "more_body": False}
                            )
                        except Exception:
                            pass
                    break
            await task
        except asyncio.CancelledError:
            if watcher is not None and watcher.done() and not watcher.cancelled():
                raise _Disconnected() from None  # we cancelled the work: the caller went away
            raise
        finally:
            if watcher is not None:
                watcher.cancel()

    async def _invoke(
        self,
        target: Callable[..., Any],
        args: list,
        kwargs: dict,
        accept: str,
        log: logs.CallLog,
        queue: asyncio.Queue[object] | None,
    ) -> wire.Body | _Items:
        """Run the user's code under the call's log; returns the result or error frames.

        When the code is (or returns) a generator, its items go to ``queue`` as they come and
        the end or error frames are returned; with no ``queue``, the generator is returned.
        """
        st = self.state
        token = logs.current_call.set(log)
        try:
            result: Any
            if inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target):
                try:
                    result = target(*args, **kwargs)
                    if inspect.iscoroutine(result):
                        result = await result
                    if not isinstance(result, _GENERATORS):
                        return wire.encode_result(result, accept)
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:  # the user's SystemExit too: it must not stop the pod
                    return self._error_frames(exc)
                finally:
                    log.flush()
            else:
                result = await st.pool().run(self._run_sync, target, args, kwargs, accept, log)
                if type(result) is bytes or type(result) is wire.Parts:
                    return result  # type: ignore[no-any-return]
            if queue is None:
                return result  # type: ignore[no-any-return]
            return await self._stream_items(result, accept, log, queue)
        finally:
            logs.current_call.reset(token)

    def _run_sync(
        self, target: Callable[..., Any], args: list, kwargs: dict, accept: str, log: logs.CallLog
    ) -> wire.Body | _Items:
        try:
            result = target(*args, **kwargs)
            if isinstance(result, _GENERATORS):
                return result  # type: ignore[no-any-return]
            if inspect.isawaitable(result):
                result = asyncio.run(_await(result))
            return wire.encode_result(result, accept)
        except BaseException as exc:  # the user's SystemExit too: it must not stop the pod
            log.flush()
            debug.post_mortem(exc)  # when the call asked for it: a session on the failing frame
            return self._error_frames(exc)
        finally:
            log.flush()

    async def _stream_items(
        self, items: _Items, accept: str, log: logs.CallLog, queue: asyncio.Queue[object]
    ) -> bytes:
        """Send a generator's items to ``queue`` as it yields them; returns the end frame, or
        the error frames of what it raised. Cancelled, an async generator is cancelled where
        it waits; a sync one is closed once the item it is producing is done."""
        token = logs.current_call.set(log)
        queue.put_nowait(_STREAM_START)
        try:
            if isinstance(items, types.AsyncGeneratorType):
                try:
                    async for item in items:
                        queue.put_nowait(wire.encode_item(item, accept))
                    return _STREAM_END
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:
                    return self._error_frames(exc)
                finally:
                    log.flush()
                    await _aclose(items)
            stop = threading.Event()
            loop = asyncio.get_running_loop()

            def emit(data: bytes) -> bool:  # (on the call thread)
                if stop.is_set():
                    return False
                loop.call_soon_threadsafe(queue.put_nowait, data)
                return True

            try:
                return await self.state.pool().run(  # type: ignore[no-any-return]
                    self._pull, items, accept, log, emit
                )
            except asyncio.CancelledError:
                stop.set()
                raise
        finally:
            logs.current_call.reset(token)

    def _pull(
        self,
        gen: types.GeneratorType[Any, Any, Any],
        accept: str,
        log: logs.CallLog,
        emit: Callable[[bytes], bool],
    ) -> bytes:
        """Pull a sync generator's items on a call thread, each encoded and given to ``emit``,
        until it ends or ``emit`` answers False (the caller went away); the end frame, or the
        error frames of what it raised."""
        try:
            for item in gen:
                if not emit(wire.encode_item(item, accept)):
                    break
            return _STREAM_END
        except BaseException as exc:  # the user's SystemExit too: it must not stop the pod
            log.flush()
            debug.post_mortem(exc)
            return self._error_frames(exc)
        finally:
            gen.close()
            log.flush()

    def _error_frames(self, exc: BaseException) -> bytes:
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        # drop the runtime's own frame from the top of the traceback
        text = tb[0] + "".join(tb[2:]) if len(tb) > 2 else "".join(tb)
        call = logs.current_call.get()
        if call is not None:  # where to read the call's output later
            rid = call.request_id[: loglines.REQUEST_ID_CHARS]
            text += (
                f"(request {rid} on pod {self.state.pod}: its output is in "
                f"'hotpod logs {self.state.service} --request {rid}')\n"
            )
        return wire.encode_error(exc, text, self.state.pod, self.state.rank)


async def _await(awaitable: Any) -> Any:
    return await awaitable


_Items = types.GeneratorType | types.AsyncGeneratorType
_Out = TypeVar("_Out")
_GENERATORS = (types.GeneratorType, types.AsyncGeneratorType)
_STREAM_START = wire.frame(wire.FRAME_STREAM, b"")
_STREAM_END = wire.frame(wire.FRAME_END, b"")


class _Disconnected(Exception):
    """The caller closed the connection; the call's work was cancelled."""


def _is_generator_function(target: Callable[..., Any] | None) -> bool:
    return inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target)


async def _disconnect(receive: Receive) -> None:
    """Returns when the caller has gone away (or the response is complete)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _watch(receive: Receive, task: asyncio.Task[Any]) -> asyncio.Task[None]:
    """A task that cancels ``task`` when the caller disconnects before it is done."""
    watcher = asyncio.get_running_loop().create_task(_disconnect(receive))

    def cancel(w: asyncio.Task[None]) -> None:
        if not w.cancelled() and not task.done():
            task.cancel()

    watcher.add_done_callback(cancel)
    return watcher


async def _until_disconnect(receive: Receive, work: Awaitable[_Out]) -> _Out:
    """``work``'s result; cancels it and raises ``_Disconnected`` if the caller goes away."""
    task = asyncio.ensure_future(work)
    watcher = _watch(receive, task)
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            raise _Disconnected() from None
        raise
    finally:
        watcher.cancel()


async def _aclose(gen: types.AsyncGeneratorType[Any, Any]) -> None:
    try:
        await gen.aclose()
    except BaseException:  # a generator that will not close (it yields in finally): leave it
        pass


def _error_type(payload: bytes) -> str | None:
    """The exception type a call's result frames carry, or None for a result."""
    if payload[:1] not in (wire.FRAME_EXC, wire.FRAME_ERROR):
        return None
    for kind, data in wire.FrameDecoder().feed(payload):
        if kind == wire.FRAME_ERROR:
            try:
                name = str(json.loads(data).get("type") or "Exception")
                return name.removeprefix("builtins.")
            except (ValueError, AttributeError):
                break
    return "Exception"
