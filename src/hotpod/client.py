"""Calls from the client to the pods of a service, over HTTP.

One keep-alive connection pool per handle; a call to one pod runs in the caller's thread, a
broadcast writes every request from it and reads the answers as they come (:mod:`hotpod.fanout`;
a collective pool's, watched for a lost pod, runs one thread per pod; the async twin is
:mod:`hotpod.aioclient`). When the pod
answers with a stream (the function is a generator), the call returns an iterator of its items
as they arrive (:mod:`hotpod.answers`). Log lines the pods stream back are printed as they
arrive, each prefixed with its pod's name. Transport errors are translated here, at the boundary, into
hotpod's own (``PodUnreachableError``, ``CallTimeoutError``...).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import httpx

from hotpod import fanout, transport, tree, wire
from hotpod.answers import (
    AnswerReader,
    Stream,
    StreamReader,
    answered_by,
    stream_items,
)
from hotpod.backends.base import PodInfo
from hotpod.errors import (
    BroadcastError,
    CallError,
    CallTimeoutError,
    DeployError,
    PodTerminatedError,
    PodUnreachableError,
    ProtocolError,
)
from hotpod.progress import Progress
from hotpod.results import Results

if TYPE_CHECKING:
    from hotpod.aiotransport import AsyncTransport

CONNECT_TIMEOUT = 5.0
#: how long a call keeps retrying a pod that refuses connections (it is restarting)
RECONNECT_WINDOW = 30.0


@dataclass(frozen=True)
class CallOptions:
    """Options of a call, set on a handle with ``handle.with_options(...)``.

    ``timeout``: seconds for the whole call (None: no limit); ``serialization``: ``"auto"``
    (JSON when the values survive it unchanged, else pickle), ``"json"`` or ``"pickle"``;
    ``stream_logs``: print the call's output here as it happens; ``debug_rank``: with several
    pods, only this rank stops at ``breakpoint()`` (the others skip theirs); ``post_mortem``: a
    debugger session on the frame that raised when the call fails; ``debugger``: ``"pdb"`` (in
    this terminal, or ``hotpod debug``) or ``"debugpy"`` (an IDE attaches); ``workers``: which
    pods a call goes to (``None``: all; ``"ready"``: those running and ready; a list of ranks);
    ``restart``: give those pods fresh worker processes before the call.
    """

    timeout: float | None = None
    serialization: str = "auto"
    stream_logs: bool = True
    debug_rank: int | None = None
    post_mortem: bool = False
    debugger: str = "pdb"
    workers: str | tuple[int, ...] | None = None
    restart: bool = False

    def debug_header(self) -> str | None:
        """The X-Hotpod-Debug value, or None when every option is at its default."""
        parts = []
        if self.debug_rank is not None:
            parts.append(f"rank={self.debug_rank}")
        if self.post_mortem:
            parts.append("post_mortem=1")
        if self.debugger != "pdb":
            parts.append(f"debugger={self.debugger}")
        return ";".join(parts) or None

    def __post_init__(self) -> None:
        from hotpod.errors import SpecError

        if self.timeout is not None and (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, (int, float))
            or self.timeout <= 0
        ):
            raise SpecError(f"timeout={self.timeout!r}: expected a number of seconds > 0, or None")
        if self.serialization not in wire.SERIALIZATIONS:
            raise SpecError(
                f"serialization={self.serialization!r}: expected one of "
                f"{', '.join(map(repr, wire.SERIALIZATIONS))}"
            )
        if not isinstance(self.stream_logs, bool):
            raise SpecError(f"stream_logs={self.stream_logs!r}: expected True or False")
        if self.debug_rank is not None and (
            isinstance(self.debug_rank, bool)
            or not isinstance(self.debug_rank, int)
            or self.debug_rank < 0
        ):
            raise SpecError(
                f"debug_rank={self.debug_rank!r}: expected a rank (an int >= 0) or None"
            )
        if not isinstance(self.post_mortem, bool):
            raise SpecError(f"post_mortem={self.post_mortem!r}: expected True or False")
        if self.debugger not in ("pdb", "debugpy"):
            raise SpecError(f"debugger={self.debugger!r}: expected 'pdb' or 'debugpy'")
        if isinstance(self.workers, (list, tuple)):
            ranks = tuple(self.workers)
            valid = all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in ranks)
            if not ranks or len(set(ranks)) != len(ranks) or not valid:
                raise SpecError(
                    f"workers={self.workers!r}: expected distinct ranks (ints >= 0) like [0, 2]"
                )
            object.__setattr__(self, "workers", ranks)
        elif self.workers not in (None, "ready"):
            raise SpecError(
                f"workers={self.workers!r}: expected None (every pod), 'ready' or a list of ranks"
            )
        if not isinstance(self.restart, bool):
            raise SpecError(f"restart={self.restart!r}: expected True or False")


class PodClient:
    """HTTP access to the pods of one service. ``PodClient.shared`` gives one per service."""

    _shared: dict[tuple[str, str], PodClient] = {}
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls, service: str, token: str) -> PodClient:
        """The process-wide client of a service, so handles share warm connections."""
        with cls._shared_lock:
            client = cls._shared.get((service, token))
            if client is None:
                client = cls._shared[(service, token)] = cls(service, token)
            return client

    def __init__(self, service: str, token: str, log_out: TextIO | None = None) -> None:
        self.service = service
        self.log_out = log_out
        self._headers = {
            "Authorization": f"Bearer {token}",
            wire.HEADER_PROTOCOL: wire.PROTOCOL_VERSION,
        }
        self._transport = transport.Transport(CONNECT_TIMEOUT)
        self._atransport: AsyncTransport | None = None  # made by the first async call
        self._http = httpx.Client(
            headers=self._headers,
            timeout=httpx.Timeout(CONNECT_TIMEOUT, read=None, write=None, pool=None),
            transport=transport.httpx_transport(  # (pods behind a proxy: transport.Route)
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=256)
            ),
        )
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._suspect: set[str] = set()  # pods whose connection broke: wait for them to be back

    def close(self) -> None:
        self._transport.close()
        if self._atransport is not None:
            self._atransport.close()
        self._http.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    # -- calls ------------------------------------------------------------------------------

    def call(self, pod: PodInfo, method: str, args: tuple, kwargs: dict, opts: CallOptions) -> Any:
        body, ctype = wire.encode_request(args, kwargs, opts.serialization)
        return self._call(pod, method, body, ctype, opts)

    def broadcast(
        self,
        pods: Sequence[PodInfo],
        method: str,
        args: tuple,
        kwargs: dict,
        opts: CallOptions,
        watch: Callable[[Sequence[Future[Any]]], None] | None = None,
        procs: int = 1,
    ) -> list[Any]:
        """Call every pod at once; results in rank order. ``watch``, given the calls' futures
        while they run, may raise to fail the call early (a distributed pool losing a pod).
        ``procs`` > 1 (processes per pod) or a large pool: through the pods' relays (``tree``)."""
        body, ctype = wire.encode_request(args, kwargs, opts.serialization)
        if procs > 1 or (watch is None and tree.use_tree(pods)):
            rid = uuid.uuid4().hex
            return tree.broadcast(self, pods, method, body, ctype, opts, rid, procs, watch)  # type: ignore[no-any-return]
        if len(pods) == 1:
            return self.gathered(pods, [self._call(pods[0], method, body, ctype, opts)], {})
        request_id = uuid.uuid4().hex  # one id for the call on every pod: one 'logs --request'
        if watch is None:  # requests written here, answers read as they come (``fanout``)
            return fanout.broadcast(self, pods, method, body, ctype, opts, request_id)
        futures = [
            self.executor(len(pods)).submit(self._call, p, method, body, ctype, opts, request_id)
            for p in pods
        ]
        watch(futures)
        results: list[Any] = [None] * len(pods)
        errors: dict[int, BaseException] = {}
        for i, fut in enumerate(futures):
            try:
                results[i] = fut.result()
            except BaseException as exc:
                errors[i] = exc
        return self.gathered(pods, results, errors)

    def gathered(
        self, pods: Sequence[PodInfo], results: list[Any], errors: dict[int, BaseException]
    ) -> list[Any]:
        """A broadcast's results in rank order, or BroadcastError when some pods failed."""
        if errors:
            names = [p.name for p in pods]
            detail = "; ".join(
                f"{names[i]}: {type(e).__name__}: {e}" for i, e in sorted(errors.items())
            )
            err = BroadcastError(
                f"{len(errors)} of {len(pods)} pods of {self.service!r} failed ({detail}). "
                "The other pods' results are in .results, each failure in .errors.",
                errors=errors,
                results=results,
                pods=names,
            )
            raise err from next(iter(errors.values()))
        return Results(results, [p.rank for p in pods], [p.name for p in pods])

    def executor(self, n: int) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None or self._pool._max_workers < n:  # type: ignore[attr-defined]
                if self._pool is not None:
                    self._pool.shutdown(wait=False)
                self._pool = ThreadPoolExecutor(min(max(n, 4), 256), thread_name_prefix="hotpod")
            return self._pool

    def _call(
        self,
        pod: PodInfo,
        method: str,
        body: wire.Body,
        ctype: str,
        opts: CallOptions,
        request_id: str | None = None,
    ) -> Any:
        path, headers, start, deadline, what = self.call_setup(pod, method, ctype, opts, request_id)
        resp = self.send(pod, path, body, headers, what, opts, start, deadline)
        return self._answer(pod, method, resp, deadline, what, opts)

    def send(
        self,
        pod: PodInfo,
        path: str,
        body: wire.Body,
        headers: dict[str, str],
        what: str,
        opts: CallOptions,
        start: float,
        deadline: float | None,
    ) -> transport.Response:
        """Send a call's request and return once its answer's head has arrived: first waits
        for a pod that broke a call, and resends by the rule of ``retry_delay``."""
        if pod.name in self._suspect:
            self._await_pod(pod, what, start, deadline)
        retried = False
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            try:
                return self._transport.request(pod.url, path, body, headers, remaining)
            except (transport.Broken, transport.Unreachable, transport.TimedOut) as exc:
                time.sleep(self.retry_delay(exc, retried, what, pod, opts, start, deadline))
                retried = retried or isinstance(exc, transport.Broken)

    def reading(self, resp: Any, pod: PodInfo, what: str, opts: CallOptions) -> _Reading:
        """``with client.reading(resp, ...)`` around reading an answer (sync or async): a failure
        abandons the connection; a timeout or a break raises CallTimeoutError/PodTerminatedError."""
        return _Reading(self, resp, pod, what, opts)

    def _answer(
        self,
        pod: PodInfo,
        method: str,
        resp: transport.Response,
        deadline: float | None,
        what: str,
        opts: CallOptions,
    ) -> Any:
        """The result of a call whose answer's head has arrived, or its error raised."""
        with _Reading(self, resp, pod, what, opts):
            if resp.status != 200:
                raise self._status_error(pod, method, resp.status, resp.read())
            return self._read_frames(pod, resp, deadline, what, opts)

    def call_setup(
        self, pod: PodInfo, method: str, ctype: str, opts: CallOptions, request_id: str | None
    ) -> tuple[str, dict[str, str], float, float | None, str]:
        """A call's path, headers, start, deadline and description (for its errors)."""
        path = f"/call/{method}" if method else "/call"
        start = time.monotonic()
        deadline = start + opts.timeout if opts.timeout else None
        headers = self.call_headers(ctype, opts, request_id)
        return path, headers, start, deadline, self.describe(pod, method)

    def describe(self, pod: PodInfo, method: str) -> str:
        """A call as its errors name it."""
        return f"call to {self.service}{'.' + method if method else ''} on pod {pod.name}"

    def retry_delay(
        self,
        exc: Exception,
        retried: bool,
        what: str,
        pod: PodInfo,
        opts: CallOptions,
        start: float,
        deadline: float | None,
    ) -> float:
        """After a request could not be sent or went unanswered: the seconds to wait before
        sending it again, or the error to raise. Never sends twice what a pod may have read."""
        if isinstance(exc, transport.Broken):
            if exc.unanswered and not retried:  # closed by a stopping server: never read
                return 0.0
            raise self._broken(what, pod, exc) from None
        if isinstance(exc, transport.Unreachable):
            # nothing was sent: the pod is (re)starting; wait for it within the window
            waited = time.monotonic() - start
            if waited > RECONNECT_WINDOW or (deadline and time.monotonic() >= deadline):
                raise self._refused(what, pod, exc, waited) from None
            return 0.05
        raise self._timeout(what, opts) from None

    def call_headers(self, ctype: str, opts: CallOptions, request_id: str | None) -> dict[str, str]:
        headers = {
            **self._headers,
            "Content-Type": ctype,
            wire.HEADER_ACCEPT: opts.serialization,
            wire.HEADER_REQUEST_ID: request_id or uuid.uuid4().hex,
        }
        if opts.stream_logs:
            headers[wire.HEADER_STREAM_LOGS] = "1"
        debug = opts.debug_header()
        if debug:
            headers[wire.HEADER_DEBUG] = debug
        return headers

    def _await_pod(
        self,
        pod: PodInfo,
        what: str,
        start: float,
        deadline: float | None,
        need_ready: bool = True,
    ) -> None:
        """Wait until a pod whose connection broke serves again (a new worker answers)."""
        while True:
            health = self.health(pod)
            if health is not None and (health.get("ready") or not need_ready):
                self._suspect.discard(pod.name)
                return
            now = time.monotonic()
            if now - start > RECONNECT_WINDOW or (deadline is not None and now >= deadline):
                raise PodUnreachableError(
                    f"{what}: pod {pod.name} has not come back since its connection broke "
                    f"({now - start:.0f} s). Run 'hotpod describe {self.service}'.",
                    pod=pod.name,
                )
            time.sleep(0.05)

    def _refused(self, what: str, pod: PodInfo, exc: Exception, waited: float) -> Exception:
        return PodUnreachableError(
            f"{what}: pod {pod.name} at {pod.url} refuses connections ({exc}) after "
            f"{waited:.0f} s. Run 'hotpod describe {self.service}' to see its state.",
            pod=pod.name,
        )

    def _timeout(self, what: str, opts: CallOptions) -> CallTimeoutError:
        return CallTimeoutError(
            f"{what} did not finish within {opts.timeout:g} s (the handle's timeout); the "
            "remote work may still be running. Raise it with .with_options(timeout=...)."
        )

    def _broken(self, what: str, pod: PodInfo, exc: Exception) -> PodTerminatedError:
        self._suspect.add(pod.name)
        return PodTerminatedError(
            f"{what} failed: the connection to the pod broke mid-call ({exc}); its process "
            f"probably died. See 'hotpod logs {self.service} --pod {pod.name}'.",
            pod=pod.name,
        )

    def _read_frames(
        self,
        pod: PodInfo,
        resp: transport.Response,
        deadline: float | None,
        what: str,
        opts: CallOptions,
    ) -> Any:
        pod = answered_by(pod, resp)  # (behind a router: the pod it picked)
        decoder = wire.FrameDecoder()
        answer = AnswerReader(pod.name, opts.stream_logs, self.log_out)
        chunks = resp.chunks()
        for chunk in chunks:
            if len(chunk) >= wire.LARGE and not decoder.pending:  # a large answer read whole
                single = wire.single_frame(chunk)
                if single is not None and single[0] == wire.FRAME_PICKLE:
                    answer.outcome = (True, wire.decode_result(*single))  # no copy first
                    continue
            frames = decoder.feed(chunk)
            for i, (kind, payload) in enumerate(frames):
                if answer.take(kind, payload):
                    continue
                if kind == wire.FRAME_STREAM:
                    reader = StreamReader(self, pod, what, opts, decoder, frames[i + 1 :])
                    return Stream(stream_items(reader, resp, chunks, deadline), resp)
                self.other_frame(kind, payload, what, resp)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise transport.TimedOut("deadline passed")
                resp.set_timeout(left)
        return answer.result()

    def other_frame(
        self, kind: bytes, payload: bytes, what: str, resp: transport.Response | None
    ) -> None:
        """A debugger session (D frame): attach this terminal; anything else is an error."""
        if kind != wire.FRAME_DEBUG:
            raise ProtocolError(f"{what}: unknown frame type {kind!r} from the pod")
        from hotpod.debugger import attach_announced

        if resp is not None:
            resp.set_timeout(None)  # a person is debugging: no deadline meanwhile
        attach_announced(json.loads(payload), self._headers["Authorization"][7:])

    def _status_error(self, pod: PodInfo, method: str, status: int, data: bytes) -> Exception:
        message = wire.error_message(data)
        if status == 404 and method:
            return AttributeError(f"{message} (pod {pod.name})")
        if status in (401, 403):
            return CallError(
                f"pod {pod.name} refused the call: {message}. The service may have been redeployed "
                "by another client; call .to() again to refresh the handle."
            )
        if status == 503:
            return CallError(f"pod {pod.name} is not ready: {message}")
        if status >= 500:
            return CallError(
                f"pod {pod.name} could not finish the call ({status}: {message}); it may have "
                f"been stopping (teardown or redeploy). See 'hotpod logs {self.service} --pod "
                f"{pod.name}'."
            )
        return CallError(f"pod {pod.name} answered {status}: {message}")

    # -- deploy -----------------------------------------------------------------------------

    def health(self, pod: PodInfo) -> dict[str, Any] | None:
        """The pod's /health answer, or None when it does not answer."""
        try:
            r = self._http.get(f"{pod.url}/health", timeout=2)
            return r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def launch(
        self,
        pods: Sequence[PodInfo],
        spec: dict[str, Any],
        timeout: float,
        progress: Progress | None = None,
    ) -> list[dict[str, Any]]:
        """Push a launch spec to every pod, showing their setup progress; wait for pods that
        restart their worker. Raise DeployError naming the pods that failed and why."""
        body = json.dumps(spec).encode()
        headers = {
            **self._headers,
            "Content-Type": wire.CT_JSON,
            wire.HEADER_STREAM_LOGS: "1",
        }

        def one(pod: PodInfo) -> dict[str, Any]:
            pid = (self.health(pod) or {}).get("pid")
            try:
                try:
                    resp = self._transport.request(
                        pod.url, "/_hotpod/launch", body, headers, timeout
                    )
                except transport.Unreachable:  # (re)starting: nothing was sent, wait and retry
                    self._await_pod(
                        pod, f"launch on {pod.name}", time.monotonic(), None, need_ready=False
                    )
                    resp = self._transport.request(
                        pod.url, "/_hotpod/launch", body, headers, timeout
                    )
                if resp.status != 200:
                    text = resp.read().decode("utf-8", "replace")
                    return {"pod": pod.name, "error": f"HTTP {resp.status}: {text}"}
                result: dict[str, Any] = {"pod": pod.name, "error": "no answer"}
                decoder = wire.FrameDecoder()
                for chunk in resp.chunks():
                    for kind, payload in decoder.feed(chunk):
                        if kind == wire.FRAME_LOG and progress is not None:
                            progress.line(pod.name, payload.decode("utf-8", "replace"))
                        elif kind == wire.FRAME_JSON:
                            result = json.loads(payload)
                        elif kind == wire.FRAME_ERROR:
                            result = json.loads(payload)
                            result["error"] = result.pop("message", "failed")
            except (transport.Unreachable, transport.Broken, transport.TimedOut) as exc:
                return {"pod": pod.name, "error": f"{type(exc).__name__}: {exc}"}
            except PodUnreachableError as exc:
                return {"pod": pod.name, "error": str(exc)}
            if result.get("restarting") and "error" not in result:
                if progress is not None:
                    progress.line(pod.name, "restarting the worker for changed packages")
                error = self._await_successor(pod, pid, spec["launch_id"], timeout)
                if error:
                    result["error"] = error
            if progress is not None and "error" not in result:
                progress.done(pod.name, "ready")
            return result

        if len(pods) == 1:
            results = [one(pods[0])]
        else:
            results = list(self.executor(len(pods)).map(one, pods))
        failed = [r for r in results if "error" in r]
        if failed:
            first = failed[0]
            detail = ""
            if first.get("tail"):
                detail = f"\n\nOutput of the step on {first['pod']} (last lines):\n{first['tail']}"
            elif first.get("traceback"):
                detail = f"\n\nTraceback on {first['pod']}:\n{first['traceback']}"
            what = "setup failed" if first.get("phase") == "setup" else "could not load the code"
            raise DeployError(
                f"{len(failed)} of {len(pods)} pods of {self.service!r}: {what} "
                f"({', '.join(r['pod'] for r in failed)}): {first['error']}{detail}\n"
                "The pods keep serving the previous version."
            )
        return results

    def _await_successor(
        self, pod: PodInfo, old_pid: int | None, launch_id: str, timeout: float
    ) -> str | None:
        """Wait for a pod's new worker to serve ``launch_id``; an error message if it does not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = self.health(pod) or {}
            if health.get("launch_id") == launch_id and health.get("pid") != old_pid:
                return None
            failed = health.get("launch_error") or {}
            if failed.get("launch_id") == launch_id:
                detail = (failed.get("detail") or "").rstrip()
                return f"the pod's new worker failed: {failed.get('message')}" + (
                    f"\n{detail}" if detail else ""
                )
            time.sleep(0.05)
        return (
            f"the pod's new worker did not serve launch {launch_id} within {timeout:g} s; "
            f"see 'hotpod logs {self.service} --pod {pod.name}'"
        )


class _Reading:
    """The context of ``PodClient.reading`` (a class: cheaper per call than a generator's)."""

    __slots__ = ("client", "opts", "pod", "resp", "what")

    def __init__(
        self, client: PodClient, resp: Any, pod: PodInfo, what: str, opts: CallOptions
    ) -> None:
        self.client = client
        self.resp = resp
        self.pod = pod
        self.what = what
        self.opts = opts

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if exc is None:
            return
        if not self.resp.complete:  # cancelled too: closing the connection tells the pod
            self.resp.abandon()  # (an answer read to its end leaves its connection reusable)
        if isinstance(exc, transport.TimedOut):
            raise self.client._timeout(self.what, self.opts) from None
        if isinstance(exc, transport.Broken):
            raise self.client._broken(self.what, self.pod, exc) from None
