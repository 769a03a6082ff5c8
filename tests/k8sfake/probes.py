"""Readiness and liveness probes of a fake container (httpGet, tcpSocket, exec).

Readiness is probed every 0.1 s (whatever ``periodSeconds`` says: tests wait for pods to get
ready) with the probe's success and failure thresholds. Liveness keeps its real
``initialDelaySeconds`` and ``periodSeconds`` (default 10 s), so that a shortened period never
kills a slow-starting container that a cluster would leave alone; a failed liveness probe kills
the container, which then restarts. gRPC probes are not run: they count as passing.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from .container import Container

READINESS_PERIOD = 0.1


class ProbeState:
    def __init__(self, container: Container):
        self.c = container
        self.reset()

    def reset(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.next_ready = 0.0
        started = time.monotonic()
        live = self.c.spec.get("livenessProbe") or {}
        self.next_live = started + float(live.get("initialDelaySeconds", 0))
        self.ready_ok = 0
        self.ready_failed = 0
        self.live_failed = 0

    def has_readiness(self) -> bool:
        return bool(self.c.spec.get("readinessProbe"))

    def tick(self) -> None:
        if self.task is not None and not self.task.done():
            return
        t = time.monotonic()
        jobs = []
        rp, lp = self.c.spec.get("readinessProbe"), self.c.spec.get("livenessProbe")
        if rp and t >= self.next_ready:
            self.next_ready = t + READINESS_PERIOD
            jobs.append(self._readiness(rp))
        if lp and t >= self.next_live:
            self.next_live = t + float(lp.get("periodSeconds", 10))
            jobs.append(self._liveness(lp))
        if jobs:
            self.task = asyncio.get_running_loop().create_task(_all(jobs))

    async def _readiness(self, probe: dict[str, Any]) -> None:
        ok, why = await self.check(probe)
        if not self.c.running():
            return
        if ok:
            self.ready_ok += 1
            self.ready_failed = 0
            if self.ready_ok >= int(probe.get("successThreshold", 1)):
                self.c.ready = True
        else:
            self.ready_ok = 0
            self.ready_failed += 1
            if self.c.ready and self.ready_failed >= int(probe.get("failureThreshold", 3)):
                self.c.ready = False
                self.c.runner.event("Unhealthy", f"Readiness probe failed: {why}", warning=True)

    async def _liveness(self, probe: dict[str, Any]) -> None:
        ok, why = await self.check(probe)
        if ok or not self.c.running():
            self.live_failed = 0
            return
        self.live_failed += 1
        if self.live_failed >= int(probe.get("failureThreshold", 3)):
            r = self.c.runner
            r.event("Unhealthy", f"Liveness probe failed: {why}", warning=True)
            r.event(
                "Killing",
                f"Container {self.c.name} failed liveness probe, will be restarted",
            )
            self.c.signal(signal.SIGKILL)

    async def check(self, probe: dict[str, Any]) -> tuple[bool, str]:
        timeout = min(float(probe.get("timeoutSeconds", 1)), 1.0)
        ip = self.c.runner.ip
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = self._port(get.get("port"))
            url = f"http://{get.get('host') or ip}:{port}{get.get('path', '/')}"
            headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
            session = self.c.runner.kubelet.probe_session
            if session is None:
                session = self.c.runner.kubelet.probe_session = aiohttp.ClientSession()
            try:
                async with session.get(
                    url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
                ) as resp:
                    await resp.read()
                    ok = 200 <= resp.status < 400
                    return ok, f"HTTP probe failed with statuscode: {resp.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                return False, f'Get "{url}": {e or type(e).__name__}'
        if "tcpSocket" in probe:
            port = self._port(probe["tcpSocket"].get("port"))
            host = probe["tcpSocket"].get("host") or ip
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            except (OSError, asyncio.TimeoutError) as e:
                return False, f"dial tcp {host}:{port}: {e or 'timeout'}"
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True, ""
        if "exec" in probe:
            argv = list(probe["exec"].get("command") or [])
            env = dict(self.c.env)
            try:
                done = await asyncio.to_thread(
                    subprocess.run,
                    argv,
                    env=env,
                    cwd=self.c.runner.fs,
                    capture_output=True,
                    timeout=max(timeout, 1.0),
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as e:
                return False, str(e)
            return done.returncode == 0, done.stdout.decode(errors="replace")[-200:]
        return True, ""  # grpc: not run

    def _port(self, port: Any) -> int:
        if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
            return int(port)
        for p in self.c.spec.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        return 0


async def _all(jobs: list[Any]) -> None:
    await asyncio.gather(*jobs)
