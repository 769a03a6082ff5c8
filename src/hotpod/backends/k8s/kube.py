"""The Kubernetes API as the backend uses it: plain dicts over the official client's REST layer.

The official ``kubernetes`` client loads the kubeconfig (or the in-cluster service account) and
owns authentication and TLS; requests go through its ``ApiClient`` with JSON bodies and answers
read as plain dicts (kr8s' style: objects are data, not generated model classes), so that one
small set of verbs serves every kind the compiler emits, custom resources included.

Errors of the API are translated here into :class:`hotpod.errors.ApiError` that says what
was asked, what the server answered and what to do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hotpod.config import KubeSettings
from hotpod.errors import ApiError, ConfigError

_PLURALS = {
    "Service": "services",
    "Secret": "secrets",
    "ConfigMap": "configmaps",
    "Pod": "pods",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Event": "events",
    "Deployment": "deployments",
    "StatefulSet": "statefulsets",
    "Job": "jobs",
    "RayCluster": "rayclusters",
    "PyTorchJob": "pytorchjobs",
    "JobSet": "jobsets",
}
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def collection(api_version: str, kind: str, namespace: str) -> str:
    """The path of a namespaced collection: ``/apis/apps/v1/namespaces/ns/deployments``."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    plural = _PLURALS.get(kind) or f"{kind.lower()}s"
    return f"{base}/namespaces/{quote(namespace, safe='')}/{plural}"


def object_path(obj: dict[str, Any], namespace: str) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace") or namespace
    return f"{collection(obj['apiVersion'], obj['kind'], ns)}/{quote(meta['name'], safe='')}"


@dataclass(frozen=True)
class Credentials:
    """How to reach the API server from here, for hotpod's own transport (the pod proxy)."""

    server: str
    headers: Callable[[], dict[str, str]]
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    verify: bool
    server_name: str | None


class Kube:
    """One API server, through the official client: ``request`` and ``stream`` of JSON."""

    def __init__(self, settings: KubeSettings) -> None:
        try:
            from kubernetes import client, config
        except ImportError:  # pragma: no cover - the extra is missing
            raise ConfigError(
                "the Kubernetes backend needs the official client: pip install 'hotpod[kubernetes]'"
            ) from None
        cfg = client.Configuration()
        namespace = None
        try:
            if settings.in_cluster and not settings.kubeconfig:
                config.load_incluster_config(client_configuration=cfg)
                if _SA_NAMESPACE.is_file():
                    namespace = _SA_NAMESPACE.read_text().strip() or None
            else:
                config.load_kube_config(
                    config_file=settings.kubeconfig,
                    context=settings.context,
                    client_configuration=cfg,
                    persist_config=False,
                )
                contexts, active = config.list_kube_config_contexts(settings.kubeconfig)
                if settings.context:
                    active = next(c for c in contexts if c["name"] == settings.context)
                namespace = (active.get("context") or {}).get("namespace")
        except (config.ConfigException, OSError, StopIteration, TypeError) as exc:
            where = settings.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise ConfigError(
                f"cannot load the Kubernetes configuration ({where}"
                f"{', context ' + settings.context if settings.context else ''}): {exc}. Set "
                "KUBECONFIG (and HOTPOD_K8S_CONTEXT), or run in a pod with a service account, "
                "or unset HOTPOD_BACKEND to use the local backend."
            ) from None
        self.config = cfg
        self.api = client.ApiClient(cfg)
        self.namespace: str = settings.namespace or namespace or "default"
        self.server: str = cfg.host.rstrip("/")

    def close(self) -> None:
        self.api.close()

    def credentials(self) -> Credentials:
        cfg = self.config

        def headers() -> dict[str, str]:
            token = cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
            return {"Authorization": token} if token else {}

        return Credentials(
            server=self.server,
            headers=headers,
            ca_file=cfg.ssl_ca_cert,
            cert_file=cfg.cert_file,
            key_file=cfg.key_file,
            verify=bool(cfg.verify_ssl),
            server_name=cfg.tls_server_name,
        )

    # -- requests ---------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None,
        body: Any,
        content_type: str | None,
        timeout: float | tuple[float, float | None] | None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        request = self.api.param_serialize(
            method,
            path,
            query_params=params,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            return self.api.call_api(*request, _request_timeout=timeout)
        except Exception as exc:  # urllib3's errors: no answer at all
            raise ApiError(
                f"{method} {path}: the Kubernetes API server at {self.server} did not answer "
                f"({type(exc).__name__}: {exc}). Is the cluster reachable from here?"
            ) from None

    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str | None = None,
        timeout: float = 30.0,
        raw: bool = False,
    ) -> Any:
        """One request; the answer's JSON (or text with ``raw``); ApiError unless 2xx."""
        resp = self._send(method, path, query, body, content_type, timeout)
        data = resp.read()
        if not 200 <= resp.status < 300:
            raise _error(method, path, resp.status, data)
        if raw:
            return data.decode("utf-8", "replace")
        return json.loads(data) if data else {}

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query)

    def find(self, path: str, **query: Any) -> Any | None:
        """GET, or None when the object does not exist (404)."""
        try:
            return self.get(path, **query)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def items(self, path: str, selector: str | None = None) -> list[dict[str, Any]]:
        """The items of a list, selected by labels; [] when the kind is not served (404)."""
        found = self.find(path, labelSelector=selector)
        return list((found or {}).get("items") or [])

    def delete(self, path: str) -> bool:
        """Delete; False when it was not there."""
        try:
            self.request("DELETE", path, query={"propagationPolicy": "Background"})
            return True
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise

    def stream(
        self, path: str, query: dict[str, Any], read_timeout: float | None = None
    ) -> Iterator[bytes]:
        """The lines of a long answer (a watch, a followed log) as they come."""
        resp = self._send("GET", path, query, None, None, (10.0, read_timeout))
        if not 200 <= resp.status < 300:
            raise _error("GET", path, resp.status, resp.read())
        raw = resp.response
        finished = False
        try:
            pending = b""
            chunks = raw.stream(65536, decode_content=True)
            while True:
                try:
                    chunk = next(chunks)
                except StopIteration:
                    break
                except Exception as exc:  # urllib3's: the server ended the answer mid-stream
                    raise ApiError(f"GET {path}: the answer broke off ({exc})") from None
                pending += chunk
                *lines, pending = pending.split(b"\n")
                yield from lines
            if pending:
                yield pending
            finished = True
        finally:
            if finished:
                raw.release_conn()
            else:  # left mid-stream: the connection cannot be reused
                raw.close()


def _error(method: str, path: str, status: int, data: bytes) -> ApiError:
    try:
        doc = json.loads(data)
        message, reason = doc.get("message") or "", doc.get("reason") or ""
    except (ValueError, AttributeError):
        message, reason = data.decode("utf-8", "replace")[:500], ""
    hint = ""
    if status in (401, 403):
        hint = (
            " Check that your kubeconfig's user may do this in the namespace (RBAC: "
            "'kubectl auth can-i')."
        )
    return ApiError(
        f"{method} {path}: the API server answered {status}"
        f"{' ' + reason if reason else ''}: {message or '(no message)'}.{hint}",
        status,
        reason,
    )


__all__ = ["ApiError", "Credentials", "Kube", "collection", "object_path"]
