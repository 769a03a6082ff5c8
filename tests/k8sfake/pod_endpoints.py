"""The API server's pod endpoints kmock lacks: container logs and the pod/service proxy.

``GET .../pods/NAME/log`` reads the container's log file (``tailLines``, ``limitBytes``,
``previous``, ``container``, ``follow`` until the container stops). ``.../pods/NAME[:PORT]/proxy/
PATH`` and ``.../services/NAME[:PORT]/proxy/PATH`` forward any method to the pod's IP, streaming
the answer back as it comes. As the real API server does after authenticating a request, the
proxy drops the ``Authorization`` header: a pod behind it never sees the caller's token.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING, Any

import aiohttp
import aiohttp.web

from .objects import ApiError, matches_labels

if TYPE_CHECKING:
    from .api import FakeApiServer, Target

#: Headers that are about one hop, not the request (RFC 9110 7.6.1), plus the caller's token.
_HOP = {
    "authorization",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
_round_robin = itertools.count()


async def serve(
    server: FakeApiServer, t: Target, raw: aiohttp.web.BaseRequest
) -> aiohttp.web.StreamResponse:
    assert t.name is not None and t.subresource is not None
    if t.subresource == "log":
        if raw.method != "GET":
            raise ApiError(405, "MethodNotAllowed", "use GET for pod logs")
        return await _logs(server, t.namespace or "default", t.name, raw)
    rest = t.subresource[len("proxy") :]
    path = rest or "/"
    name, _, port = t.name.rpartition(":") if ":" in t.name else (t.name, "", "")
    if name.startswith(("http:", "https:")):
        name = name.split(":", 1)[1]
    ns = t.namespace or "default"
    if t.kind.plural == "pods":
        ip, target_port = _pod_address(server, ns, name, port)
    else:
        ip, target_port = _service_address(server, ns, name, port)
    return await _forward(raw, f"http://{ip}:{target_port}", path)


# -- logs --------------------------------------------------------------------------------------


async def _logs(
    server: FakeApiServer, ns: str, pod: str, raw: aiohttp.web.BaseRequest
) -> aiohttp.web.StreamResponse:
    q = raw.query
    container = q.get("container")
    previous = q.get("previous") in ("true", "1")
    follow = q.get("follow") in ("true", "1")
    path, container = server.kubelet.log_path(ns, pod, container, previous)
    data = path.read_bytes() if path.exists() else b""
    if q.get("tailLines"):
        n = int(q["tailLines"])
        data = b"".join(data.splitlines(keepends=True)[-n:]) if n > 0 else b""
    limit = int(q["limitBytes"]) if q.get("limitBytes") else None
    if limit is not None:
        data = data[:limit]
    if not follow or previous:
        return aiohttp.web.Response(body=data, content_type="text/plain")
    resp = aiohttp.web.StreamResponse(status=200)
    resp.content_type = "text/plain"
    resp.enable_chunked_encoding()
    await resp.prepare(raw)
    await resp.write(data)
    sent = len(data)
    offset = path.stat().st_size if path.exists() else 0
    try:
        while not server.closing:
            size = path.stat().st_size if path.exists() else 0
            if size > offset:
                with path.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read(size - offset)
                offset = size
                if limit is not None:
                    chunk = chunk[: max(0, limit - sent)]
                if chunk:
                    await resp.write(chunk)
                    sent += len(chunk)
                continue
            if not server.kubelet.is_running(ns, pod, container) or (
                limit is not None and sent >= limit
            ):
                break
            await asyncio.sleep(0.05)
        await resp.write_eof()
    except ConnectionResetError:
        pass
    return resp


# -- proxy -------------------------------------------------------------------------------------


def _container_port(pod: dict[str, Any], port: str) -> int | None:
    if port.isdigit():
        return int(port)
    for c in pod["spec"].get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
    return None


def _pod_address(server: FakeApiServer, ns: str, name: str, port: str) -> tuple[str, int]:
    pod = server.store.read(server.kind("", "pods"), ns, name)
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        raise ApiError(
            503, "ServiceUnavailable", f'pod "{name}" has no IP address yet (it is not running)'
        )
    number = _container_port(pod, port or "80")
    if number is None:
        raise ApiError(503, "ServiceUnavailable", f'pod "{name}" has no port named "{port}"')
    return ip, number


def _ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _service_address(server: FakeApiServer, ns: str, name: str, port: str) -> tuple[str, int]:
    svc = server.store.read(server.kind("", "services"), ns, name)
    spec = svc.get("spec") or {}
    ports = spec.get("ports") or []
    chosen = None
    for p in ports:
        if not port or p.get("name") == port or str(p.get("port")) == port:
            chosen = p
            break
    if chosen is None:
        raise ApiError(503, "ServiceUnavailable", f'service "{name}" has no port "{port}"')
    selector = [(k, "=", {v}) for k, v in (spec.get("selector") or {}).items()]
    pods = [
        p
        for p in server.store.select(server.kind("", "pods"), ns)
        if selector and matches_labels(p["metadata"].get("labels") or {}, selector) and _ready(p)
    ]
    if not pods:
        raise ApiError(503, "ServiceUnavailable", f'no endpoints available for service "{name}"')
    pod = pods[next(_round_robin) % len(pods)]
    number = _container_port(pod, str(chosen.get("targetPort", chosen.get("port"))))
    if number is None:
        raise ApiError(503, "ServiceUnavailable", f'service "{name}": no such target port')
    return pod["status"]["podIP"], number


async def _forward(
    raw: aiohttp.web.BaseRequest, base: str, path: str
) -> aiohttp.web.StreamResponse:
    headers = {k: v for k, v in raw.headers.items() if k.lower() not in _HOP}
    headers["X-Forwarded-For"] = raw.remote or "127.0.0.1"
    body = await raw.read()
    url = base + path + (f"?{raw.rel_url.raw_query_string}" if raw.rel_url.raw_query_string else "")
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        try:
            upstream = await session.request(
                raw.method, url, headers=headers, data=body or None, allow_redirects=False
            )
        except aiohttp.ClientConnectionError as e:
            raise ApiError(
                503,
                "ServiceUnavailable",
                f"error trying to reach service: dial tcp {base[len('http://') :]}: {e}",
            ) from None
        async with upstream:
            resp = aiohttp.web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() not in _HOP:
                    resp.headers.add(k, v)
            resp.enable_chunked_encoding()
            await resp.prepare(raw)
            try:
                async for chunk in upstream.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
            except (ConnectionResetError, aiohttp.ClientPayloadError):
                pass
            return resp
