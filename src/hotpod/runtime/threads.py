"""The threads that run sync user code, with the cheapest hand-off measured here.

``loop.run_in_executor`` on a ``ThreadPoolExecutor`` costs about 100 µs per call on this kind
of machine (a concurrent Future, a work item, a wrapped asyncio Future); a ``SimpleQueue`` and
``call_soon_threadsafe`` cost about 65 µs. Threads start on demand, up to ``limit``: a long call
holds its thread, and the next call gets another one.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any

_STOP = object()


class CallThreads:
    def __init__(self, limit: int = 64, name: str = "hotpod-call") -> None:
        self.limit = max(1, limit)
        self.name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._semaphore: asyncio.Semaphore | None = None

    def _worker(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            loop, future, ctx, fn, args = item
            if loop is None:  # ``submit``: the function ends the call itself
                try:
                    ctx.run(fn, *args)
                except BaseException:
                    pass
                with self._lock:
                    self._idle += 1
                continue
            done: Callable[[asyncio.Future[Any], Any], None]
            try:
                result = ctx.run(fn, *args)
            except BaseException as exc:
                done, value = _set_exception, exc
            else:
                done, value = _set_result, result
            with self._lock:  # idle again before the caller learns of it: no needless new thread
                self._idle += 1
            try:
                loop.call_soon_threadsafe(done, future, value)
            except RuntimeError:  # the loop is closed: the pod is shutting down
                pass

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in a thread, with the caller's context variables."""
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.limit)
        async with self._semaphore:
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            with self._lock:  # reserve an idle thread, or start one (the semaphore bounds them)
                if self._idle > 0:
                    self._idle -= 1
                else:
                    self._threads += 1
                    threading.Thread(
                        target=self._worker, name=f"{self.name}-{self._threads}", daemon=True
                    ).start()
            self._queue.put((loop, future, contextvars.copy_context(), fn, args))
            return await future

    def submit(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` on an idle thread, or a new one while fewer than ``limit`` run,
        in an empty context, with no result handed back (``fn`` ends its call itself): one
        hand-off instead of two. False when every thread is busy (use ``run``, which waits)."""
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
            elif self._threads < self.limit:
                self._threads += 1
                threading.Thread(
                    target=self._worker, name=f"{self.name}-{self._threads}", daemon=True
                ).start()
            else:
                return False
        self._queue.put((None, None, contextvars.Context(), fn, args))
        return True

    def can_submit(self) -> bool:
        """Whether ``submit`` would take a call now (from the thread that submits: only it
        takes threads; they only come back meanwhile)."""
        with self._lock:
            return self._idle > 0 or self._threads < self.limit

    def shutdown(self) -> None:
        with self._lock:
            n = self._threads
        for _ in range(n):
            self._queue.put(_STOP)


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
