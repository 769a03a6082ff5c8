"""The controllers of the fake cluster: workloads make Pods, and their status is written back.

Deployments make ReplicaSets (``NAME-HASH``) that make Pods (``NAME-HASH-xxxxx``); a changed
template makes a new ReplicaSet, and the old one is scaled down as the new pods get ready
(Recreate: old pods go first). StatefulSets make ``NAME-0..N-1`` (OrderedReady or Parallel,
claims from ``volumeClaimTemplates``; a changed template replaces pods from the highest
ordinal). Jobs run ``parallelism`` pods until ``completions`` succeed or ``backoffLimit``
failures. Services get Endpoints; claims are Bound at once. Knative and KubeRay are in
``operators.py``. Every controller reads the store directly on each pass (no watches) and
writes through it, so clients watching the API see every change.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from .objects import template_hash
from .store import Kind, Store

Obj = dict[str, Any]


def owner_ref(obj: Obj) -> Obj:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def is_ready(pod: Obj) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def is_active(pod: Obj) -> bool:
    phase = (pod.get("status") or {}).get("phase")
    return not pod["metadata"].get("deletionTimestamp") and phase not in ("Succeeded", "Failed")


class Controllers:
    def __init__(self, store: Store, kind: Any, all_kinds: Any):
        self.store = store
        self._kind = kind
        self._all_kinds = all_kinds

    def k(self, group: str, plural: str) -> Kind:
        return self._kind(group, plural)

    def reconcile(self) -> None:
        from . import operators  # it builds on this module

        self.deployments()
        self.replicasets()
        self.statefulsets()
        self.jobs()
        operators.knative_services(self)
        operators.rayclusters(self)
        self.endpoints()
        self.claims()

    # -- helpers -------------------------------------------------------------------------------

    def owned(self, kind: Kind, owner: Obj) -> list[Obj]:
        uid = owner["metadata"]["uid"]
        return [
            o
            for o in self.store.select(kind, owner["metadata"]["namespace"])
            if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])
        ]

    def set_status(self, kind: Kind, obj: Obj, status: Obj) -> None:
        if obj.get("status") != status:
            meta = obj["metadata"]
            self.store.replace(
                kind,
                meta["namespace"],
                meta["name"],
                {"metadata": {}, "status": status},
                subresource="status",
                check_version=False,
            )

    def make_pod(
        self,
        owner: Obj,
        template: Obj,
        *,
        name: str | None = None,
        generate: str | None = None,
        labels: dict[str, str] | None = None,
        spec_extra: Obj | None = None,
    ) -> None:
        tmeta = template.get("metadata") or {}
        meta: Obj = {
            "namespace": owner["metadata"]["namespace"],
            "labels": {**(tmeta.get("labels") or {}), **(labels or {})},
            "ownerReferences": [owner_ref(owner)],
        }
        if tmeta.get("annotations"):
            meta["annotations"] = dict(tmeta["annotations"])
        if name:
            meta["name"] = name
        else:
            meta["generateName"] = generate
        spec = copy.deepcopy(template.get("spec") or {})
        spec.update(spec_extra or {})
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
        self.store.create(self.k("", "pods"), meta["namespace"], pod)

    def delete(self, kind: Kind, obj: Obj) -> None:
        meta = obj["metadata"]
        if self.store.get(kind, meta["namespace"], meta["name"]) is not None:
            self.store.delete(kind, meta["namespace"], meta["name"], kinds=self._all_kinds)

    def scale_pods(self, owner: Obj, pods: list[Obj], want: int, make: Any) -> None:
        """Create or delete pods so that ``want`` are active (not-ready and newest go first)."""
        active = [p for p in pods if is_active(p)]
        for _ in range(want - len(active)):
            make()
        extra = len(active) - want
        if extra > 0:
            order = sorted(
                active,
                key=lambda p: (is_ready(p), p["metadata"]["creationTimestamp"]),
                reverse=False,
            )
            victims = [p for p in order if not is_ready(p)] + sorted(
                (p for p in order if is_ready(p)),
                key=lambda p: p["metadata"]["creationTimestamp"],
                reverse=True,
            )
            for pod in victims[:extra]:
                self.delete(self.k("", "pods"), pod)

    # -- apps/v1 -------------------------------------------------------------------------------

    def deployments(self) -> None:
        rs_kind, kind = self.k("apps", "replicasets"), self.k("apps", "deployments")
        for d in list(self.store.select(kind, None)):
            spec, meta = d["spec"], d["metadata"]
            if spec.get("paused"):
                continue
            want = int(spec.get("replicas", 1))
            template = spec["template"]
            h = template_hash(template)
            rses = self.owned(rs_kind, d)
            new = next(
                (r for r in rses if r["metadata"]["labels"].get("pod-template-hash") == h), None
            )
            olds = [r for r in rses if r is not new]
            if new is None:
                revision = 1 + max(
                    (
                        int(
                            (r["metadata"].get("annotations") or {}).get(
                                "deployment.kubernetes.io/revision", 0
                            )
                        )
                        for r in rses
                    ),
                    default=0,
                )
                labels = {
                    **(template.get("metadata", {}).get("labels") or {}),
                    "pod-template-hash": h,
                }
                tmpl = copy.deepcopy(template)
                tmpl.setdefault("metadata", {})["labels"] = labels
                selector = copy.deepcopy(spec.get("selector") or {})
                selector.setdefault("matchLabels", {})["pod-template-hash"] = h
                new = self.store.create(
                    rs_kind,
                    meta["namespace"],
                    {
                        "metadata": {
                            "name": f"{meta['name']}-{h}",
                            "labels": labels,
                            "annotations": {"deployment.kubernetes.io/revision": str(revision)},
                            "ownerReferences": [owner_ref(d)],
                        },
                        "spec": {"replicas": 0, "selector": selector, "template": tmpl},
                    },
                )
            pods = self.store.select(self.k("", "pods"), meta["namespace"])
            by_rs = {
                r["metadata"]["uid"]: [p for p in pods if _owned_by(p, r)] for r in [new, *olds]
            }
            old_pods = [p for r in olds for p in by_rs[r["metadata"]["uid"]]]
            new_ready = sum(
                1 for p in by_rs[new["metadata"]["uid"]] if is_ready(p) and is_active(p)
            )
            recreate = (spec.get("strategy") or {}).get("type") == "Recreate"
            if recreate and old_pods:
                self._scale_rs(new, 0)
            else:
                self._scale_rs(new, want)
            for r in olds:
                self._scale_rs(r, 0 if recreate else max(0, want - new_ready))
            active = [p for r in [new, *olds] for p in by_rs[r["metadata"]["uid"]] if is_active(p)]
            ready = sum(1 for p in active if is_ready(p))
            updated = sum(1 for p in by_rs[new["metadata"]["uid"]] if is_active(p))
            status: Obj = {
                "observedGeneration": meta.get("generation", 1),
                "replicas": len(active),
                "updatedReplicas": updated,
                "readyReplicas": ready,
                "availableReplicas": ready,
                "conditions": [
                    condition(
                        "Available",
                        ready >= want,
                        "MinimumReplicasAvailable"
                        if ready >= want
                        else "MinimumReplicasUnavailable",
                    ),
                    condition(
                        "Progressing",
                        True,
                        "NewReplicaSetAvailable"
                        if new_ready >= want and not old_pods
                        else "ReplicaSetUpdated",
                    ),
                ],
            }
            if len(active) - ready:
                status["unavailableReplicas"] = len(active) - ready
            for k in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas"):
                if not status[k]:
                    del status[k]
            self.set_status(
                kind,
                self.store.get(kind, meta["namespace"], meta["name"]) or d,
                keep_times(d, status),
            )

    def _scale_rs(self, rs: Obj, replicas: int) -> None:
        if int(rs["spec"].get("replicas", 0)) != replicas:
            meta = rs["metadata"]
            self.store.patch(
                self.k("apps", "replicasets"),
                meta["namespace"],
                meta["name"],
                {"spec": {"replicas": replicas}},
                "merge-patch",
            )

    def replicasets(self) -> None:
        kind = self.k("apps", "replicasets")
        for rs in list(self.store.select(kind, None)):
            pods = self.owned(self.k("", "pods"), rs)
            template = rs["spec"]["template"]
            self.scale_pods(
                rs,
                pods,
                int(rs["spec"].get("replicas", 1)),
                functools.partial(
                    self.make_pod, rs, template, generate=f"{rs['metadata']['name']}-"
                ),
            )
            active = [p for p in pods if is_active(p)]
            ready = sum(1 for p in active if is_ready(p))
            status = {
                "observedGeneration": rs["metadata"].get("generation", 1),
                "replicas": len(active),
                "fullyLabeledReplicas": len(active),
                "readyReplicas": ready,
                "availableReplicas": ready,
            }
            self.set_status(kind, rs, status)

    def statefulsets(self) -> None:
        kind, pods_kind = self.k("apps", "statefulsets"), self.k("", "pods")
        for s in list(self.store.select(kind, None)):
            spec, meta = s["spec"], s["metadata"]
            name = meta["name"]
            want = int(spec.get("replicas", 1))
            revision = f"{name}-{template_hash(spec['template'])}"
            ordered = spec.get("podManagementPolicy", "OrderedReady") != "Parallel"
            pods = {p["metadata"]["name"]: p for p in self.owned(pods_kind, s)}
            for i in range(want):
                pod_name = f"{name}-{i}"
                if pod_name in pods:
                    if ordered and not is_ready(pods[pod_name]):
                        break
                    continue
                self._claims_for(s, i)
                volumes = list(spec["template"].get("spec", {}).get("volumes") or [])
                for claim in spec.get("volumeClaimTemplates") or []:
                    cname = claim["metadata"]["name"]
                    volumes.append(
                        {
                            "name": cname,
                            "persistentVolumeClaim": {"claimName": f"{cname}-{pod_name}"},
                        }
                    )
                extra: Obj = {"hostname": pod_name}
                if spec.get("serviceName"):
                    extra["subdomain"] = spec["serviceName"]
                if volumes:
                    extra["volumes"] = volumes
                self.make_pod(
                    s,
                    spec["template"],
                    name=pod_name,
                    labels={
                        "statefulset.kubernetes.io/pod-name": pod_name,
                        "controller-revision-hash": revision,
                        "apps.kubernetes.io/pod-index": str(i),
                    },
                    spec_extra=extra,
                )
                if ordered:
                    break
            doomed = sorted(
                (p for n, p in pods.items() if int(n.rsplit("-", 1)[1]) >= want and is_active(p)),
                key=lambda p: -int(p["metadata"]["name"].rsplit("-", 1)[1]),
            )
            for p in doomed[:1] if ordered else doomed:
                self.delete(pods_kind, p)
            current = [p for p in pods.values() if is_active(p)]
            stale = [
                p
                for p in current
                if p["metadata"]["labels"].get("controller-revision-hash") != revision
            ]
            if stale and not doomed and all(is_ready(p) for p in current):
                self.delete(
                    pods_kind,
                    max(stale, key=lambda p: int(p["metadata"]["name"].rsplit("-", 1)[1])),
                )
            ready = sum(1 for p in current if is_ready(p))
            status = {
                "observedGeneration": meta.get("generation", 1),
                "replicas": len(current),
                "readyReplicas": ready,
                "availableReplicas": ready,
                "currentReplicas": len(current) - len(stale),
                "updatedReplicas": len(current) - len(stale),
                "currentRevision": revision,
                "updateRevision": revision,
            }
            self.set_status(kind, s, status)

    def _claims_for(self, s: Obj, ordinal: int) -> None:
        kind = self.k("", "persistentvolumeclaims")
        ns = s["metadata"]["namespace"]
        for claim in s["spec"].get("volumeClaimTemplates") or []:
            name = f"{claim['metadata']['name']}-{s['metadata']['name']}-{ordinal}"
            if self.store.get(kind, ns, name) is None:
                body = copy.deepcopy(claim)
                body["metadata"] = {
                    "name": name,
                    "labels": dict(claim["metadata"].get("labels") or {}),
                }
                self.store.create(kind, ns, body)

    # -- batch/v1 ------------------------------------------------------------------------------

    def jobs(self) -> None:
        kind = self.k("batch", "jobs")
        for j in list(self.store.select(kind, None)):
            spec, meta = j["spec"], j["metadata"]
            status = copy.deepcopy(j.get("status") or {})
            if any(
                c["type"] in ("Complete", "Failed") and c["status"] == "True"
                for c in status.get("conditions") or []
            ):
                continue
            pods = self.owned(self.k("", "pods"), j)
            phases = [(p.get("status") or {}).get("phase") for p in pods]
            succeeded, failed = phases.count("Succeeded"), phases.count("Failed")
            active = [p for p in pods if is_active(p)]
            completions = int(spec.get("completions") or 1)
            status.update(
                startTime=status.get("startTime") or meta["creationTimestamp"], active=len(active)
            )
            status.update(
                succeeded=succeeded, failed=failed, ready=sum(1 for p in active if is_ready(p))
            )
            if succeeded >= completions:
                status["conditions"] = [
                    condition("SuccessCriteriaMet", True, "CompletionsReached"),
                    condition("Complete", True, "CompletionsReached"),
                ]
                status["completionTime"] = condition("x", True)["lastTransitionTime"]
            elif failed > int(spec.get("backoffLimit", 6)):
                status["conditions"] = [
                    condition(
                        "FailureTarget",
                        True,
                        "BackoffLimitExceeded",
                        "Job has reached the specified backoff limit",
                    ),
                    condition(
                        "Failed",
                        True,
                        "BackoffLimitExceeded",
                        "Job has reached the specified backoff limit",
                    ),
                ]
                for p in active:
                    self.delete(self.k("", "pods"), p)
            else:
                want = min(int(spec.get("parallelism", 1)), completions - succeeded)
                labels = {
                    "job-name": meta["name"],
                    "batch.kubernetes.io/job-name": meta["name"],
                    "controller-uid": meta["uid"],
                    "batch.kubernetes.io/controller-uid": meta["uid"],
                }
                for _ in range(want - len(active)):
                    self.make_pod(j, spec["template"], generate=f"{meta['name']}-", labels=labels)
            for k in ("active", "succeeded", "failed", "ready"):
                if not status.get(k):
                    status.pop(k, None)
            self.set_status(kind, j, status)

    # -- Knative and KubeRay -------------------------------------------------------------------

    def endpoints(self) -> None:
        ep_kind, pods_kind = self.k("", "endpoints"), self.k("", "pods")
        for svc in list(self.store.select(self.k("", "services"), None)):
            meta, spec = svc["metadata"], svc.get("spec") or {}
            selector = spec.get("selector")
            if not selector:
                continue
            sel = ",".join(f"{k}={v}" for k, v in selector.items())
            ready: list[Obj] = []
            unready: list[Obj] = []
            for p in self.store.select(pods_kind, meta["namespace"], sel):
                ip = (p.get("status") or {}).get("podIP")
                if not ip or not is_active(p):
                    continue
                addr = {
                    "ip": ip,
                    "nodeName": "fake-node",
                    "targetRef": {
                        "kind": "Pod",
                        "name": p["metadata"]["name"],
                        "namespace": meta["namespace"],
                        "uid": p["metadata"]["uid"],
                    },
                }
                (ready if is_ready(p) or spec.get("publishNotReadyAddresses") else unready).append(
                    addr
                )
            ports = [
                {
                    "name": p.get("name"),
                    "port": p["targetPort"] if isinstance(p.get("targetPort"), int) else p["port"],
                    "protocol": p.get("protocol", "TCP"),
                }
                for p in spec.get("ports") or []
            ]
            subset: Obj = {"ports": ports}
            if ready:
                subset["addresses"] = ready
            if unready:
                subset["notReadyAddresses"] = unready
            body = {
                "metadata": {
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "labels": dict(meta.get("labels") or {}),
                },
                "subsets": [subset] if ready or unready else [],
            }
            old = self.store.get(ep_kind, meta["namespace"], meta["name"])
            if old is None:
                self.store.create(ep_kind, meta["namespace"], body)
            elif old.get("subsets") != body["subsets"]:
                self.store.patch(
                    ep_kind,
                    meta["namespace"],
                    meta["name"],
                    {"subsets": body["subsets"]},
                    "merge-patch",
                )
        for ep in list(self.store.select(ep_kind, None)):
            if (
                self.store.get(
                    self.k("", "services"), ep["metadata"]["namespace"], ep["metadata"]["name"]
                )
                is None
            ):
                self.store.remove(ep_kind, ep["metadata"]["namespace"], ep["metadata"]["name"])

    def claims(self) -> None:
        kind = self.k("", "persistentvolumeclaims")
        for pvc in list(self.store.select(kind, None)):
            if (pvc.get("status") or {}).get("phase") != "Bound":
                spec = pvc.get("spec") or {}
                self.set_status(
                    kind,
                    pvc,
                    {
                        "phase": "Bound",
                        "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                        "capacity": dict((spec.get("resources") or {}).get("requests") or {}),
                    },
                )


def _owned_by(pod: Obj, owner: Obj) -> bool:
    return any(
        r.get("uid") == owner["metadata"]["uid"]
        for r in pod["metadata"].get("ownerReferences") or []
    )


def condition(
    type_: str, ok: bool | None, reason: str | None = None, message: str | None = None
) -> Obj:
    from .objects import now

    cond: Obj = {
        "type": type_,
        "status": "Unknown" if ok is None else str(ok),
        "lastTransitionTime": now(),
    }
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def keep_times(obj: Obj, status: Obj) -> Obj:
    """Keep each condition's lastTransitionTime while its status stays the same (so that an
    unchanged status is not rewritten every pass)."""
    old = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}
    for c in status.get("conditions") or []:
        prev = old.get(c["type"])
        if prev is not None and prev.get("status") == c["status"]:
            c["lastTransitionTime"] = prev.get("lastTransitionTime")
            for k in ("lastUpdateTime",):
                if k in prev:
                    c[k] = prev[k]
    return status
