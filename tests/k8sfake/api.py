"""The fake API server: kmock's scaffold (HTTP server, discovery, resource catalogue) with the
stateful part of the API written here, over :class:`~k8sfake.store.Store`.

kmock 0.8's own emulator lacks too much for a backend's real code path (namespaces on create,
uid/resourceVersion/generation, 201, watch timeouts and resourceVersions, label selectors, PUT,
strategic merge, apply, deletecollection, garbage collection), so the resource paths are served
by this class and only discovery (``/api``, ``/apis``, ``/version``...) goes to kmock.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml

from . import pod_endpoints
from .objects import ApiError, matches_fields, matches_labels, parse_label_selector
from .store import Kind, Store

#: Paths served without a token, as a cluster's default RBAC allows anonymous users.
_PUBLIC = ("/version", "/healthz", "/livez", "/readyz")
#: How many requests kmock's history keeps (it re-filters the whole history on every request).
_KEEP_REQUESTS = 50

_CORE = re.compile(r"^/api/(?P<version>[^/]+)/(?P<rest>.+)$")
_GROUP = re.compile(r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/(?P<rest>.+)$")


@attrs.frozen
class Target:
    kind: Kind
    namespace: str | None
    name: str | None
    subresource: str | None


def _json(obj: Any, status: int = 200) -> aiohttp.web.Response:
    return aiohttp.web.Response(
        body=json.dumps(obj).encode(), status=status, content_type="application/json"
    )


def _status_ok(kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {
            "name": obj["metadata"]["name"],
            "group": kind.group,
            "kind": kind.plural,
            "uid": obj["metadata"]["uid"],
        },
    }


@attrs.define(kw_only=True)
class FakeApiServer(kmock.KubernetesScaffold):
    """Serve the Kubernetes API from a :class:`Store`; see the module docstring."""

    token: str = ""
    store: Store = attrs.field(factory=Store)
    #: the kubelet side of the pod endpoints (log files, pod addresses); set by the cluster
    kubelet: Any = None
    #: unexpected exceptions in handlers (a bug in the fake, or a request it cannot serve)
    failures: list[str] = attrs.field(factory=list)
    _kinds: dict[tuple[str, str, str], Kind] = attrs.field(factory=dict)
    _active: set[asyncio.Task[Any]] = attrs.field(factory=set)
    closing: bool = False

    # -- resource catalogue --------------------------------------------------------------------

    def refresh_kinds(self) -> None:
        """Rebuild the table of served kinds from kmock's ``resources`` (after declaring more)."""
        self._kinds.clear()
        for res in self.resources:
            info = self.resources[res]
            if res.plural is None or res.version is None or res.group is None:
                continue
            if "/" in res.plural or res.group == "metrics.k8s.io":
                continue
            self._kinds[(res.group, res.version, res.plural)] = Kind(
                group=res.group,
                version=res.version,
                plural=res.plural,
                kind=info.kind or res.plural.capitalize(),
                namespaced=bool(info.namespaced),
                status_subresource="status" in info.subresources,
            )

    def kind(self, group: str, plural: str, version: str | None = None) -> Kind:
        for (g, v, p), kind in self._kinds.items():
            if g == group and p == plural and (version is None or v == version):
                return kind
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    def all_kinds(self) -> list[Kind]:
        seen: dict[tuple[str, str], Kind] = {}
        for kind in self._kinds.values():
            seen.setdefault((kind.group, kind.plural), kind)
        return list(seen.values())

    def _target(self, path: str) -> Target | None:
        m = _CORE.match(path)
        group = ""
        if m is None:
            m = _GROUP.match(path)
            if m is None:
                return None
            group = m.group("group")
        version = m.group("version")
        segs = m.group("rest").split("/")
        namespace: str | None = None
        if segs[0] == "namespaces" and len(segs) >= 3:
            try:
                if self.kind(group, segs[2], version).namespaced:
                    namespace, segs = segs[1], segs[2:]
            except ApiError:
                pass
        try:
            kind = self.kind(group, segs[0], version)
        except ApiError:
            if len(segs) == 1 and not group:
                return None  # e.g. /api/v1/foo: let kmock answer
            raise
        name = segs[1] if len(segs) > 1 else None
        sub = "/".join(segs[2:]) or None
        return Target(kind, namespace, name, sub)

    # -- the HTTP entry point ------------------------------------------------------------------

    def _authorized(self, raw: aiohttp.web.BaseRequest) -> bool:
        if not self.token:
            return True
        scheme, _, token = raw.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip(), self.token)

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._active.add(task)
        try:
            path = raw.path
            if len(path) > 1 and path.endswith("/") and "/proxy/" not in path:
                path = path.rstrip("/")
                raw = raw.clone(rel_url=raw.rel_url.with_path(path))
            if path not in _PUBLIC and not self._authorized(raw):
                return _json(ApiError(401, "Unauthorized", "Unauthorized").status(), 401)
            target = self._target(path)
            if target is None:
                return await super().__call__(raw)
            return await self._serve(target, raw)
        except ApiError as e:
            return _json(e.status(), e.code)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as e:
            self.failures.append(f"{raw.method} {raw.path_qs}: {e!r}")
            return _json(
                ApiError(500, "InternalError", f"the fake API failed: {e!r}").status(), 500
            )
        finally:
            if task is not None:
                self._active.discard(task)
            if len(self._requests) > _KEEP_REQUESTS:
                del self._requests[: len(self._requests) - _KEEP_REQUESTS]

    async def cancel_requests(self) -> None:
        """End every open request (watches, log follows, proxied streams) before closing."""
        self.closing = True
        self.store.changed().set()
        for task in list(self._active):
            task.cancel()
        await asyncio.sleep(0)

    # -- resource requests ---------------------------------------------------------------------

    async def _body(self, raw: aiohttp.web.BaseRequest) -> Any:
        data = await raw.read()
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError:
            pass
        try:
            return yaml.safe_load(data)
        except yaml.YAMLError as e:
            raise ApiError(
                400, "BadRequest", f"the request body is neither JSON nor YAML: {e}"
            ) from None

    async def _serve(self, t: Target, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        method, q, store, kind = raw.method, raw.query, self.store, t.kind
        ns = t.namespace
        writes = method in ("POST", "PUT", "PATCH")
        if (
            kind.namespaced
            and ns
            and writes
            and store.get(self.kind("", "namespaces"), None, ns) is None
        ):
            raise ApiError(404, "NotFound", f'namespaces "{ns}" not found')
        sub = t.subresource
        if (
            sub
            and t.name
            and t.kind.plural in ("pods", "services")
            and (sub == "proxy" or sub.startswith("proxy/") or sub == "log")
        ):
            return await pod_endpoints.serve(self, t, raw)
        if sub not in (None, "status", "scale", "eviction"):
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource ({sub})"
            )
        if method == "GET" and (q.get("watch") in ("true", "1")):
            return await self._watch(t, raw)
        if method == "GET" and t.name is None:
            items = store.select(kind, ns, q.get("labelSelector"), q.get("fieldSelector"))
            return _json(
                {
                    "kind": f"{kind.kind}List",
                    "apiVersion": kind.api_version,
                    "metadata": {"resourceVersion": str(store.rv)},
                    "items": items,
                }
            )
        if method == "GET":
            assert t.name is not None
            obj = store.read(kind, ns, t.name)
            return _json(_scale(obj) if sub == "scale" else obj)
        if method == "POST" and t.name is None:
            return _json(store.create(kind, ns, await self._body(raw)), 201)
        if method == "POST" and sub == "eviction" and kind.plural == "pods":
            assert t.name is not None
            store.delete(kind, ns, t.name, kinds=self.all_kinds)
            return _json({"kind": "Status", "apiVersion": "v1", "status": "Success"}, 201)
        if method == "DELETE" and t.name is None:
            return await self._delete_collection(t, raw)
        if t.name is None:
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on a collection")
        body = await self._body(raw)
        if sub == "scale" and method in ("PUT", "PATCH"):
            obj = store.patch(kind, ns, t.name, _unscale(body), "merge-patch")
            return _json(_scale(obj))
        if method == "PUT":
            return _json(store.replace(kind, ns, t.name, body, subresource=sub))
        if method == "PATCH":
            ctype = raw.headers.get("Content-Type", "application/merge-patch+json")
            if "apply-patch" in ctype:
                obj, created = store.apply(kind, ns, t.name, body)
                return _json(obj, 201 if created else 200)
            return _json(store.patch(kind, ns, t.name, body, ctype, subresource=sub))
        if method == "DELETE":
            opts = body if isinstance(body, dict) else {}
            grace = opts.get("gracePeriodSeconds", q.get("gracePeriodSeconds"))
            obj = store.delete(
                kind,
                ns,
                t.name,
                propagation=opts.get("propagationPolicy") or q.get("propagationPolicy"),
                grace_seconds=None if grace is None else int(grace),
                kinds=self.all_kinds,
            )
            if store.get(kind, ns, t.name) is None:
                return _json(_status_ok(kind, obj))
            return _json(obj)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")

    async def _delete_collection(
        self, t: Target, raw: aiohttp.web.BaseRequest
    ) -> aiohttp.web.StreamResponse:
        q = self.store
        body = await self._body(raw)
        opts = body if isinstance(body, dict) else {}
        items = list(
            q.select(
                t.kind, t.namespace, raw.query.get("labelSelector"), raw.query.get("fieldSelector")
            )
        )
        for obj in items:
            meta = obj["metadata"]
            if q.get(t.kind, meta.get("namespace"), meta["name"]) is not None:
                q.delete(
                    t.kind,
                    meta.get("namespace"),
                    meta["name"],
                    propagation=opts.get("propagationPolicy") or raw.query.get("propagationPolicy"),
                    kinds=self.all_kinds,
                )
        return _json(
            {
                "kind": f"{t.kind.kind}List",
                "apiVersion": t.kind.api_version,
                "metadata": {"resourceVersion": str(q.rv)},
                "items": items,
            }
        )

    async def _watch(self, t: Target, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        q = raw.query
        store, kind = self.store, t.kind
        terms = parse_label_selector(q.get("labelSelector"))
        fields = q.get("fieldSelector") or ""
        if t.name:
            fields = ",".join(f for f in (fields, f"metadata.name={t.name}") if f)
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout

        def wanted(obj: dict[str, Any]) -> bool:
            meta = obj.get("metadata") or {}
            if kind.namespaced and t.namespace and meta.get("namespace") != t.namespace:
                return False
            return matches_labels(meta.get("labels") or {}, terms) and (
                not fields or matches_fields(obj, fields)
            )

        resp = aiohttp.web.StreamResponse(status=200)
        resp.content_type = "application/json"
        resp.enable_chunked_encoding()
        await resp.prepare(raw)

        async def write(event: dict[str, Any]) -> None:
            await resp.write(json.dumps(event).encode() + b"\n")

        rv_param = q.get("resourceVersion") or "0"
        if rv_param == "0":
            last = store.rv
            for obj in store.select(kind, t.namespace):
                if wanted(obj):
                    await write({"type": "ADDED", "object": obj})
        else:
            last = int(rv_param) if rv_param.isdigit() else store.rv
        try:
            while not self.closing:
                changed = store.changed()
                try:
                    events = store.events_since(last)
                except ApiError as e:
                    await write({"type": "ERROR", "object": e.status()})
                    break
                for ev in events:
                    last = ev.rv
                    if (ev.group, ev.plural) == (kind.group, kind.plural) and wanted(ev.obj):
                        await write({"type": ev.type, "object": ev.obj})
                wait = None if deadline is None else deadline - loop.time()
                if wait is not None and wait <= 0:
                    break
                try:
                    await asyncio.wait_for(changed.wait(), wait)
                except asyncio.TimeoutError:
                    break
            await resp.write_eof()
        except ConnectionResetError:
            pass
        return resp


def _scale(obj: dict[str, Any]) -> dict[str, Any]:
    """An ``autoscaling/v1`` Scale of a workload."""
    meta = obj["metadata"]
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in meta
        },
        "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 1)},
        "status": {"replicas": (obj.get("status") or {}).get("replicas", 0)},
    }


def _unscale(body: Any) -> Any:
    """A Scale write (PUT, or a merge or strategic patch) as a merge patch of the replicas."""
    replicas = ((body or {}).get("spec") or {}).get("replicas") if isinstance(body, dict) else None
    if replicas is None:
        raise ApiError(422, "Invalid", "a Scale needs spec.replicas")
    return {"spec": {"replicas": int(replicas)}}
