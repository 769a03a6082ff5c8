"""The app of a pod: an arbitrary process (``kt.app(command)``) run beside the pod's server.

A launch of kind ``"app"`` carries::

    "app": {"command": ["python", "-m", "uvicorn", ...] | "shell string",
            "port": 8000 | None, "health": "/health" | None},
    "timeout": 300   # seconds the app has to answer

The worker starts the command as a child process in the pod's process group (so tearing the pod
down ends it too), in the code tree's directory of the file that called ``kt.app``, with the
pod's environment plus ``HOTPOD_APP_PORT`` and ``PORT``: ``port`` when one was given, else a free
port the pod picked. Its stdout and stderr go to the pod log line by line, tagged like the pod's
other lines. The launch succeeds once the port accepts a connection (or ``GET health`` answers
2xx); if the process exits first, or the timeout passes, the launch fails with the tail of its
output. With a port picked by the pod a redeploy starts the new process before it stops the old
one, so a failed redeploy leaves the old one serving; with a fixed port the old one stops first.

An app that exits on its own is started again, on the same port, after a back-off that doubles
from ``RESTART_MIN`` to ``RESTART_MAX`` (back to the start once it ran ``STABLE_AFTER``), each
exit and restart a line in the pod log. Meanwhile requests get ``503`` at once, saying so.

``/app/{path}`` on the pod's server is proxied to the app (``AppRunner.proxy``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from hotpod import loglines
from hotpod._ports import free_port
from hotpod.runtime.asgi import HTTPError, Receive, Scope, Send, _read_body

#: seconds a stopped app has between SIGTERM and SIGKILL
STOP_GRACE = 5.0
#: lines of the app's output kept for error messages
TAIL_LINES = 40
#: the back-off before an app that exited on its own is started again (doubling each time)
RESTART_MIN = 0.2
RESTART_MAX = 30.0
#: an app that ran this long before it exited is restarted after RESTART_MIN again
STABLE_AFTER = 60.0
#: the header of the pod's own answer while its app is down (``RemoteApp`` raises for it)
HEADER_APP_DOWN = "x-hotpod-app-down"
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_PYTHONS = ("python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}")


class AppError(Exception):
    """The app did not come up; ``tail`` is the end of its output."""

    def __init__(self, message: str, tail: str) -> None:
        super().__init__(message)
        self.tail = tail


def check_app_spec(app: Any) -> None:
    """Check the ``app`` object of a launch spec; raises ValueError naming what is wrong."""
    if not isinstance(app, dict):
        raise ValueError("a launch of kind 'app' needs an 'app' object")
    command = app.get("command")
    if isinstance(command, str):
        if not command.strip():
            raise ValueError("'app.command' is empty")
    elif not (isinstance(command, list) and command and all(isinstance(a, str) for a in command)):
        raise ValueError("'app.command' must be a non-empty string or list of strings")
    port = app.get("port")
    if port is not None and not (isinstance(port, int) and 0 < port < 65536):
        raise ValueError(f"'app.port' is {port!r}: expected null or a port number 1-65535")
    health = app.get("health")
    if health is not None and not (isinstance(health, str) and health.startswith("/")):
        raise ValueError(f"'app.health' is {health!r}: expected null or a path like '/health'")


def argv_of(command: str | list[str], python: str) -> list[str]:
    """The argv to run: a string runs under ``/bin/sh -c``; a list as it is, with a leading
    ``python`` made the pod's own interpreter (the one with the service's packages)."""
    if isinstance(command, str):
        return ["/bin/sh", "-c", command]
    if command[0] in _PYTHONS:
        return [python, *command[1:]]
    return list(command)


def app_env(
    base: Mapping[str, str], extra: Mapping[str, Any], port: int, bin_dir: str, cwd: str
) -> dict[str, str]:
    """The app's environment: the pod's, the launch's ``env``, the port, and the pod's Python
    first on PATH (so ``python`` in a shell command is the pod's) and the cwd on PYTHONPATH."""
    env = {k: v for k, v in base.items() if k != "HOTPOD_TOKEN"}
    env.update({k: str(v) for k, v in extra.items()})
    env["HOTPOD_APP_PORT"] = env["PORT"] = str(port)
    env["PYTHONUNBUFFERED"] = "1"
    path = env.get("PATH", "")
    if not path.startswith(bin_dir + os.pathsep):
        env["PATH"] = bin_dir + os.pathsep + path if path else bin_dir
    pythonpath = env.get("PYTHONPATH")
    env["PYTHONPATH"] = cwd + (os.pathsep + pythonpath if pythonpath else "")
    return env


class AppProcess:
    """One app (its command, port, environment) and its running process, with the task that
    copies its output to the pod log; ``respawn`` starts the same command again."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        port: int,
        health: str | None,
        how: tuple[list[str], Path, dict[str, str], TextIO, str],
    ) -> None:
        self.proc = proc
        self.port = port
        self.health = health
        self.how = how  # argv, cwd, env, pod log, log tag: what respawn needs
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._pump: asyncio.Task[None] | None = None
        self.ready = False  # it answered since it (re)started
        self.started = time.monotonic()
        self.restarts = 0
        self.consecutive = 0  # exits in a row that came before it ran STABLE_AFTER
        self.last_exit: int | None = None
        self.restart_at: float | None = None  # (epoch) when it is started again

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    @classmethod
    async def start(
        cls,
        argv: list[str],
        cwd: Path,
        env: dict[str, str],
        port: int,
        health: str | None,
        pod_log: TextIO,
        tag: str,
    ) -> AppProcess:
        how = (argv, cwd, env, pod_log, tag)
        app = cls(await _spawn(argv, cwd, env), port, health, how)
        app._pump = asyncio.get_running_loop().create_task(app._copy_output(pod_log, tag))
        return app

    async def respawn(self) -> None:
        """Start the same command again (the previous process has exited)."""
        argv, cwd, env, pod_log, tag = self.how
        self.proc = await _spawn(argv, cwd, env)
        self.ready, self.started = False, time.monotonic()
        self._pump = asyncio.get_running_loop().create_task(self._copy_output(pod_log, tag))

    async def _copy_output(self, pod_log: TextIO, tag: str) -> None:
        stream = self.proc.stdout
        assert stream is not None
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than the limit: take what there is
                raw = await stream.read(1 << 20)
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.tail.append(line)
            try:
                pod_log.write(loglines.timestamp() + tag + line + "\n")
                pod_log.flush()
            except (OSError, ValueError):
                pass

    def output(self) -> str:
        return "\n".join(self.tail)

    async def wait_ready(self, timeout: float) -> None:
        """Until the app answers on its port (or its health path answers 2xx)."""
        import httpx

        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if self.returncode is not None:
                    await self._drain()
                    raise AppError(
                        f"the app exited with code {self.returncode} before it answered on "
                        f"port {self.port}",
                        self.output(),
                    )
                if await self._answers(client):
                    self.ready = True
                    return
                if time.monotonic() > deadline:
                    what = f"GET {self.health} answered 2xx" if self.health else "it accepted"
                    raise AppError(
                        f"the app did not answer on port {self.port} within {timeout:g} s "
                        f"(waited until {what}); is it listening on $HOTPOD_APP_PORT?",
                        self.output(),
                    )
                await asyncio.sleep(0.05)

    async def _answers(self, client: Any) -> bool:
        import httpx

        if self.health is None:
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), 2.0
                )
            except (OSError, asyncio.TimeoutError):
                return False
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
        try:
            r = await client.get(f"http://127.0.0.1:{self.port}{self.health}")
        except httpx.HTTPError:
            return False
        return 200 <= r.status_code < 300

    async def _drain(self) -> None:
        if self._pump is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._pump), 2.0)

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM to the process and its descendants, SIGKILL to what is left after ``grace``."""
        if self.returncode is None:
            loop = asyncio.get_running_loop()
            children = await loop.run_in_executor(None, _descendants, self.pid)
            _signal(self.pid, signal.SIGTERM)
            for child in children:
                with contextlib.suppress(Exception):
                    child.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except asyncio.TimeoutError:
                _signal(self.pid, signal.SIGKILL)
                await self.proc.wait()
            await loop.run_in_executor(None, _reap, children, grace)
        await self._drain()


async def _spawn(argv: list[str], cwd: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            cwd=str(cwd),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            limit=1 << 20,
        )
    except OSError as exc:
        raise AppError(f"could not start the app {argv!r}: {exc}", "") from None


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _descendants(pid: int) -> list[Any]:
    import psutil

    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def _reap(procs: list[Any], grace: float) -> None:
    """Wait for processes that are not our children; SIGKILL those still there after ``grace``."""
    import psutil

    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def _kill_leftovers(pidfile: Path) -> None:
    """End the processes a previous worker of this pod started (it was killed, not stopped)."""
    import psutil

    try:
        entries = json.loads(pidfile.read_text())
    except (OSError, ValueError):
        return
    procs = []
    for entry in entries if isinstance(entries, list) else []:
        try:
            p = psutil.Process(int(entry["pid"]))
            if abs(p.create_time() - float(entry["created"])) < 0.01:
                procs.extend([p, *p.children(recursive=True)])
        except (psutil.Error, KeyError, TypeError, ValueError):
            continue
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _reap(procs, STOP_GRACE)


class AppRunner:
    """The app of one pod's worker: starting, replacing, stopping it, and proxying to it."""

    def __init__(self, root: Path, pod: str, rank: int, pod_log: TextIO) -> None:
        self.pidfile = root / ".hotpod" / "app.pids"
        self.tag = loglines.tag(pod, rank)
        self.pod = pod
        self.pod_log = pod_log
        self.service = os.environ.get("HOTPOD_SERVICE") or pod
        self.current: AppProcess | None = None
        self._cleaned = False
        self._client: Any = None  # an httpx.AsyncClient, made by the first proxied request
        self._watch: asyncio.Task[None] | None = None  # restarts the current app when it exits
        self._timeout = 300.0  # how long a (re)started app has to answer

    async def replace(
        self,
        app: dict[str, Any],
        cwd: Path,
        env: Mapping[str, Any],
        python: str,
        timeout: float,
    ) -> AppProcess:
        """Start the launch's app (``env``: the launch's variables, over the pod's) and make it
        current once it answers; stop the previous one. Raises AppError (the previous app still
        serves unless its fixed port had to be freed)."""
        loop = asyncio.get_running_loop()
        if not self._cleaned:
            await loop.run_in_executor(None, _kill_leftovers, self.pidfile)
            self._cleaned = True
        port = app.get("port")
        if port is not None and self.current is not None:
            await self.stop()  # the fixed port must be free for the new process
        port = port or free_port()
        argv = argv_of(app["command"], python)
        full_env = app_env(os.environ, env, port, str(Path(python).parent), str(cwd))
        self._write_pids(extra=None)
        new = await AppProcess.start(
            argv, cwd, full_env, port, app.get("health"), self.pod_log, self.tag
        )
        self._write_pids(extra=new)
        try:
            await new.wait_ready(timeout)
        except BaseException:
            await new.stop(grace=1.0)
            self._write_pids(extra=None)
            raise
        await self._unwatch()
        old, self.current = self.current, new
        self._timeout = timeout
        self._watch = asyncio.get_running_loop().create_task(self._supervise(new))
        if old is not None:
            await old.stop()
        self._write_pids(extra=None)
        return new

    async def _unwatch(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    async def _supervise(self, app: AppProcess) -> None:
        """Start the app again each time it exits on its own, after a back-off."""
        while True:
            code = await app.proc.wait()
            await app._drain()
            app.ready = False
            ran = time.monotonic() - app.started
            app.consecutive = 1 if ran > STABLE_AFTER else app.consecutive + 1
            delay = min(RESTART_MIN * 2 ** (app.consecutive - 1), RESTART_MAX)
            app.restarts += 1
            app.last_exit = code
            app.restart_at = time.time() + delay
            self._write_pids(extra=None)
            self._log(
                f"the app exited with code {code}; starting it again in {delay:.1f} s "
                f"(restart {app.restarts})"
            )
            await asyncio.sleep(delay)
            app.restart_at = None
            try:
                await app.respawn()
                self._write_pids(extra=None)
                await app.wait_ready(self._timeout)
            except AppError as exc:
                self._log(f"the app did not come back: {exc}")
                if app.returncode is None:  # running but not answering: try again afresh
                    await app.stop(grace=1.0)
                continue
            self._log(f"the app is back (pid {app.pid}, restart {app.restarts})")

    def _log(self, text: str) -> None:
        try:
            self.pod_log.write(loglines.timestamp() + self.tag + "hotpod-app: " + text + "\n")
            self.pod_log.flush()
        except (OSError, ValueError):
            pass

    def state(self) -> dict[str, Any] | None:
        """The app as ``hotpod describe`` and ``check`` show it; None when there is none."""
        app = self.current
        if app is None:
            return None
        restart_in = app.restart_at - time.time() if app.restart_at is not None else None
        running = app.returncode is None  # (an exit shows here before its watcher has run)
        return {
            "pid": app.pid if running else None,
            "port": app.port,
            "running": running,
            "ready": app.ready and running,
            "restarts": app.restarts,
            "last_exit": app.last_exit if running else app.returncode,
            "restart_in": round(max(restart_in, 0.0), 2) if restart_in is not None else None,
        }

    def _down(self, app: AppProcess) -> str:
        """Why requests for a down app are refused, for the caller."""
        if app.returncode is not None:
            when = (
                f"the pod starts it again in {max(app.restart_at - time.time(), 0):.1f} s"
                if app.restart_at is not None
                else "the pod is starting it again"
            )
        else:
            when = "the pod started it again and waits for it to answer"
        code = app.last_exit if app.last_exit is not None else app.returncode
        return (
            f"the app {self.service!r} on pod {self.pod} is not running: it exited with code "
            f"{code} (restart {app.restarts}); {when}. 'hotpod logs {self.service} "
            f"--pod {self.pod}' shows its output"
        )

    async def stop(self) -> None:
        await self._unwatch()
        app, self.current = self.current, None
        if app is not None:
            await app.stop()
        self._write_pids(extra=None)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _write_pids(self, extra: AppProcess | None) -> None:
        import psutil

        entries = []
        for app in (self.current, extra):
            if app is None or app.returncode is not None:
                continue
            with contextlib.suppress(psutil.Error):
                entries.append({"pid": app.pid, "created": psutil.Process(app.pid).create_time()})
        try:
            self.pidfile.parent.mkdir(parents=True, exist_ok=True)
            if entries:
                self.pidfile.write_text(json.dumps(entries))
            else:
                self.pidfile.unlink(missing_ok=True)
        except OSError:
            pass

    async def proxy(self, scope: Scope, receive: Receive, send: Send, max_body: int) -> None:
        """Forward a request for ``/app/{path}`` to the app and stream its answer back."""
        import httpx

        app = self.current
        if app is None:
            raise HTTPError(503, "this pod runs no app; deploy one with kt.app(command).to()")
        if not app.ready or app.returncode is not None:  # it exited: the pod restarts it
            body = json.dumps({"error": self._down(app), "pod": self.pod}).encode()
            headers = [(b"content-type", b"application/json"), (HEADER_APP_DOWN.encode(), b"1")]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        raw: bytes = scope.get("raw_path") or scope["path"].encode()
        path = raw[len(b"/app") :] or b"/"
        query: bytes = scope.get("query_string") or b""
        url = f"http://127.0.0.1:{app.port}{path.decode('latin-1')}"
        if query:
            url += "?" + query.decode("latin-1")
        skip = _HOP_BY_HOP | {b"host", b"authorization", b"content-length"}
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in skip]
        body = await _read_body(scope, receive, max_body)
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(10.0, read=None, write=None, pool=None)
            )
        request = self._client.build_request(scope["method"], url, headers=headers, content=body)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            state = (
                f"it exited with code {app.returncode}"
                if app.returncode is not None
                else "it is running"
            )
            raise HTTPError(
                502,
                f"the app on pod {self.pod} did not answer on port {app.port} ({state}): "
                f"{type(exc).__name__}: {exc}",
            ) from None
        try:
            out_headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP]
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": out_headers,
                }
            )
            try:
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except httpx.HTTPError:  # the app broke off: end what was sent
                pass
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()
