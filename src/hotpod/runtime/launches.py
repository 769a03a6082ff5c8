"""The launch path of the pod's server (``POST /_hotpod/launch``).

A launch spec is checked, its image's setup steps are applied (``setup``) and its code is loaded
(``loader``), reloading only what changed. The launch being served is kept in the pod root so that
a restarted worker resumes it; a launch that needs a new worker is handed over to the successor;
why the last launch failed is kept there too, for /health to report.

Distributed pools: a launch brings the pod's distribution variables up to date; when the pool
it forms collectives over changed (size, peers, port, kind) the worker that may hold the old
process group is replaced by a fresh one after the launch is answered (the supervisor kills it
first: it may be stuck in a collective), and a ``"ray"`` pool's launch starts or re-forms the
pod's Ray node (``raynode``). ``{"restart": true, "launch_id": ID}`` sent to the launch endpoint
replaces the worker the same way, reloading the launch it serves (``with_options(restart=True)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hotpod import wire
from hotpod.distribute import COLLECTIVE_KINDS, DISTRIBUTION_ENV, formation, worker_env
from hotpod.runtime import relay, storeapi
from hotpod.runtime.apps import AppError, AppRunner, check_app_spec
from hotpod.runtime.asgi import (
    HTTPError,
    Receive,
    Scope,
    Send,
    _header,
    _read_body,
    _send_bytes,
    _send_json,
)
from hotpod.runtime.loader import Loaded, LoadError, load, reload_key
from hotpod.runtime.setup import Setup, SetupError
from hotpod.runtime.state import PodState, read_json


def _check_spec(spec: Any) -> None:
    """Check a launch spec's shape (see ``loader``); raises ValueError naming what is wrong."""
    if not isinstance(spec, dict) or not isinstance(spec.get("code"), dict):
        raise ValueError("expected a JSON object with a 'code' object")
    kind = spec.get("kind", "fn")
    if kind not in ("fn", "cls", "app"):
        raise ValueError(f"'kind' is {kind!r}: expected 'fn', 'cls' or 'app'")
    code = spec["code"]
    for key in ("manifest", "module", "script", "qualname", "by_value"):
        if not isinstance(code.get(key), (str, type(None))):
            raise ValueError(f"'code.{key}' must be a string or null")
    if kind == "app":
        check_app_spec(spec.get("app"))
        timeout = spec.get("timeout")
        if timeout is not None and not (
            isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0
        ):
            raise ValueError(f"'timeout' is {timeout!r}: expected a positive number of seconds")
    elif not (code.get("by_value") or code.get("script") or code.get("module")):
        raise ValueError("'code' names no 'module', 'script' or 'by_value' to load")
    if kind != "app" and not code.get("by_value") and not code.get("qualname"):
        raise ValueError("'code.qualname' is missing: which function or class to serve")
    paths = code.get("paths", [""])
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise ValueError("'code.paths' must be a list of strings")
    for p in paths:
        if p.startswith("/") or ".." in p.split("/"):
            raise ValueError(f"'code.paths' entry {p!r} leaves the code snapshot")
    if not isinstance(spec.get("init"), (str, type(None))):
        raise ValueError("'init' must be a string (a blob digest) or null")
    env = spec.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) for k in env):
        raise ValueError("'env' must be an object of names to values")
    dist = spec.get("distribute")
    if dist is not None and not (
        isinstance(dist, dict)
        and isinstance(dist.get("kind"), str)
        and isinstance(dist.get("port"), (int, type(None)))
        and isinstance(dist.get("peers"), list)
        and all(isinstance(p, str) for p in dist["peers"])
    ):
        raise ValueError(
            "'distribute' must be null or {'kind': str, 'port': int|null, 'peers': [str]}"
        )


#: kinds whose workers are replaced when their pool changes (they hold a group or a driver)
_REFORMED = (*COLLECTIVE_KINDS, "ray")


class LaunchMixin:
    """The launch path of ``PodApp``: loading launches, persisting and resuming them."""

    state: PodState
    apps: AppRunner
    _replace_after_answer: bool = False  # a fresh worker takes over once the launch is answered

    if TYPE_CHECKING:  # (from ``CallsMixin``)

        async def _stream(
            self,
            send: Send,
            queue: asyncio.Queue[object],
            work: Awaitable[object],
            watch: Receive | None = None,
            receive: Receive | None = None,
        ) -> None: ...

    async def _resume(self) -> bool:
        """After a (re)start, load the launch a predecessor handed over, else the one the pod
        last served. False if the handed-over launch failed (the supervisor then keeps the old
        worker), or if nothing could be loaded."""
        st = self.state
        if relay.local_rank():  # another process of a pod: local rank 0 loads its launch
            return True
        restart, st.request_restart = st.request_restart, None  # resuming never asks again
        try:
            # what the client (or the controller) waits to hear of a launch that failed: also
            # one the supervisor reported for a predecessor that died loading it
            failure = read_json(st.launch_error_file)
            handed = read_json(st.next_launch_file)
            failed: tuple[str, str] | None = None
            if handed is not None:
                failed = await self._try_launch(handed)
                st.next_launch_file.unlink(missing_ok=True)
                if failed is None:
                    return True
                failure = read_json(st.launch_error_file)
            spec = read_json(st.launch_file)
            if spec is None and handed is None:  # a new pod: the service's last launch, if any
                spec = await storeapi.cluster_launch(st)
            ok = spec is None or await self._try_launch(spec) is None
            other = failure is not None and failure.get("launch_id") != (spec or {}).get(
                "launch_id"
            )
            if failure is not None and (failed is not None or (ok and other)):
                self._write_error(failure)  # the fallback's outcome must not hide it
            return ok and failed is None
        finally:
            st.request_restart = restart

    async def _try_launch(self, spec: dict[str, Any]) -> tuple[str, str] | None:
        """Load a persisted launch; (message, detail) when that failed."""
        try:
            await self._launch(spec, lambda line: print(f"hotpod-setup: {line}", flush=True))
        except LoadError as exc:
            print(f"hotpod: could not load launch: {exc}\n{exc.tb}", flush=True)
            return str(exc), exc.tb
        except SetupError as exc:
            print(f"hotpod: could not load launch: {exc}\n{exc.tail}", flush=True)
            return str(exc), exc.tail
        print(f"hotpod: resumed launch {spec.get('launch_id')}", flush=True)
        return None

    # -- launch -----------------------------------------------------------------------------

    async def _handle_launch(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(scope, receive, 16 << 20)
        try:
            spec = json.loads(body)
            if not (isinstance(spec, dict) and spec.get("restart") is True):
                _check_spec(spec)
        except RecursionError:
            raise HTTPError(400, "malformed launch spec: nested too deeply") from None
        except ValueError as exc:
            raise HTTPError(400, f"malformed launch spec: {exc}") from None
        if spec.get("restart") is True:  # (checked before the spec: it names no code)
            await self._handle_restart(scope, spec, send)
            return
        stream = _header(scope, b"x-hotpod-stream-logs") == "1"
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] | None = asyncio.Queue() if stream else None

        def emit(line: str) -> None:  # setup progress, from any thread
            print(f"hotpod-setup: {line}", flush=True)
            if queue is not None:
                data = wire.frame(wire.FRAME_LOG, line.encode("utf-8", "replace"))
                loop.call_soon_threadsafe(queue.put_nowait, data)

        async def run() -> bytes:
            t0 = time.perf_counter()
            info: dict[str, Any] = {"pod": self.state.pod, "launch_id": spec.get("launch_id")}
            try:
                info.update(await self._launch(spec, emit))
            except LoadError as exc:
                info.update(type="LoadError", message=str(exc), phase=exc.phase, traceback=exc.tb)
                return wire.frame(wire.FRAME_ERROR, json.dumps(info).encode())
            except SetupError as exc:
                info.update(
                    type="SetupError",
                    message=str(exc),
                    phase="setup",
                    step=exc.step,
                    tail=exc.tail,
                    traceback="",
                )
                return wire.frame(wire.FRAME_ERROR, json.dumps(info).encode())
            info["seconds"] = round(time.perf_counter() - t0, 4)
            return wire.frame(wire.FRAME_JSON, json.dumps(info).encode())

        if queue is not None:
            await self._stream(send, queue, run())
            self._replace_if_asked()
            return
        payload = await run()  # the plain JSON form, for simple clients
        kind, data = wire.FrameDecoder().feed(payload)[0]
        result = json.loads(data)
        if kind == wire.FRAME_ERROR:
            result["error"] = result.pop("message")
            await _send_json(send, 500, result)
        else:
            await _send_json(send, 200, result)
        self._replace_if_asked()

    async def _handle_restart(self, scope: Scope, spec: dict[str, Any], send: Send) -> None:
        """Replace this worker by a fresh one that loads the launch it serves."""
        st = self.state
        current = st.loaded
        if current is None or st.request_restart is None:
            raise HTTPError(
                409, "this pod serves no launch yet (or has no supervisor to restart it)"
            )
        wanted = spec.get("launch_id")
        if wanted is not None and wanted != current.launch_id:
            raise HTTPError(
                409, f"this pod serves launch {current.launch_id}, not {wanted}: deploy again"
            )
        self._persist(current.spec, st.next_launch_file)
        info = {
            "pod": st.pod,
            "launch_id": current.launch_id,
            "restarting": True,
            "pid": os.getpid(),
        }
        if _header(scope, b"x-hotpod-stream-logs") == "1":
            frame = wire.frame(wire.FRAME_JSON, json.dumps(info).encode())
            await _send_bytes(send, 200, frame, wire.CT_FRAMES)
        else:
            await _send_json(send, 200, info)
        self._replace_after_answer = True
        self._replace_if_asked()

    def _replace_if_asked(self) -> None:
        """Once a launch that re-forms the pool is answered: the supervisor kills this worker
        (it may be stuck in a collective of the old pool) and starts a fresh one."""
        if self._replace_after_answer and self.state.request_restart is not None:
            self._replace_after_answer = False
            print("hotpod: the pool changed; a fresh worker replaces this one", flush=True)
            os.kill(os.getppid(), signal.SIGUSR2)

    async def _launch(self, spec: dict[str, Any], emit: Callable[[str], None]) -> dict[str, Any]:
        """Apply the launch's setup steps and load its code; what changed, as plain data.

        A failure is kept in the pod root (``launch_error_file``, reported by /health) until a
        launch succeeds, so that ``hotpod check`` can report it.
        """
        st = self.state
        try:
            result = await self._apply_launch(spec, emit)
            if not result.get("restarting"):  # num_proc > 1: the pod's other processes too
                await relay.launch_siblings(st, spec)
        except (LoadError, SetupError) as exc:
            st.metrics.launched("failed")
            self._keep_error(spec, exc)
            raise
        if not result.get("restarting"):  # (a successor reports how its launch went)
            st.launch_error_file.unlink(missing_ok=True)
        st.metrics.launched(
            "restarting"
            if result.get("restarting")
            else "reloaded"
            if result.get("reloaded")
            else "unchanged"
        )
        if st.loaded is not None:
            st.metrics.set_launch(st.loaded.launch_id)
        return result

    def _keep_error(self, spec: dict[str, Any], exc: LoadError | SetupError) -> None:
        error: dict[str, Any] = {
            "launch_id": spec.get("launch_id"),
            "at": time.time(),
            "type": type(exc).__name__,
            "message": str(exc),
        }
        if isinstance(exc, SetupError):
            error.update(
                phase="setup", step=exc.step, reason=exc.reason, tail=exc.tail, detail=exc.tail
            )
        else:
            error.update(phase=exc.phase, step=None, traceback=exc.tb, detail=exc.tb)
        self._write_error(error)

    def _write_error(self, error: dict[str, Any]) -> None:
        if relay.local_rank():  # (local rank 0 reports its pod's launches)
            return
        path = self.state.launch_error_file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(error))
            os.replace(tmp, path)
        except OSError:
            pass

    async def _apply_launch(
        self, spec: dict[str, Any], emit: Callable[[str], None]
    ) -> dict[str, Any]:
        st = self.state
        loop = asyncio.get_running_loop()
        world = spec.get("world_size")
        reform = False
        dist = spec.get("distribute")
        if isinstance(world, int) and world > 0:  # the pool may have been scaled since we started
            os.environ["HOTPOD_WORLD_SIZE"] = str(world)
            if isinstance(dist, dict):  # and so may the peers: WORLD_SIZE, HOTPOD_PEERS...
                rank = storeapi.own_rank(dist["peers"])
                st.rank = rank
                os.environ["HOTPOD_RANK"] = str(rank)
                env = worker_env(
                    dist["kind"],
                    rank=rank,
                    world_size=world,
                    peers=dist["peers"],
                    port=dist.get("port"),
                    num_proc=int(dist.get("num_proc") or os.environ.get("HOTPOD_NUM_PROC") or 1),
                    local_rank=relay.local_rank(),
                )
                before = dict(os.environ)
                reform = formation(before) != formation(env) and (
                    dist["kind"] in _REFORMED or before.get("HOTPOD_DISTRIBUTE") in _REFORMED
                )
                for name in DISTRIBUTION_ENV - env.keys():  # another kind's, from before
                    os.environ.pop(name, None)
                os.environ.update(env)
        await self._ray_node(dist, emit)
        async with st.launch_lock:
            if reform and st.loaded is not None and st.request_restart is not None:
                self._persist(spec, st.next_launch_file)  # the fresh worker loads this launch
                self._replace_after_answer = True
                return {"reloaded": True, "restarting": True, "reformed": True}
            current = st.loaded
            dead_app = (  # an app that exited since: the same launch starts it again
                current is not None and current.kind == "app" and current.obj.returncode is not None
            )
            if current is not None and current.key == reload_key(spec) and not dead_app:
                current.spec = spec  # same code, same init: keep the instance, adopt the new id
                self._persist(spec)
                return {"reloaded": False, "restarting": False}
            setup = Setup(st.root, st.store, st.venv, emit, st.metrics.setup_step)
            image = spec.get("image") or {"image_id": None, "steps": []}
            outcome = await loop.run_in_executor(None, setup.run, image, {})
            done = {"ran": outcome.ran, "skipped": outcome.skipped, "reported": outcome.reported}
            if spec.get("kind") == "app":  # (a new process: no worker restart needed)
                return {**await self._launch_app(spec, current, outcome.workdir), **done}
            if outcome.restart and st.request_restart is not None:
                self._persist(spec, st.next_launch_file)  # the successor loads this launch
                st.request_restart()
                return {"reloaded": True, "restarting": True, **done}
            loaded = await loop.run_in_executor(
                None,
                partial(load, spec, st.store, st.code_dir, current, outcome.paths, outcome.workdir),
            )
            st.loaded = loaded
            await self.apps.stop()  # (the service was an app before)
            st.ready.set()
            self._persist(spec)
            st.launch_error_file.unlink(missing_ok=True)
            print(f"hotpod: serving launch {spec.get('launch_id')}", flush=True)
            return {"reloaded": True, "restarting": False, **done}

    async def _ray_node(self, dist: Any, emit: Callable[[str], None]) -> None:
        """Start (or re-form) the pod's Ray node for a ``"ray"`` pool; stop it for another."""
        from hotpod.runtime import raynode

        root = self.state.root
        loop = asyncio.get_running_loop()
        if os.environ.get("HOTPOD_RAY_ROLE"):  # a KubeRay pod: its command started Ray already
            return
        if isinstance(dist, dict) and dist.get("kind") == "ray":
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            try:
                await loop.run_in_executor(None, raynode.ensure, root, dict(os.environ), emit)
            except raynode.RayNodeError as exc:
                raise LoadError("ray", str(exc), exc.tail) from None
        elif raynode.running(root):
            await loop.run_in_executor(None, raynode.stop, root)

    async def _launch_app(
        self, spec: dict[str, Any], current: Loaded | None, workdir: Path | None
    ) -> dict[str, Any]:
        """Bring the code tree up to date and (re)start the launch's app (see ``apps``)."""
        st = self.state
        loop = asyncio.get_running_loop()
        code = spec.get("code") or {}
        manifest = code.get("manifest")
        previous = (current.spec.get("code") or {}).get("manifest") if current else None
        snapshot: Path | None = None
        if manifest:
            snapshot = st.code_dir / "current"
            try:
                await loop.run_in_executor(None, st.store.update_tree, manifest, snapshot)
            except Exception as exc:
                raise LoadError("sync", f"could not unpack the code: {exc}") from None
        paths = code.get("paths") or [""]
        cwd = workdir or (snapshot / paths[0] if snapshot is not None else st.root)
        python = sys.executable
        if st.venv is not None and (st.venv / "bin" / "python").exists():
            python = str(st.venv / "bin" / "python")
        try:
            app = await self.apps.replace(
                spec["app"], cwd, spec.get("env") or {}, python, float(spec.get("timeout") or 300)
            )
        except AppError as exc:
            if snapshot is not None and previous and previous != manifest:
                with contextlib.suppress(Exception):  # the running app's files come back
                    await loop.run_in_executor(None, st.store.update_tree, previous, snapshot)
            tail = exc.tail or "(no output)"
            raise LoadError("app", f"{exc}; its output ends with:\n{tail}") from None
        st.loaded = Loaded(spec=spec, obj=app, snapshot=snapshot)
        st.ready.set()
        self._persist(spec)
        st.launch_error_file.unlink(missing_ok=True)
        print(f"hotpod: serving launch {spec.get('launch_id')} (app pid {app.pid})", flush=True)
        return {"reloaded": True, "restarting": False, "app_pid": app.pid, "app_port": app.port}

    def _persist(self, spec: dict[str, Any], path: Path | None = None) -> None:
        if relay.local_rank():  # (the pod's files are local rank 0's)
            return
        path = path or self.state.launch_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(spec))
        os.replace(tmp, path)
