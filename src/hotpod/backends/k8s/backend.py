"""The Kubernetes backend: a pool is the compiled workload, applied with your own kubeconfig.

- **Apply**: the token Secret ``NAME-hotpod-token`` first (a random token, kept across
  redeploys; its annotation ``hotpod.dev/meta`` records the service: kind, code, replicas, the
  objects made), then the objects :func:`hotpod.k8s.compile_manifests` gives, each created, or
  merge-patched when it exists (create-or-patch, which every API server and the test fake
  serve), the patch deleting what hotpod set last time and no longer sets (:mod:`.apply`); an
  object made last time and not now is deleted (claims are kept). Every pod template
  gets the label ``hotpod.dev/template`` (a hash of the Compute's pod template), so that the
  pods of the current template are told from those a rollout is replacing.
- **Watch**: the pods (label ``hotpod.dev/service``) are watched while ``.to()`` waits
  (:mod:`.watch`), and :meth:`KubernetesBackend.diagnose` turns their status into errors that say
  why (:mod:`.pods`): Pending with the scheduler's reason, image pull failures, container config
  errors, crash loops with the last log lines, and at the launch timeout what is still not ready.
- **Code**: the client keeps its store (``HOTPOD_HOME/store``); before a launch each pod gets the
  blobs and manifests it lacks (:mod:`.ship`) into its own store in its ``emptyDir``.
- **Reach**: ``http://POD_IP:32300`` in the cluster; from outside through the API server's pod
  proxy with the kubeconfig's credentials (a :class:`hotpod.transport.Route`).
- **Teardown**: deletes the objects it made, the Services and pods with the service's label and
  the token Secret; claims only with ``teardown(name, volumes=True)``.
"""

from __future__ import annotations

import base64
import builtins
import dataclasses
import json
import secrets
import ssl
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hotpod import transport
from hotpod.backends.base import Backend, Plan, PodInfo, ServiceInfo
from hotpod.backends.k8s import pods as podstate
from hotpod.backends.k8s.apply import annotated, dropped, last_applied, merge_patch
from hotpod.backends.k8s.bootstrap import Bootstrap
from hotpod.backends.k8s.kube import ApiError, Credentials, Kube, collection, object_path
from hotpod.backends.k8s.observe import ObserveMixin
from hotpod.backends.k8s.ship import Shipper
from hotpod.backends.k8s.watch import PodWatch
from hotpod.config import Settings
from hotpod.errors import DeployError, HotpodError, ServiceNotFoundError
from hotpod.k8s.compile import KNATIVE_API
from hotpod.k8s.pod import (
    LAUNCH_KEY,
    MANAGED_BY,
    RUNTIME_PORT,
    SERVICE_LABEL,
    launch_config_name,
    token_secret_name,
)
from hotpod.store import LocalStore, Store

if TYPE_CHECKING:
    from hotpod.client import PodClient

TEMPLATE_LABEL = "hotpod.dev/template"
META_ANNOTATION = "hotpod.dev/meta"
_MANAGED = "app.kubernetes.io/managed-by=hotpod"


def _route(creds: Credentials) -> transport.Route:
    context = None
    if creds.server.startswith("https:"):
        context = ssl.create_default_context(cafile=creds.ca_file)
        if not creds.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if creds.cert_file:
            context.load_cert_chain(creds.cert_file, creds.key_file)
    return transport.Route(
        credentials=creds.headers, ssl_context=context, server_hostname=creds.server_name
    )


class KubernetesBackend(ObserveMixin, Backend):
    name = "kubernetes"
    applies_manifests = True
    adopts_pods = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._kube: Kube | None = None
        self._lock = threading.Lock()
        self._watches: dict[tuple[str, str], PodWatch] = {}
        self._namespaces: dict[str, str] = {}  # services applied here in another namespace
        self._selectors: dict[str, str] = {}  # services of existing pods: their label selector

    # -- the API ----------------------------------------------------------------------------

    @property
    def kube(self) -> Kube:
        with self._lock:
            if self._kube is None:
                self._kube = Kube(self.settings.kube)
                if self.reach == "proxy":
                    transport.add_route(self._kube.server, _route(self._kube.credentials()))
            return self._kube

    def close(self) -> None:
        """Stop the watches and close the API connections (a later call opens them again)."""
        with self._lock:
            watches, self._watches = list(self._watches.values()), {}
            kube, self._kube = self._kube, None
        for watch in watches:
            watch.stop()
        if kube is not None:
            if self.reach == "proxy":
                transport.remove_route(kube.server)
            kube.close()

    @property
    def reach(self) -> str:
        """``direct`` (pod IPs) or ``proxy`` (the API server's pod proxy)."""
        mode = self.settings.kube.reach
        if mode == "auto":
            return "direct" if self.settings.kube.in_cluster else "proxy"
        return mode

    def namespace(self, name: str | None = None) -> str:
        return self._namespaces.get(name or "", "") or self.kube.namespace

    def _secret_path(self, name: str, ns: str) -> str:
        return f"{collection('v1', 'Secret', ns)}/{token_secret_name(name)}"

    # -- Backend ----------------------------------------------------------------------------

    def store(self) -> Store:
        return LocalStore(self.settings.store_dir)

    def check(self, plan: Plan) -> None:
        if plan.compute is None:
            raise DeployError(f"service {plan.name!r}: the Kubernetes backend needs the Compute")

    def apply(self, plan: Plan) -> ServiceInfo:
        from hotpod.k8s import compile_manifests
        from hotpod.k8s.byo import pod_templates

        compute = plan.compute
        assert compute is not None
        kube = self.kube
        ns = compute.namespace if compute.namespace != "default" else kube.namespace
        if ns != compute.namespace:
            compute = compute.replace(namespace=ns)
        objects = compile_manifests(
            plan.name, compute, runtime_image=self.settings.kube.runtime_image
        )
        from hotpod import __version__

        kube_settings = self.settings.kube
        bootstrap = Bootstrap.from_settings(
            kube_settings.bootstrap, kube_settings.bootstrap_image, __version__
        )
        bootstrap.apply_all(objects)  # (as the golden manifests of each mode show it)
        template = bootstrap.label(compute.template_hash())
        for obj in objects:
            for pod_template in pod_templates(obj):
                pod_template.setdefault("metadata", {}).setdefault("labels", {})[TEMPLATE_LABEL] = (
                    template
                )
        made = [
            [o["apiVersion"], o["kind"], o["metadata"]["name"], o["metadata"].get("namespace", ns)]
            for o in objects
        ]
        workload = next(
            (o for o in objects if o["kind"] not in ("Service", "PersistentVolumeClaim")), None
        )
        before = kube.find(object_path(workload, ns)) if workload is not None else None
        dist = compute.distribution
        meta = {
            **plan.meta,
            **(
                {"distribute": dist.to_dict(), "dist_port": dist.rendezvous_port}
                if dist is not None
                else {}
            ),
            "replicas": None if compute.uses_existing_pods else plan.replicas,
            "autoscale": compute.autoscaling is not None,
            "selector": _selector_text(compute.selector) if compute.uses_existing_pods else None,
            "labels": plan.labels,
            "template": template,
            "objects": made,
            "resources": {
                k: plan.template.get(k)
                for k in ("cpus", "memory_bytes", "gpus")
                if plan.template.get(k)
            },
        }
        self._remember_selector(plan.name, meta)  # (a pool that stopped adopting pods too)
        # existing pods: there must be some
        if meta["selector"] and not kube.items(collection("v1", "Pod", ns), meta["selector"]):
            raise DeployError(
                f"Compute(selector={dict(compute.selector or {})!r}): no pod in namespace "
                f"{ns!r} has these labels. The selector adopts pods that already run "
                "hotpod's runtime (docs/kubernetes.md, 'Existing pods'); drop selector= to "
                "let hotpod make the pool"
            )
        previous = self._ensure_secret(plan.name, ns, meta)
        for obj in objects:  # (the workload as read above: not read again)
            self._apply_object(obj, ns, live=before if obj is workload else None)
        for api_version, kind, obj_name, obj_ns in dropped(previous.get("objects") or [], made):
            # what the Compute made before and no longer does (a Deployment become a Knative
            # Service, a headless Service of a pool no longer distributed): its pods must go
            kube.delete(f"{collection(api_version, kind, obj_ns)}/{obj_name}")
        self._namespaces[plan.name] = ns
        if before is None:
            rollout = "created"
        elif _template_of(before) != template:
            rollout = "replaced"
        elif (before.get("spec") or {}).get("replicas") not in (None, plan.replicas):
            rollout = "scaled"
        else:
            rollout = "unchanged"
        self.watch(plan.name)  # .to() now waits for the pods: keep them current
        return dataclasses.replace(self.get(plan.name), rollout=rollout)

    def _ensure_secret(self, name: str, ns: str, meta: dict[str, Any]) -> dict[str, Any]:
        """Make the token Secret, or record ``meta`` on it; what it recorded before ({} when
        new)."""
        kube = self.kube
        path = self._secret_path(name, ns)
        notes = {META_ANNOTATION: json.dumps(meta, sort_keys=True)}
        for _ in range(3):
            found = kube.find(path)
            if found is not None:
                labels = {**MANAGED_BY, SERVICE_LABEL: name}  # (a Secret the user made first)
                kube.request(
                    "PATCH",
                    path,
                    body={"metadata": {"annotations": notes, "labels": labels}},
                    content_type="application/merge-patch+json",
                )
                return _meta_of(found)
            token = secrets.token_urlsafe(32)
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": token_secret_name(name),
                    "namespace": ns,
                    "labels": {**MANAGED_BY, SERVICE_LABEL: name},
                    "annotations": notes,
                },
                "type": "Opaque",
                "data": {"token": base64.b64encode(token.encode()).decode()},
            }
            try:
                kube.request("POST", collection("v1", "Secret", ns), body=body)
                return {}
            except ApiError as exc:
                if exc.status != 409:  # made meanwhile by another client: read it
                    raise
        raise HotpodError(f"could not create or read the Secret {token_secret_name(name)}")

    def _apply_object(
        self,
        obj: dict[str, Any],
        ns: str,
        live: dict[str, Any] | None = None,
        prune: bool = True,
    ) -> None:
        """Create the object, or merge-patch it to what it must be when it exists (``live``:
        as it was just read, if it was). With ``prune`` the patch also drops what hotpod set on
        it last time and no longer sets (:mod:`.apply`), which costs the object an annotation
        as large as itself; an object whose fields are all rewritten every time needs none."""
        kube = self.kube
        target_ns = obj["metadata"].get("namespace") or ns
        if prune:
            obj = annotated(obj)
        try:
            kube.request("POST", collection(obj["apiVersion"], obj["kind"], target_ns), body=obj)
            return
        except ApiError as exc:
            if exc.status == 404:
                raise DeployError(
                    f"the cluster does not serve {obj['kind']} ({obj['apiVersion']}): {exc}. "
                    "Install its operator (Knative Serving, KubeRay...) or use another Compute."
                ) from None
            if exc.status != 409:
                raise DeployError(
                    f"could not create {obj['kind']} {obj['metadata']['name']}: {exc}"
                ) from None
        if obj["kind"] == "PersistentVolumeClaim":  # a claim's spec is immutable: keep it
            return
        path = object_path(obj, target_ns)
        if prune:
            obj = merge_patch(last_applied(live or kube.find(path)), obj)
        kube.request("PATCH", path, body=obj, content_type="application/merge-patch+json")

    # -- reading services -----------------------------------------------------------------

    def _pods(self, name: str, ns: str) -> list[dict[str, Any]]:
        """The service's pods: from its watch when one runs, else listed."""
        watch = self._watches.get((ns, name))
        if watch is not None:
            found = watch.pods()
            if found is not None:
                return found
            if not watch.alive:
                self._watches.pop((ns, name), None)
        return self.kube.items(collection("v1", "Pod", ns), self._selector(name))

    def _selector(self, name: str) -> str:
        """The label selector of the service's pods: its own label, or for existing pods the
        selector its token Secret records (read once when no ``get``/``apply`` did: ``hotpod
        logs`` in a new process)."""
        selector = self._selectors.get(name)
        if selector is None:
            secret = self.kube.find(self._secret_path(name, self.namespace(name)))
            selector = self._remember_selector(name, _meta_of(secret) if secret else {})
        return selector

    def _remember_selector(self, name: str, meta: dict[str, Any]) -> str:
        selector = str(meta.get("selector") or f"{SERVICE_LABEL}={name}")
        self._selectors[name] = selector
        return selector

    def watch(self, name: str) -> None:
        """Keep the service's pods current by watching them (while somebody asks)."""
        ns = self.namespace(name)
        kube = self.kube
        with self._lock:
            current = self._watches.get((ns, name))
            if current is None or not current.alive:
                self._watches[(ns, name)] = PodWatch(kube, ns, self._selector(name))

    def _info(self, secret: dict[str, Any], pods: list[dict[str, Any]], ns: str) -> ServiceInfo:
        meta_obj = secret.get("metadata") or {}
        name = (meta_obj.get("labels") or {}).get(SERVICE_LABEL) or meta_obj["name"]
        meta = _meta_of(secret)
        template = meta.get("template")
        current = [
            p
            for p in pods
            if not (p.get("metadata") or {}).get("deletionTimestamp")
            and (
                template is None
                or ((p.get("metadata") or {}).get("labels") or {}).get(TEMPLATE_LABEL)
                in (None, template)
            )
        ]
        current.sort(key=podstate.rank_key)
        infos = tuple(self._pod_info(p, rank, ns) for rank, p in enumerate(current))
        created = _epoch(meta_obj.get("creationTimestamp"))
        resources = meta.get("resources") or {}
        return ServiceInfo(
            name=name,
            token=_token(secret),
            replicas=int(meta.get("replicas") or len(infos)),
            pods=infos,
            created_at=created,
            labels=dict(meta.get("labels") or {}),
            meta={
                **{k: meta[k] for k in ("kind", "qualname", "module", "dist_port") if k in meta},
                **(self._router(name, ns) if meta.get("autoscale") else {}),
            },
            template={
                "cpus": resources.get("cpus"),
                "memory_bytes": resources.get("memory_bytes"),
                "gpus": resources.get("gpus"),
                "namespace": ns,
                **({"distribute": meta["distribute"]} if meta.get("distribute") else {}),
            },
        )

    def _router(self, name: str, ns: str) -> dict[str, Any]:
        """Where the calls of an autoscaled pool go, one pod each: Knative's route. In the
        cluster its address (``status.address.url``: through Knative's activator, so a pool at
        zero scales up); from outside, the API server's proxy to the Kubernetes Service Knative
        makes for the latest ready revision (``{revision}``, port ``http``)."""
        found = self.kube.find(f"{collection(KNATIVE_API, 'Service', ns)}/{name}") or {}
        status = found.get("status") or {}
        if self.reach == "direct":
            url = (status.get("address") or {}).get("url")
        else:
            revision = status.get("latestReadyRevisionName") or status.get(
                "latestCreatedRevisionName"
            )
            url = (
                revision
                and f"{self.kube.server}{collection('v1', 'Service', ns)}/{revision}:http/proxy"
            )
        return {"router": {"url": url}} if url else {}

    def _pod_info(self, pod: dict[str, Any], rank: int, ns: str) -> PodInfo:
        meta = pod.get("metadata") or {}
        name = meta.get("name", "?")
        ip = (pod.get("status") or {}).get("podIP")
        if self.reach == "proxy":
            url = f"{self.kube.server}/api/v1/namespaces/{ns}/pods/{name}:{RUNTIME_PORT}/proxy"
        else:
            url = f"http://{ip}:{RUNTIME_PORT}" if ip else ""
        return PodInfo(
            name=name,
            rank=rank,
            url=url,
            status=podstate.status(pod),
            restarts=podstate.restarts(pod),
            last_exit=podstate.last_exit(pod),
            address=f"{ip}:{RUNTIME_PORT}" if ip else None,
        )

    def get(self, name: str) -> ServiceInfo:
        ns = self.namespace(name)
        secret = self.kube.find(self._secret_path(name, ns))
        if secret is None:
            raise ServiceNotFoundError(
                f"no service named {name!r} in namespace {ns!r} of the Kubernetes cluster at "
                f"{self.kube.server}; 'hotpod list' shows what runs (HOTPOD_NAMESPACE picks "
                "another namespace)"
            )
        self._remember_selector(name, _meta_of(secret))
        return self._info(secret, self._pods(name, ns), ns)

    def list(self) -> builtins.list[ServiceInfo]:
        ns = self.kube.namespace
        found = self.kube.items(collection("v1", "Secret", ns), f"{_MANAGED},{SERVICE_LABEL}")
        by_service: dict[str, list[dict[str, Any]]] = {}
        for pod in self.kube.items(collection("v1", "Pod", ns), SERVICE_LABEL):
            service = ((pod.get("metadata") or {}).get("labels") or {}).get(SERVICE_LABEL, "")
            by_service.setdefault(service, []).append(pod)
        out = []
        for secret in found:
            labels = (secret.get("metadata") or {}).get("labels") or {}
            service = labels.get(SERVICE_LABEL, "")
            if secret["metadata"]["name"] != token_secret_name(service):
                continue
            selector = _meta_of(secret).get("selector")
            if selector:  # existing pods, by their own labels
                pods = self.kube.items(collection("v1", "Pod", ns), str(selector))
            else:
                pods = by_service.get(service, [])
            out.append(self._info(secret, pods, ns))
        return sorted(out, key=lambda s: s.name)

    # -- teardown -------------------------------------------------------------------------

    def teardown(self, name: str, volumes: bool = False) -> bool:
        """Delete what hotpod made for the service; its claims too with ``volumes=True``."""
        kube = self.kube
        ns = self.namespace(name)
        watch = self._watches.pop((ns, name), None)
        if watch is not None:
            watch.stop()
        secret = kube.find(self._secret_path(name, ns))
        meta = _meta_of(secret) if secret is not None else {}
        deleted = False
        for api_version, kind, obj_name, obj_ns in meta.get("objects") or []:
            if kind == "PersistentVolumeClaim" and not volumes:
                continue
            path = f"{collection(api_version, kind, obj_ns)}/{obj_name}"
            deleted = kube.delete(path) or deleted
        selector = f"{SERVICE_LABEL}={name}"
        for api_version, kind in (
            ("apps/v1", "Deployment"),
            ("v1", "Service"),
            ("v1", "ConfigMap"),
            ("v1", "Pod"),
        ):
            path = collection(api_version, kind, ns)
            for obj in kube.items(path, selector):
                deleted = kube.delete(f"{path}/{obj['metadata']['name']}") or deleted
        if secret is not None:
            deleted = kube.delete(self._secret_path(name, ns)) or deleted
        self._namespaces.pop(name, None)
        self._selectors.pop(name, None)
        return deleted

    def teardown_all(self) -> builtins.list[str]:
        names = [s.name for s in self.list()]
        return [n for n in names if self.teardown(n)]

    # -- deploy hooks -----------------------------------------------------------------------

    def launched(self, service: ServiceInfo, spec: dict[str, Any]) -> None:
        """Record the launch in the ConfigMap ``NAME-hotpod-launch`` that every pod mounts, with
        the pods that serve it: a pod that starts later loads it and fetches the code from them
        (:func:`hotpod.runtime.storeapi.cluster_launch`)."""
        ns = self.namespace(service.name)
        doc = {"spec": spec, "peers": [p.address for p in service.pods if p.address]}
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": launch_config_name(service.name),
                "namespace": ns,
                "labels": {**MANAGED_BY, SERVICE_LABEL: service.name},
            },
            "data": {LAUNCH_KEY: json.dumps(doc, sort_keys=True)},
        }
        self._apply_object(body, ns, prune=False)  # (its one key is rewritten whole)

    def ship(self, service: ServiceInfo, client: PodClient, spec: dict[str, Any]) -> None:
        Shipper(self.store(), client).ship_all(service.pods, spec)


def _selector_text(selector: Mapping[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((selector or {}).items()))


def _meta_of(secret: dict[str, Any]) -> dict[str, Any]:
    """What the token Secret's annotation records of the service ({} when unreadable)."""
    notes = (secret.get("metadata") or {}).get("annotations") or {}
    try:
        meta = json.loads(notes.get(META_ANNOTATION) or "{}")
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _template_of(workload: dict[str, Any]) -> str | None:
    from hotpod.k8s.byo import pod_templates

    for template in pod_templates(workload):
        value = ((template.get("metadata") or {}).get("labels") or {}).get(TEMPLATE_LABEL)
        if value:
            return str(value)
    return None


def _token(secret: dict[str, Any]) -> str:
    data = (secret.get("data") or {}).get("token")
    if data:
        return base64.b64decode(data).decode()
    return str((secret.get("stringData") or {}).get("token") or "")


def _epoch(stamp: str | None) -> float:
    if not stamp:
        return time.time()
    from datetime import datetime

    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()


__all__ = ["KubernetesBackend"]
