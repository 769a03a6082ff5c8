"""The pod's HTTP server, a plain ASGI application.

Endpoints::

    GET  /health            liveness and readiness (no token)
    POST /call              call the service's function
    POST /call/{method}     call a method of the service's instance
    POST /_hotpod/relay     a call passed on to the pod's other processes or to other pods
                            (see ``relay``)
    POST /_hotpod/launch    load a launch spec (code, init args, env), reloading only what changed
    POST /_hotpod/store/... what a launch needs from the store, for a pod with its own store
                            (see ``storeapi``)
    GET  /_hotpod/info      what the pod serves
    GET  /_hotpod/debug     debugger sessions waiting for a client (``hotpod debug``)
    GET  /metrics           Prometheus metrics (see ``metrics``); the token is required
    ANY  /app/{path}        proxied to the service's app (``kt.app``, see ``apps``); the token
                            is required, the protocol header is not

Nothing a client sends can crash the server: every bad request gets a 4xx with a message. The
launch path is in ``launches``, the call path in ``calls``; ``PodApp`` composes them with
routing, authentication and the health and info endpoints.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
from collections.abc import Callable
from typing import Any

from hotpod import wire
from hotpod.runtime import debug, logs, relay, storeapi
from hotpod.runtime.apps import AppRunner
from hotpod.runtime.asgi import HTTPError, Receive, Scope, Send, _header, _send_bytes, _send_json
from hotpod.runtime.calls import CallsMixin
from hotpod.runtime.launches import LaunchMixin
from hotpod.runtime.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from hotpod.runtime.setup import chain, summary
from hotpod.runtime.state import PodState, read_json

__all__ = ["PodApp", "PodState"]


class PodApp(LaunchMixin, CallsMixin):
    """The ASGI application of one pod."""

    def __init__(self, state: PodState, on_ready: Callable[[bool], None] | None = None) -> None:
        self.state = state
        self.apps = AppRunner(state.root, state.pod, state.rank, state.pod_log)
        self._resuming: asyncio.Task[bool] | None = None  # resuming the persisted launch
        self._on_ready = on_ready  # told once the persisted launch is loaded (or failed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except HTTPError as exc:
            self.state.metrics.rejected(exc.status)
            if exc.status != 499:
                await _send_json(send, exc.status, {"error": exc.message, "pod": self.state.pod})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._started()
                self._resuming = asyncio.get_running_loop().create_task(self._resume())
                if self._on_ready is not None:
                    self._resuming.add_done_callback(self._report_ready)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.state.call_threads is not None:
                    self.state.call_threads.shutdown()
                await self.apps.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _started(self) -> None:
        """A worker starts serving: tag its output, count it (a pod's supervisor starts a new
        worker when one crashes or packages change)."""
        st = self.state
        logs.tag_output(st.pod, st.rank)
        st.metrics.worker_started(st.root, int(os.environ.get("HOTPOD_RESTARTS") or 0))

    def _report_ready(self, task: asyncio.Task[bool]) -> None:
        ok = not task.cancelled() and task.exception() is None and task.result()
        if self._on_ready is not None:
            self._on_ready(ok)

    # -- routing ----------------------------------------------------------------------------

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/health":
            if method not in ("GET", "HEAD"):
                raise HTTPError(405, "use GET /health")
            await _send_json(send, 200, self._health())
            return
        if path == "/metrics":  # no protocol header: Prometheus scrapes it with the token alone
            self._check_auth(scope)
            if method not in ("GET", "HEAD"):
                raise HTTPError(405, "use GET /metrics")
            await _send_bytes(send, 200, self.state.metrics.render(), METRICS_CONTENT_TYPE)
            return
        if path == "/app" or path.startswith("/app/"):  # any method: the app's own API
            self._check_auth(scope)
            if self.state.loaded is None and self._resuming is not None:
                await asyncio.wait([self._resuming])  # a restarted worker: wait for its app
            await self.apps.proxy(scope, receive, send, self.state.max_body)
            return
        if path.startswith(storeapi.PREFIX):  # code for a pod with a store of its own
            self._check_auth(scope)
            self._check_protocol(scope)
            await storeapi.handle(self.state, scope, receive, send)
            return
        is_call = path == "/call" or path.startswith("/call/")
        if path == relay.PATH:  # a call passed on to other processes or pods (``relay``)
            self._check_auth(scope)
            self._check_protocol(scope)
            if method != "POST":
                raise HTTPError(405, f"use POST {path}")
            await relay.handle(self, scope, receive, send)
            return
        if not is_call and path not in ("/_hotpod/launch", "/_hotpod/info", "/_hotpod/debug"):
            raise HTTPError(404, f"no endpoint {path}; calls go to POST /call or /call/METHOD")
        self._check_auth(scope)
        self._check_protocol(scope)
        if path in ("/_hotpod/info", "/_hotpod/debug"):
            if method not in ("GET", "HEAD"):
                raise HTTPError(405, f"use GET {path}")
            if path == "/_hotpod/debug":  # the debugger sessions waiting on this pod
                await _send_bytes(send, 200, debug.session_json(), wire.CT_JSON)
                return
            await _send_json(send, 200, self._info())
            return
        if method != "POST":
            raise HTTPError(405, f"use POST {path}")
        if path == "/_hotpod/launch":
            await self._handle_launch(scope, receive, send)
        else:
            await self._handle_call(
                scope, receive, send, path[len("/call/") :] if path != "/call" else ""
            )

    def _check_auth(self, scope: Scope) -> None:
        proxied = _header(scope, b"x-hotpod-token")  # through a proxy that takes Authorization
        value = f"Bearer {proxied}" if proxied is not None else _header(scope, b"authorization")
        if not value:
            raise HTTPError(401, "missing Authorization: Bearer <service token>")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode("utf-8", "replace"), self.state.token.encode()
        ):
            raise HTTPError(403, "invalid service token")

    def _check_protocol(self, scope: Scope) -> None:
        version = _header(scope, b"x-hotpod-protocol")
        if version != wire.PROTOCOL_VERSION:
            raise HTTPError(
                400,
                f"protocol mismatch: the client speaks {version or 'no version'}, this pod speaks "
                f"{wire.PROTOCOL_VERSION}; use the same hotpod version on both sides",
            )

    def _health(self) -> dict[str, Any]:
        st = self.state
        return {
            "status": "ok",
            "pod": st.pod,
            "rank": st.rank,
            "pid": os.getpid(),
            "ready": st.loaded is not None,
            "launch_id": st.loaded.launch_id if st.loaded else None,
            "launch_error": read_json(st.launch_error_file),
        }

    def _info(self) -> dict[str, Any]:
        st = self.state
        info = self._health()
        info.update(service=st.service, started=st.started, venv=str(st.venv) if st.venv else None)
        if self.apps.current is not None:  # kt.app: its process, restarts, last exit
            info["app"] = self.apps.state()
        if st.loaded:
            spec = st.loaded.spec
            info.update(kind=spec.get("kind"), code=spec.get("code"), service=spec.get("service"))
            info["steps"] = self._applied_steps(spec.get("image") or {})
        return info

    def _applied_steps(self, image: dict[str, Any]) -> list[dict[str, Any]]:
        """The launch's image steps, each with when it was applied and how long it took."""
        try:
            data = json.loads((self.state.root / ".hotpod" / "ledger.json").read_text())
            applied = data.get("applied", {}) if isinstance(data, dict) else {}
        except (OSError, ValueError):
            applied = {}
        steps = []
        for step, h in zip(image.get("steps") or [], chain(image), strict=True):
            entry = applied.get(h) or {}
            steps.append(
                {
                    "step": summary(step),
                    "kind": step.get("kind"),
                    "applied": h in applied,
                    "seconds": entry.get("seconds"),
                    "at": entry.get("at"),
                }
            )
        return steps
