"""The fake API server's state: objects, resource versions, the event log, garbage collection.

Every method is synchronous and must run on the cluster's event loop thread (the HTTP handlers
and the controllers both do), so each write is atomic. Objects are stored as plain dicts under
``(group, plural, namespace, name)``; versions of one group share their objects.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import copy
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .objects import (
    ApiError,
    json_patch,
    matches_fields,
    matches_labels,
    merge_patch,
    now,
    parse_label_selector,
    strategic_merge_patch,
    suffix,
)

#: How many write events a watch can resume from (older resourceVersions get 410 Expired).
EVENT_LOG_SIZE = 20_000

Key = tuple[str, str, str, str]  # group, plural, namespace ("" when cluster-scoped), name


@dataclass(frozen=True)
class Kind:
    """What the store needs to know about a resource."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    status_subresource: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


@dataclass(frozen=True)
class Event:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    group: str
    plural: str
    obj: dict[str, Any]


def _not_found(kind: Kind, name: str) -> ApiError:
    res = f"{kind.plural}.{kind.group}" if kind.group else kind.plural
    return ApiError(
        404,
        "NotFound",
        f'{res} "{name}" not found',
        {"name": name, "group": kind.group, "kind": kind.plural},
    )


class Store:
    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.rv = 1
        self.log: collections.deque[Event] = collections.deque(maxlen=EVENT_LOG_SIZE)
        self._changed = asyncio.Event()
        self._next_cluster_ip = 10
        #: called with (kind, obj) after an object leaves the store
        self.on_removed: list[Callable[[Kind, dict[str, Any]], None]] = []

    # -- change notification -------------------------------------------------------------------

    def changed(self) -> asyncio.Event:
        """An event set at the next write (take it before reading, then wait on it)."""
        return self._changed

    def _emit(self, kind: Kind, type_: str, obj: dict[str, Any]) -> None:
        self.log.append(Event(self.rv, type_, kind.group, kind.plural, copy.deepcopy(obj)))
        self._changed.set()
        self._changed = asyncio.Event()

    def _bump(self, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    # -- reads ---------------------------------------------------------------------------------

    @staticmethod
    def key(kind: Kind, namespace: str | None, name: str) -> Key:
        return (kind.group, kind.plural, (namespace or "") if kind.namespaced else "", name)

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The stored object itself (do not mutate it; copy first)."""
        return self.objects.get(self.key(kind, namespace, name))

    def read(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.get(kind, namespace, name)
        if obj is None:
            raise _not_found(kind, name)
        return copy.deepcopy(obj)

    def select(
        self,
        kind: Kind,
        namespace: str | None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        terms = parse_label_selector(label_selector)
        out = []
        for (group, plural, ns, _), obj in self.objects.items():
            if (group, plural) != (kind.group, kind.plural):
                continue
            if kind.namespaced and namespace and ns != namespace:
                continue
            if not matches_labels((obj["metadata"].get("labels") or {}), terms):
                continue
            if field_selector and not matches_fields(obj, field_selector):
                continue
            out.append(obj)
        return out

    # -- writes --------------------------------------------------------------------------------

    def create(self, kind: Kind, namespace: str | None, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body is not a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        if kind.namespaced:
            if meta.get("namespace") and namespace and meta["namespace"] != namespace:
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request",
                )
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(
                    422,
                    "Invalid",
                    f"{kind.kind}.{kind.group or 'core'} is invalid: metadata.name: Required "
                    "value: name or generateName is required",
                )
            meta["name"] = meta["generateName"] + suffix()
        key = self.key(kind, meta.get("namespace"), meta["name"])
        if key in self.objects:
            res = f"{kind.plural}.{kind.group}" if kind.group else kind.plural
            raise ApiError(
                409,
                "AlreadyExists",
                f'{res} "{meta["name"]}" already exists',
                {"name": meta["name"], "group": kind.group, "kind": kind.plural},
            )
        obj["apiVersion"] = obj.get("apiVersion") or kind.api_version
        obj["kind"] = obj.get("kind") or kind.kind
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now()
        meta["generation"] = 1
        for drop in ("resourceVersion", "deletionTimestamp", "managedFields", "selfLink"):
            meta.pop(drop, None)
        if kind.status_subresource and kind.plural != "pods":
            obj.pop("status", None)
        self._defaults(kind, obj)
        self._bump(obj)
        self.objects[key] = obj
        self._emit(kind, "ADDED", obj)
        return copy.deepcopy(obj)

    def _defaults(self, kind: Kind, obj: dict[str, Any]) -> None:
        """The defaulting a real API server does that clients read back."""
        spec = obj.get("spec")
        if kind.plural == "secrets":
            data = dict(obj.get("data") or {})
            for k, v in (obj.pop("stringData", None) or {}).items():
                data[k] = base64.b64encode(str(v).encode()).decode()
            obj["data"] = data
            obj.setdefault("type", "Opaque")
        elif kind.plural == "services" and isinstance(spec, dict):
            spec.setdefault("type", "ClusterIP")
            if spec.get("clusterIP") not in ("None",):
                spec.setdefault("clusterIP", f"10.96.0.{self._next_cluster_ip}")
                self._next_cluster_ip += 1
            spec.setdefault("clusterIPs", [spec["clusterIP"]])
            for port in spec.get("ports") or []:
                port.setdefault("protocol", "TCP")
                port.setdefault("targetPort", port.get("port"))
            spec.setdefault("sessionAffinity", "None")
        elif kind.plural == "pods" and isinstance(spec, dict):
            spec.setdefault("restartPolicy", "Always")
            spec.setdefault("terminationGracePeriodSeconds", 30)
            spec.setdefault("schedulerName", "default-scheduler")
            spec.setdefault("dnsPolicy", "ClusterFirst")
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        elif kind.plural in ("deployments", "statefulsets", "replicasets") and isinstance(
            spec, dict
        ):
            spec.setdefault("replicas", 1)
            spec.setdefault("revisionHistoryLimit", 10)
            if kind.plural == "deployments":
                spec.setdefault("progressDeadlineSeconds", 600)
                spec.setdefault(
                    "strategy",
                    {
                        "type": "RollingUpdate",
                        "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
                    },
                )
            if kind.plural == "statefulsets":
                spec.setdefault("podManagementPolicy", "OrderedReady")
        elif kind.plural == "jobs" and isinstance(spec, dict):
            spec.setdefault("parallelism", 1)
            spec.setdefault("completions", 1)
            spec.setdefault("backoffLimit", 6)

    def replace(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        check_version: bool = True,
    ) -> dict[str, Any]:
        """PUT: the whole object (``subresource="status"``: only its status)."""
        old = self.get(kind, namespace, name)
        if old is None:
            raise _not_found(kind, name)
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body is not a JSON object")
        want_rv = (body.get("metadata") or {}).get("resourceVersion")
        if check_version and want_rv and want_rv != old["metadata"]["resourceVersion"]:
            res = f"{kind.plural}.{kind.group}" if kind.group else kind.plural
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {res} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                {"name": name, "group": kind.group, "kind": kind.plural},
            )
        return self._write(kind, old, copy.deepcopy(body), subresource)

    def patch(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        patch: Any,
        content_type: str,
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        old = self.get(kind, namespace, name)
        if old is None:
            raise _not_found(kind, name)
        if "json-patch" in content_type:
            new = json_patch(copy.deepcopy(old), patch)
        elif "strategic-merge-patch" in content_type:
            if kind.group not in (
                "",
                "apps",
                "batch",
                "policy",
                "autoscaling",
                "networking.k8s.io",
            ):
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types "
                    "include: application/json-patch+json, application/merge-patch+json, "
                    "application/apply-patch+yaml",
                )
            new = strategic_merge_patch(old, patch)
        elif "merge-patch" in content_type:
            new = merge_patch(old, patch)
        else:
            raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {content_type!r}")
        return self._write(kind, old, new, subresource)

    def apply(
        self, kind: Kind, namespace: str | None, name: str, body: Any
    ) -> tuple[dict[str, Any], bool]:
        """Server-side apply, simplified: create, or replace every top-level field sent other
        than metadata and status, merging the labels and annotations sent. No field managers,
        no conflicts. Returns (object, created)."""
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the apply body is not an object")
        body = copy.deepcopy(body)
        body.setdefault("metadata", {})["name"] = name
        old = self.get(kind, namespace, name)
        if old is None:
            return self.create(kind, namespace, body), True
        new = copy.deepcopy(old)
        for k, v in body.items():
            if k not in ("metadata", "status", "apiVersion", "kind"):
                new[k] = v
        for field in ("labels", "annotations"):
            if body["metadata"].get(field):
                new["metadata"].setdefault(field, {}).update(body["metadata"][field])
        return self._write(kind, old, new, None), False

    def _write(
        self, kind: Kind, old: dict[str, Any], new: dict[str, Any], subresource: str | None
    ) -> dict[str, Any]:
        meta = new.setdefault("metadata", {})
        keep = ("name", "namespace", "uid", "creationTimestamp", "generation", "deletionTimestamp")
        if subresource == "status":
            merged = copy.deepcopy(old)
            merged["status"] = new.get("status")
            new = merged
            meta = new["metadata"]
        else:
            for field in keep:
                if field in old["metadata"]:
                    meta[field] = old["metadata"][field]
                else:
                    meta.pop(field, None)
            if kind.status_subresource and "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            elif kind.status_subresource:
                new.pop("status", None)
            new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
            if kind.plural == "secrets":
                data = dict(new.get("data") or {})
                for k, v in (new.pop("stringData", None) or {}).items():
                    data[k] = base64.b64encode(str(v).encode()).decode()
                new["data"] = data
            if "spec" in old and new.get("spec") != old.get("spec"):
                meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new == old:
            return copy.deepcopy(old)  # a no-op write keeps the resourceVersion, as Kubernetes does
        self._bump(new)
        key = self.key(kind, meta.get("namespace"), meta["name"])
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(kind, key)
            return copy.deepcopy(new)
        self.objects[key] = new
        self._emit(kind, "MODIFIED", new)
        return copy.deepcopy(new)

    def delete(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        *,
        propagation: str | None = None,
        grace_seconds: int | None = None,
        kinds: Callable[[], list[Kind]] = lambda: [],
    ) -> dict[str, Any]:
        """Delete an object: pods and objects with finalizers get a ``deletionTimestamp`` (the
        kubelet removes a pod once its processes are gone); others leave at once. Dependents
        (``ownerReferences``) are deleted too, unless ``propagation`` is ``Orphan``."""
        key = self.key(kind, namespace, name)
        obj = self.objects.get(key)
        if obj is None:
            raise _not_found(kind, name)
        result = copy.deepcopy(obj)
        meta = obj["metadata"]
        if kind.plural == "pods" or meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = now()
                grace = grace_seconds
                if grace is None:
                    grace = int((obj.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
                meta["deletionGracePeriodSeconds"] = grace
                self._bump(obj)
                self._emit(kind, "MODIFIED", obj)
            result = copy.deepcopy(obj)
        else:
            self._remove(kind, key)
        self._cascade(meta["uid"], propagation or "Background", kinds())
        return result

    def remove(self, kind: Kind, namespace: str | None, name: str) -> None:
        """Take an object out at once (the kubelet, once a pod's processes are gone)."""
        key = self.key(kind, namespace, name)
        if key in self.objects:
            self._remove(kind, key)

    def _remove(self, kind: Kind, key: Key) -> None:
        obj = self.objects.pop(key)
        self._bump(obj)
        self._emit(kind, "DELETED", obj)
        for hook in self.on_removed:
            hook(kind, obj)

    def _cascade(self, owner_uid: str, propagation: str, kinds: list[Kind]) -> None:
        """The garbage collector: dependents of a deleted owner (Foreground is treated as
        Background: the owner does not wait for them)."""
        for kind in kinds:
            for obj in list(self.select(kind, None)):
                refs = obj["metadata"].get("ownerReferences") or []
                if not any(r.get("uid") == owner_uid for r in refs):
                    continue
                meta = obj["metadata"]
                if propagation == "Orphan":
                    left = [r for r in refs if r.get("uid") != owner_uid]
                    patch = {"metadata": {"ownerReferences": left or None}}
                    self.patch(kind, meta.get("namespace"), meta["name"], patch, "merge-patch")
                elif self.get(kind, meta.get("namespace"), meta["name"]) is not None:
                    self.delete(kind, meta.get("namespace"), meta["name"], kinds=lambda: kinds)

    def events_since(self, rv: int) -> list[Event]:
        """Logged events newer than ``rv``; ApiError 410 when ``rv`` is older than the log."""
        if self.log and rv < self.log[0].rv - 1:
            raise ApiError(410, "Expired", f"too old resource version: {rv} ({self.rv})")
        out = []
        for event in reversed(self.log):
            if event.rv <= rv:
                break
            out.append(event)
        out.reverse()
        return out

    def record_event(
        self,
        events: Kind,
        obj: dict[str, Any],
        reason: str,
        message: str,
        *,
        type_: str = "Normal",
        component: str = "kubelet",
    ) -> None:
        """A core/v1 Event about ``obj``; a repeat of the same reason and message bumps the
        count of the existing one, as the real event recorder does."""
        meta = obj["metadata"]
        ns = meta.get("namespace") or "default"
        stamp = now()
        for ev in self.select(events, ns):
            inv = ev.get("involvedObject") or {}
            if inv.get("uid") == meta.get("uid") and (ev.get("reason"), ev.get("message")) == (
                reason,
                message,
            ):
                patch = {"count": int(ev.get("count", 1)) + 1, "lastTimestamp": stamp}
                self.patch(events, ns, ev["metadata"]["name"], patch, "merge-patch")
                return
        self.create(
            events,
            ns,
            {
                "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": ns},
                "involvedObject": {
                    "apiVersion": obj.get("apiVersion"),
                    "kind": obj.get("kind"),
                    "name": meta["name"],
                    "namespace": ns,
                    "uid": meta.get("uid"),
                    "resourceVersion": meta.get("resourceVersion"),
                },
                "reason": reason,
                "message": message,
                "type": type_,
                "count": 1,
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "source": {"component": component, "host": "fake-node"},
                "reportingComponent": component,
                "reportingInstance": "fake-node",
            },
        )
