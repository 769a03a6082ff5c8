"""The operators the fake cluster plays: Knative Serving and KubeRay (see ``controllers.py``).

A Knative Service makes a Deployment per revision (``NAME-0000G-deployment``, the revision named
after the Service's generation) of ``initial-scale`` / ``min-scale`` / 1 pods, with ``PORT`` and
``K_*`` in the environment; it does not autoscale, nor make Routes, Revisions or the revision's
Kubernetes Services (reach its pods by the pod proxy). Its status gets ``url``,
``latestReadyRevisionName`` and Ready once the pods are ready, or Ready False ``RevisionFailed``
when a pod cannot pull its image, crash-loops or lacks a Secret. A RayCluster makes one head pod
(``NAME-head-xxxxx``), the ``NAME-head-svc`` Service and each worker group's pods
(``NAME-GROUP-worker-xxxxx``), with KubeRay's labels; state ``ready`` once all are ready. Ray
itself is not started: the containers run their own commands.
"""

from __future__ import annotations

import copy
import functools
from typing import TYPE_CHECKING

from .controllers import Obj, condition, is_active, is_ready, keep_times, owner_ref

if TYPE_CHECKING:
    from .controllers import Controllers

#: RevisionSpec fields that are not PodSpec fields
_KNATIVE_ONLY = (
    "containerConcurrency",
    "timeoutSeconds",
    "responseStartTimeoutSeconds",
    "idleTimeoutSeconds",
)


def knative_services(ctl: Controllers) -> None:
    try:
        kind = ctl.k("serving.knative.dev", "services")
    except Exception:
        return
    dep_kind = ctl.k("apps", "deployments")
    for ks in list(ctl.store.select(kind, None)):
        meta, template = ks["metadata"], copy.deepcopy(ks["spec"]["template"])
        name, ns = meta["name"], meta["namespace"]
        tmeta = template.setdefault("metadata", {})
        revision = tmeta.get("name") or f"{name}-{int(meta.get('generation', 1)):05d}"
        notes = tmeta.get("annotations") or {}
        scale = max(
            int(notes.get("autoscaling.knative.dev/initial-scale", 1)),
            int(notes.get("autoscaling.knative.dev/min-scale", 0)),
        )
        deps = ctl.owned(dep_kind, ks)
        current = next((d for d in deps if d["metadata"]["name"] == f"{revision}-deployment"), None)
        if current is None:
            labels = {
                **(tmeta.get("labels") or {}),
                "serving.knative.dev/service": name,
                "serving.knative.dev/configuration": name,
                "serving.knative.dev/revision": revision,
                "app": revision,
            }
            pod_spec = template.get("spec") or {}
            for field in _KNATIVE_ONLY:
                pod_spec.pop(field, None)
            for i, c in enumerate(pod_spec.get("containers") or []):
                c.setdefault("name", "user-container" if i == 0 else f"container-{i}")
                port = next((p["containerPort"] for p in c.get("ports") or []), 8080)
                env = [
                    e
                    for e in c.get("env") or []
                    if e["name"] not in ("PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION")
                ]
                c["env"] = [
                    *env,
                    {"name": "PORT", "value": str(port)},
                    {"name": "K_REVISION", "value": revision},
                    {"name": "K_CONFIGURATION", "value": name},
                    {"name": "K_SERVICE", "value": name},
                ]
            current = ctl.store.create(
                dep_kind,
                ns,
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {
                        "name": f"{revision}-deployment",
                        "labels": labels,
                        "ownerReferences": [owner_ref(ks)],
                    },
                    "spec": {
                        "replicas": scale,
                        "selector": {"matchLabels": {"serving.knative.dev/revision": revision}},
                        "template": {
                            "metadata": {"labels": labels, "annotations": notes},
                            "spec": pod_spec,
                        },
                    },
                },
            )
        dstatus = current.get("status") or {}
        ready = int(dstatus.get("readyReplicas", 0)) >= scale
        if ready:
            for d in deps:
                if d["metadata"]["name"] != current["metadata"]["name"]:
                    ctl.delete(dep_kind, d)
        failure = _pod_failure(ctl, ns, {"serving.knative.dev/revision": revision})
        status = copy.deepcopy(ks.get("status") or {})
        status.update(
            observedGeneration=meta.get("generation", 1), latestCreatedRevisionName=revision
        )
        if ready:
            status.update(
                latestReadyRevisionName=revision,
                url=f"http://{name}.{ns}.example.com",
                address={"url": f"http://{name}.{ns}.svc.cluster.local"},
                traffic=[{"revisionName": revision, "latestRevision": True, "percent": 100}],
            )
            conds = [condition(t, True) for t in ("ConfigurationsReady", "Ready", "RoutesReady")]
        elif failure:
            msg = f'Revision "{revision}" failed with message: {failure}.'
            conds = [
                condition(t, False, "RevisionFailed", msg)
                for t in ("ConfigurationsReady", "Ready", "RoutesReady")
            ]
        else:
            msg = f'Configuration "{name}" is waiting for a Revision to become ready.'
            conds = [
                condition(t, None, "RevisionMissing", msg)
                for t in ("ConfigurationsReady", "Ready", "RoutesReady")
            ]
        status["conditions"] = conds
        ctl.set_status(kind, ks, keep_times(ks, status))


def _pod_failure(ctl: Controllers, ns: str, selector: dict[str, str]) -> str | None:
    for p in ctl.store.select(
        ctl.k("", "pods"), ns, ",".join(f"{k}={v}" for k, v in selector.items())
    ):
        for cs in (p.get("status") or {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in (
                "ImagePullBackOff",
                "ErrImagePull",
                "CrashLoopBackOff",
                "CreateContainerConfigError",
            ):
                return waiting.get("message") or waiting["reason"]
    return None


def rayclusters(ctl: Controllers) -> None:
    try:
        kind = ctl.k("ray.io", "rayclusters")
    except Exception:
        return
    pods_kind, svc_kind = ctl.k("", "pods"), ctl.k("", "services")
    for rc in list(ctl.store.select(kind, None)):
        meta, spec = rc["metadata"], rc["spec"]
        name, ns = meta["name"], meta["namespace"]
        pods = ctl.owned(pods_kind, rc)
        base = {
            "ray.io/cluster": name,
            "ray.io/is-ray-node": "yes",
            "app.kubernetes.io/created-by": "kuberay-operator",
            "app.kubernetes.io/name": "kuberay",
        }
        head_labels = {**base, "ray.io/node-type": "head", "ray.io/group": "headgroup"}
        head_tmpl = spec["headGroupSpec"]["template"]
        heads = [p for p in pods if p["metadata"]["labels"].get("ray.io/node-type") == "head"]
        ctl.scale_pods(
            rc,
            heads,
            1,
            functools.partial(
                ctl.make_pod, rc, head_tmpl, generate=f"{name}-head-", labels=head_labels
            ),
        )
        if ctl.store.get(svc_kind, ns, f"{name}-head-svc") is None:
            ports = [
                {
                    "name": p.get("name", f"port-{p['containerPort']}"),
                    "port": p["containerPort"],
                    "targetPort": p["containerPort"],
                }
                for p in (head_tmpl["spec"]["containers"][0].get("ports") or [])
            ]
            ctl.store.create(
                svc_kind,
                ns,
                {
                    "metadata": {
                        "name": f"{name}-head-svc",
                        "labels": {**base, "ray.io/node-type": "head"},
                        "ownerReferences": [owner_ref(rc)],
                    },
                    "spec": {
                        "selector": {"ray.io/cluster": name, "ray.io/node-type": "head"},
                        "ports": ports,
                    },
                },
            )
        desired = ready_workers = 0
        for group in spec.get("workerGroupSpecs") or []:
            gname = group["groupName"]
            want = int(group.get("replicas", group.get("minReplicas", 1)))
            want = max(
                int(group.get("minReplicas", 0)), min(want, int(group.get("maxReplicas", want)))
            )
            desired += want
            mine = [p for p in pods if p["metadata"]["labels"].get("ray.io/group") == gname]
            labels = {**base, "ray.io/node-type": "worker", "ray.io/group": gname}
            ctl.scale_pods(
                rc,
                mine,
                want,
                functools.partial(
                    ctl.make_pod,
                    rc,
                    group["template"],
                    generate=f"{name}-{gname}-worker-",
                    labels=labels,
                ),
            )
            ready_workers += sum(1 for p in mine if is_active(p) and is_ready(p))
        head = next((p for p in heads if is_active(p)), None)
        head_ready = head is not None and is_ready(head)
        status: Obj = {
            "observedGeneration": meta.get("generation", 1),
            "desiredWorkerReplicas": desired,
            "readyWorkerReplicas": ready_workers,
            "availableWorkerReplicas": ready_workers,
            "conditions": [
                condition(
                    "HeadPodReady",
                    head_ready,
                    "HeadPodRunningAndReady" if head_ready else "HeadPodNotFound",
                )
            ],
        }
        if head is not None:
            svc = ctl.store.get(svc_kind, ns, f"{name}-head-svc") or {}
            status["head"] = {
                "podName": head["metadata"]["name"],
                "podIP": (head.get("status") or {}).get("podIP", ""),
                "serviceName": f"{name}-head-svc",
                "serviceIP": (svc.get("spec") or {}).get("clusterIP", ""),
            }
        if head_ready and ready_workers >= desired:
            status["state"] = "ready"
        ctl.set_status(kind, rc, keep_times(rc, status))


# -- core/v1 -------------------------------------------------------------------------------
