"""The Kubernetes backend's parts without a cluster: settings, pod status, the store endpoints,
proxy routes in the transport, and the backend against an in-memory API (``FakeKube``).

The end-to-end tests against a fake API server with pods as processes are in
``test_k8s_e2e.py``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hotpod import transport, wire
from hotpod.backends.base import Plan, PodInfo, ServiceInfo
from hotpod.backends.k8s import apply
from hotpod.backends.k8s import pods as podstate
from hotpod.backends.k8s.backend import TEMPLATE_LABEL, KubernetesBackend
from hotpod.backends.k8s.kube import Credentials
from hotpod.compute import Compute
from hotpod.config import ConfigError, reload_settings
from hotpod.errors import ApiError, DeployError, ServiceNotFoundError
from hotpod.runtime.app import PodApp, PodState
from hotpod.runtime.storeapi import wanted
from hotpod.store import FileEntry, LocalStore, Manifest

# -- settings ---------------------------------------------------------------------------------


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    for var in ("HOTPOD_BACKEND", "HOTPOD_NAMESPACE", "HOTPOD_K8S_REACH", "KUBECONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOTPOD_HOME", str(tmp_path / "home"))
    yield monkeypatch
    monkeypatch.undo()
    reload_settings()


def test_backend_defaults_to_local(env: pytest.MonkeyPatch) -> None:
    assert reload_settings().backend == "local"


@pytest.mark.parametrize("value", ["kubernetes", "k8s", " K8S "])
def test_backend_from_the_environment(env: pytest.MonkeyPatch, value: str) -> None:
    env.setenv("HOTPOD_BACKEND", value)
    env.setenv("HOTPOD_NAMESPACE", "ml")
    current = reload_settings()
    assert (current.backend, current.kube.namespace, current.kube.reach) == (
        "kubernetes",
        "ml",
        "auto",
    )


def test_backend_from_the_config_file(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text(
        "backend: kubernetes\nkubernetes:\n  namespace: team\n  reach: direct\n"
    )
    current = reload_settings()
    assert (current.backend, current.kube.namespace, current.kube.reach) == (
        "kubernetes",
        "team",
        "direct",
    )
    env.setenv("HOTPOD_BACKEND", "local")  # the environment wins
    assert reload_settings().backend == "local"


def test_bad_settings_say_what_is_allowed(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("HOTPOD_BACKEND", "k8s")
    env.setenv("HOTPOD_K8S_REACH", "tunnel")
    with pytest.raises(ConfigError, match="expected one of auto, direct, proxy"):
        reload_settings()
    env.setenv("HOTPOD_BACKEND", "nomad")
    with pytest.raises(ConfigError, match="expected one of local, kubernetes"):
        reload_settings()
    env.delenv("HOTPOD_BACKEND")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "config.yaml").write_text("backend: k8s\nkubernetes:\n  nmespace: x\n")
    with pytest.raises(ConfigError, match=r"unknown setting.*kubernetes\.nmespace"):
        reload_settings()


def test_import_hotpod_does_not_import_the_kubernetes_client() -> None:
    code = (
        "import sys, hotpod, hotpod.backends, hotpod.deploy, hotpod.services; "
        "print('kubernetes' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- pod status -------------------------------------------------------------------------------


def pod(
    name: str,
    *,
    phase: str = "Running",
    ready: bool = True,
    waiting: tuple[str, str] | None = None,
    restarts: int = 0,
    created: str = "2026-01-01T00:00:00Z",
    labels: dict[str, str] | None = None,
    ip: str | None = "10.0.0.1",
    conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    state: dict[str, Any] = {"running": {}}
    if waiting is not None:
        state = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions
        if conditions is not None
        else [{"type": "Ready", "status": "True" if ready else "False"}],
        "containerStatuses": [
            {
                "name": "hotpod",
                "image": "python:3.11",
                "restartCount": restarts,
                "state": state,
                "lastState": {"terminated": {"exitCode": 1}} if restarts else {},
            }
        ],
    }
    if ip:
        status["podIP"] = ip
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": f"uid-{name}",
            "creationTimestamp": created,
            "labels": {"hotpod.dev/service": "svc", **(labels or {})},
        },
        "spec": {"containers": [{"name": "hotpod", "image": "python:3.11"}]},
        "status": status,
    }


GPU_PENDING = pod(
    "svc-abc",
    phase="Pending",
    ip=None,
    conditions=[
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
        }
    ],
)


def test_the_runtime_container_is_hotpods_else_the_one_with_hotpod_env_else_the_first() -> None:
    def spec(*containers: dict[str, Any]) -> dict[str, Any]:
        return {"spec": {"containers": list(containers)}}

    sidecar = {"name": "proxy"}
    env = [{"name": "HOTPOD_TOKEN", "value": "t"}]
    assert podstate.runtime_container(spec(sidecar, {"name": "hotpod"})) == "hotpod"
    assert podstate.runtime_container(spec(sidecar, {"name": "runtime", "env": env})) == "runtime"
    assert podstate.runtime_container(spec({"name": "main"}, sidecar)) == "main"
    assert podstate.runtime_container({}) == "hotpod"
    statuses = [{"name": "proxy", "restartCount": 0}, {"name": "runtime", "restartCount": 3}]
    adopted = {
        **spec(sidecar, {"name": "runtime", "env": env}),
        "status": {"containerStatuses": statuses},
    }
    assert podstate.restarts(adopted) == 3  # the runtime's restarts, not the sidecar's


def test_status_words() -> None:
    assert podstate.status(pod("a")) == "running"
    assert podstate.status(pod("a", ready=False)) == "starting"
    assert podstate.status(GPU_PENDING) == "starting"
    assert podstate.status(pod("a", waiting=("CrashLoopBackOff", "back-off"), restarts=4)) == (
        "restarting"
    )
    gone = pod("a")
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:01Z"
    assert podstate.status(gone) == "stopped"


def test_ranks_follow_the_index_label_else_age_then_name() -> None:
    pods = [
        pod("b", created="2026-01-01T00:00:02Z"),
        pod("a", created="2026-01-01T00:00:02Z"),
        pod("z", created="2026-01-01T00:00:01Z"),
    ]
    assert [p["metadata"]["name"] for p in sorted(pods, key=podstate.rank_key)] == ["z", "a", "b"]
    indexed = [
        pod("w-1", labels={"apps.kubernetes.io/pod-index": "1"}),
        pod("w-0", labels={"apps.kubernetes.io/pod-index": "0"}, created="2026-02-01T00:00:00Z"),
    ]
    assert [p["metadata"]["name"] for p in sorted(indexed, key=podstate.rank_key)] == [
        "w-0",
        "w-1",
    ]


def test_trouble_names_the_pod_and_the_reason() -> None:
    gpu = podstate.trouble(GPU_PENDING, [], 0)
    assert gpu is not None and gpu.kind == "unschedulable" and not gpu.final
    assert "svc-abc is Pending" in gpu.message and "Insufficient nvidia.com/gpu" in gpu.message
    scale_up = {"reason": "TriggeredScaleUp", "involvedObject": {"kind": "Pod", "name": "svc-abc"}}
    scaling = podstate.trouble(GPU_PENDING, [scale_up], 0)
    assert scaling is not None and scaling.kind == "scaling"
    image = podstate.trouble(
        pod("p", phase="Pending", waiting=("ImagePullBackOff", 'pull "nope:1" failed')), [], 0
    )
    assert image is not None and image.final and "'python:3.11'" in image.message
    assert 'pull "nope:1" failed' in image.message
    config = podstate.trouble(
        pod("p", waiting=("CreateContainerConfigError", 'secret "hf" not found')), [], 0
    )
    assert config is not None and config.final and 'secret "hf" not found' in config.message
    crash = podstate.trouble(pod("p", waiting=("CrashLoopBackOff", "back-off"), restarts=5), [], 0)
    assert crash is not None and crash.kind == "crashloop" and "last exit code 1" in crash.message
    assert podstate.trouble(pod("p"), [], 0) is None
    event_only = pod("q", phase="Pending", ip=None, conditions=[])
    failed = {
        "reason": "FailedScheduling",
        "message": "0/1 nodes are available: 1 Insufficient cpu.",
        "involvedObject": {"kind": "Pod", "name": "q"},
    }
    from_event = podstate.trouble(event_only, [failed], 0)
    assert from_event is not None and "Insufficient cpu" in from_event.message


def test_wanted_lists_what_a_launch_names_in_the_store() -> None:
    m1, m2, m3, b1, b2 = ("1" * 64, "2" * 64, "3" * 64, "a" * 64, "b" * 64)
    spec = {
        "code": {"manifest": m1, "by_value": b1},
        "init": b2,
        "image": {
            "steps": [
                {"kind": "copy", "manifest": m2},
                {"kind": "pip_install", "packages": ["./x"], "local": {"./x": m3}},
                {"kind": "run_bash", "command": "true"},
            ]
        },
    }
    assert wanted(spec) == ({b1, b2}, [m1, m2, m3])


# -- the pod's store endpoints ----------------------------------------------------------------

TOKEN = "tok-123"


def _pod_app(tmp_path: Path) -> tuple[PodApp, LocalStore]:
    store = LocalStore(tmp_path / "pod-store")
    state = PodState(
        pod="p-0",
        rank=0,
        service="svc",
        token=TOKEN,
        root=tmp_path / "pod",
        store=store,
        pod_log=io.StringIO(),
        max_body=1 << 20,
    )
    return PodApp(state), store


def _ask(app: PodApp, requests: list[tuple[str, bytes, dict[str, str]]]) -> list[httpx.Response]:
    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://pod"
        ) as client:
            return [await client.post(p, content=b, headers=h) for p, b, h in requests]

    return asyncio.run(main())


def test_store_endpoints_take_only_what_checks_out(tmp_path: Path) -> None:
    app, store = _pod_app(tmp_path)
    data = b"print('hi')\n"
    digest = hashlib.sha256(data).hexdigest()
    manifest = Manifest({"main.py": FileEntry(digest, 0o644, len(data))})
    proxied = {"X-Hotpod-Token": TOKEN, wire.HEADER_PROTOCOL: wire.PROTOCOL_VERSION}
    plain = {"Authorization": f"Bearer {TOKEN}", wire.HEADER_PROTOCOL: wire.PROTOCOL_VERSION}
    query = json.dumps({"blobs": [digest], "manifests": [manifest.id]}).encode()
    r = _ask(
        app,
        [
            ("/_hotpod/store/missing", query, {wire.HEADER_PROTOCOL: wire.PROTOCOL_VERSION}),
            ("/_hotpod/store/missing", query, proxied),
            (f"/_hotpod/store/manifest/{manifest.id}", manifest.to_json().encode(), plain),
            (f"/_hotpod/store/blob/{digest}", b"something else", plain),
            (f"/_hotpod/store/blob/{digest}", data, proxied),
            (f"/_hotpod/store/manifest/{'0' * 64}", manifest.to_json().encode(), plain),
            (f"/_hotpod/store/manifest/{manifest.id}", manifest.to_json().encode(), plain),
            ("/_hotpod/store/missing", query, plain),
            ("/_hotpod/store/blob/../../etc", b"x", plain),
        ],
    )
    assert r[0].status_code == 401  # no token
    assert r[1].json() == {"blobs": [digest], "manifests": [manifest.id]}
    assert r[2].status_code == 409 and "upload them first" in r[2].json()["error"]
    assert r[3].status_code == 400 and "hashes to" in r[3].json()["error"]
    assert r[4].status_code == 200
    assert r[5].status_code == 400  # the id does not match the manifest
    assert r[6].status_code == 200
    assert r[7].json() == {"blobs": [], "manifests": []}
    assert r[8].status_code in (400, 404)
    assert store.get_bytes(digest) == data and store.has_manifest(manifest.id)


def test_store_endpoints_refuse_bodies_over_the_limit(tmp_path: Path) -> None:
    app, _ = _pod_app(tmp_path)
    big = b"x" * ((1 << 20) + 1)
    digest = hashlib.sha256(big).hexdigest()
    headers = {"Authorization": f"Bearer {TOKEN}", wire.HEADER_PROTOCOL: wire.PROTOCOL_VERSION}
    (r,) = _ask(app, [(f"/_hotpod/store/blob/{digest}", big, headers)])
    assert r.status_code == 413


def test_store_endpoints_give_what_the_store_has(tmp_path: Path) -> None:
    app, store = _pod_app(tmp_path)
    data = b"x = 1\n"
    digest = store.put_bytes(data)
    manifest = Manifest({"m.py": FileEntry(digest, 0o644, len(data))})
    store.put_manifest(manifest)
    headers = {"Authorization": f"Bearer {TOKEN}", wire.HEADER_PROTOCOL: wire.PROTOCOL_VERSION}

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://pod"
        ) as client:
            return [
                await client.get(f"/_hotpod/store/{p}", headers=h)
                for p, h in [
                    (f"blob/{digest}", headers),
                    (f"manifest/{manifest.id}", headers),
                    (f"blob/{'0' * 64}", headers),
                    (f"blob/{digest}", {wire.HEADER_PROTOCOL: wire.PROTOCOL_VERSION}),
                    ("missing", headers),
                ]
            ]

    r = asyncio.run(main())
    assert r[0].status_code == 200 and r[0].content == data
    assert r[1].status_code == 200 and Manifest.from_json(r[1].content).id == manifest.id
    assert r[2].status_code == 404 and "no blob" in r[2].json()["error"]
    assert r[3].status_code == 401  # the token is required to read too
    assert r[4].status_code == 405


def test_a_new_pod_fetches_what_a_launch_needs_from_the_first_peer_that_has_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hotpod.runtime import storeapi

    full = LocalStore(tmp_path / "full")
    data = b"def f():\n    return 1\n"
    digest = full.put_bytes(data)
    manifest = Manifest({"f.py": FileEntry(digest, 0o644, len(data))})
    full.put_manifest(manifest)
    init = full.put_bytes(b"init args")
    spec = {"code": {"manifest": manifest.id}, "init": init}
    served: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        served.append(f"{request.url.host}{request.url.path}")
        if request.url.host == "10.0.0.1":  # a pod that is gone
            raise httpx.ConnectError("refused")
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return httpx.Response(403)
        what, name = request.url.path.rsplit("/", 2)[-2:]
        if what == "blob" and not full.missing([name]):
            return httpx.Response(200, content=full.get_bytes(name))
        if what == "manifest" and full.has_manifest(name):
            return httpx.Response(200, content=full.get_manifest(name).to_json().encode())
        return httpx.Response(404)

    new = LocalStore(tmp_path / "new")
    fetcher = storeapi.PeerFetcher(new, TOKEN, ["10.0.0.1:32300", "10.0.0.2:32300"])
    fetcher.http = httpx.Client(
        transport=httpx.MockTransport(handler), headers=fetcher.http.headers
    )
    assert fetcher.fetch(spec) == 2
    assert new.has_manifest(manifest.id) and new.get_bytes(init) == b"init args"
    assert fetcher.peers == ["10.0.0.2:32300"]  # the gone one is not asked again
    served.clear()
    assert fetcher.fetch(spec) == 0 and served == []  # nothing asked when nothing is lacking

    monkeypatch.setenv("HOTPOD_POD_IP", "10.0.0.7")
    monkeypatch.setenv("HOTPOD_PORT", "32300")
    monkeypatch.setenv("HOTPOD_RANK", "5")
    assert storeapi.own_rank(["10.0.0.3:32300", "10.0.0.7:32300"]) == 1
    assert storeapi.own_rank(["10.0.0.3:32300"]) == 5  # not listed: what the backend set


# -- routes through a proxy -------------------------------------------------------------------


class Recorder:
    """A tiny HTTP server that answers every request with what it received."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                pairs = (line.split(": ", 1) for line in lines[1:])
                headers = {k.lower(): v for k, v in pairs}
                length = int(headers.get("content-length", "0"))
                while len(body) < length:
                    body += conn.recv(65536)
                answer = json.dumps({"line": lines[0], "headers": headers}).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (len(answer), answer)
                )

    def close(self) -> None:
        self.sock.close()


def test_a_route_adds_the_base_path_and_the_proxys_credentials() -> None:
    server = Recorder()
    base = f"http://127.0.0.1:{server.port}"
    pod_url = f"{base}/api/v1/namespaces/ns/pods/p-0:32300/proxy"
    try:
        direct = transport.Transport().request(
            base, "/call", b"{}", {"Authorization": "Bearer svc"}, 5
        )
        seen = json.loads(direct.read())
        assert seen["line"] == "POST /call HTTP/1.1"
        assert seen["headers"]["authorization"] == "Bearer svc"
        transport.add_route(
            base, transport.Route(credentials=lambda: {"Authorization": "Bearer k"})
        )
        routed = transport.Transport().request(
            pod_url, "/call", b"{}", {"Authorization": "Bearer svc"}, 5
        )
        seen = json.loads(routed.read())
        assert seen["line"] == "POST /api/v1/namespaces/ns/pods/p-0:32300/proxy/call HTTP/1.1"
        assert seen["headers"]["authorization"] == "Bearer k"
        assert seen["headers"]["x-hotpod-token"] == "svc"
        with httpx.Client(
            transport=transport.httpx_transport(), headers={"Authorization": "Bearer svc"}
        ) as http:
            answer = http.post(f"{pod_url}/health", content=b"").json()
        assert answer["line"].startswith("POST /api/v1/namespaces/ns/pods/p-0:32300/proxy/health")
        assert answer["headers"]["x-hotpod-token"] == "svc"
        assert answer["headers"]["authorization"] == "Bearer k"

        async def via_asyncio() -> dict[str, Any]:
            from hotpod.aiotransport import AsyncTransport

            resp = await AsyncTransport().request(
                pod_url, "/call/m", b"{}", {"Authorization": "Bearer svc"}, None
            )
            return dict(json.loads(await resp.read()))

        seen = asyncio.run(via_asyncio())
        assert seen["line"] == "POST /api/v1/namespaces/ns/pods/p-0:32300/proxy/call/m HTTP/1.1"
        assert seen["headers"]["x-hotpod-token"] == "svc"
    finally:
        transport.remove_route(base)
        server.close()


# -- the backend against an in-memory API -----------------------------------------------------


class FakeKube:
    """Just enough of :class:`hotpod.backends.k8s.kube.Kube`: objects by path, in memory."""

    namespace = "default"
    server = "https://k8s.example:6443"

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.logs: dict[str, str] = {}

    def credentials(self) -> Credentials:
        return Credentials(self.server, lambda: {}, None, None, None, True, None)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str | None = None,
        timeout: float = 30,
        raw: bool = False,
    ) -> Any:
        if method == "POST":
            path = f"{path}/{body['metadata']['name']}"
            if path in self.objects:
                raise ApiError("exists", 409)
            obj = json.loads(json.dumps(body))
            obj["metadata"].setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
            self.objects[path] = obj
            return obj
        if method == "PATCH":
            if path not in self.objects:
                raise ApiError("not found", 404)
            _merge(self.objects[path], body)
            return self.objects[path]
        if method == "DELETE":
            if self.objects.pop(path, None) is None:
                raise ApiError("not found", 404)
            return {}
        if path.endswith("/log"):
            return self.logs.get(path.rsplit("/", 2)[-2], "")
        if path in self.objects:
            return self.objects[path]
        selector = (query or {}).get("labelSelector")
        items = [o for p, o in self.objects.items() if p.rsplit("/", 1)[0] == path]
        return {"items": [o for o in items if _selected(o, selector)]}

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query)

    def find(self, path: str, **query: Any) -> Any:
        found = self.objects.get(path)
        return None if found is None else json.loads(json.dumps(found))  # (a copy, as read)

    def items(self, path: str, selector: str | None = None) -> list[dict[str, Any]]:
        return list(self.request("GET", path, query={"labelSelector": selector})["items"])

    def delete(self, path: str) -> bool:
        return self.objects.pop(path, None) is not None

    def add_pod(self, obj: dict[str, Any]) -> None:
        self.objects[f"/api/v1/namespaces/default/pods/{obj['metadata']['name']}"] = obj


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:  # (RFC 7386: null deletes)
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def _selected(obj: dict[str, Any], selector: str | None) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (selector or "").split(",")):
        key, _, value = term.partition("=")
        if key not in labels or (value and labels[key] != value):
            return False
    return True


@pytest.fixture
def k8s(env: pytest.MonkeyPatch) -> tuple[KubernetesBackend, FakeKube]:
    env.setenv("HOTPOD_BACKEND", "kubernetes")
    env.setenv("HOTPOD_K8S_REACH", "direct")
    backend = KubernetesBackend(reload_settings())
    fake = FakeKube()
    backend._kube = fake  # type: ignore[assignment]
    backend.watch = lambda name: None  # type: ignore[method-assign]  # (pods listed, not watched)
    return backend, fake


def _plan(compute: Compute, name: str = "svc") -> Plan:
    return Plan(
        name, compute.replicas, {"cpus": compute.cpu_cores}, meta={"kind": "fn"}, compute=compute
    )


def test_apply_makes_the_secret_and_the_workload_and_keeps_the_token(
    k8s: tuple[KubernetesBackend, FakeKube],
) -> None:
    backend, fake = k8s
    first = backend.apply(_plan(Compute(cpus="0.5", replicas=2)))
    assert first.rollout == "created" and first.replicas == 2 and first.meta == {"kind": "fn"}
    secret = fake.objects["/api/v1/namespaces/default/secrets/svc-hotpod-token"]
    assert base64.b64decode(secret["data"]["token"]).decode() == first.token
    deployment = fake.objects["/apis/apps/v1/namespaces/default/deployments/svc"]
    template = deployment["spec"]["template"]["metadata"]["labels"][TEMPLATE_LABEL]
    assert "/api/v1/namespaces/default/services/svc" in fake.objects
    again = backend.apply(_plan(Compute(cpus="0.5", replicas=2)))
    assert (again.rollout, again.token) == ("unchanged", first.token)
    assert backend.apply(_plan(Compute(cpus="0.5", replicas=3))).rollout == "scaled"
    changed = backend.apply(_plan(Compute(cpus="1", replicas=3)))
    assert changed.rollout == "replaced"
    assert deployment["spec"]["template"]["metadata"]["labels"][TEMPLATE_LABEL] != template


def test_get_ranks_the_current_pods_and_gives_their_urls(
    k8s: tuple[KubernetesBackend, FakeKube],
) -> None:
    backend, fake = k8s
    backend.apply(_plan(Compute(replicas=2)))
    template = fake.objects["/apis/apps/v1/namespaces/default/deployments/svc"]["spec"]["template"][
        "metadata"
    ]["labels"][TEMPLATE_LABEL]
    fake.add_pod(pod("svc-b", created="2026-01-01T00:00:02Z", labels={TEMPLATE_LABEL: template}))
    fake.add_pod(
        pod(
            "svc-a",
            created="2026-01-01T00:00:01Z",
            ip="10.0.0.2",
            labels={TEMPLATE_LABEL: template},
        )
    )
    fake.add_pod(pod("svc-old", labels={TEMPLATE_LABEL: "old"}))  # being replaced
    info = backend.get("svc")
    assert [(p.name, p.rank, p.url) for p in info.pods] == [
        ("svc-a", 0, "http://10.0.0.2:32300"),
        ("svc-b", 1, "http://10.0.0.1:32300"),
    ]
    assert [s.name for s in backend.list()] == ["svc"]
    backend.settings.kube.__dict__["reach"] = "proxy"  # (frozen: as the config would say)
    assert backend.get("svc").pods[0].url == (
        "https://k8s.example:6443/api/v1/namespaces/default/pods/svc-a:32300/proxy"
    )


def test_teardown_deletes_what_hotpod_made_and_keeps_claims(
    k8s: tuple[KubernetesBackend, FakeKube],
) -> None:
    from hotpod.volume import Volume

    backend, fake = k8s
    backend.apply(_plan(Compute(replicas=1, volumes=[Volume("data", "/data", size="1Gi")])))
    fake.add_pod(pod("svc-x"))
    assert backend.teardown("svc") is True
    assert list(fake.objects) == ["/api/v1/namespaces/default/persistentvolumeclaims/data"]
    with pytest.raises(ServiceNotFoundError, match="no service named 'svc'"):
        backend.get("svc")
    assert backend.teardown("svc") is False
    backend.apply(_plan(Compute(replicas=1, volumes=[Volume("data", "/data", size="1Gi")])))
    backend.teardown("svc", volumes=True)
    assert fake.objects == {}


def test_merge_patch_deletes_what_was_applied_and_is_no_longer_set() -> None:
    old = {"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"x": 1, "list": [1, 2]}}
    new = {"metadata": {"labels": {"b": "3"}}, "spec": {"list": [3]}, "extra": {"y": 1}}
    assert apply.merge_patch(old, new) == {
        "metadata": {"labels": {"a": None, "b": "3"}},
        "spec": {"x": None, "list": [3]},  # (lists are replaced whole)
        "extra": {"y": 1},
    }
    assert apply.merge_patch({}, new) == new  # nothing applied before: plain merge patch
    obj = {"kind": "Service", "metadata": {"name": "s", "annotations": {"keep": "me"}}}
    marked = apply.annotated(obj)
    assert marked["metadata"]["annotations"]["keep"] == "me"
    assert apply.last_applied(marked) == obj  # what was applied, without itself
    assert apply.last_applied(apply.annotated(marked)) == obj
    assert apply.last_applied({"metadata": {"annotations": {apply.LAST_APPLIED: "{bad"}}}) == {}
    made = [["v1", "Service", "s", "ns"], ["v1", "PersistentVolumeClaim", "c", "ns"]]
    assert apply.dropped(made, [["v1", "Service", "t", "ns"]]) == [["v1", "Service", "s", "ns"]]


def test_a_redeploy_removes_fields_and_objects_the_compute_no_longer_makes(
    k8s: tuple[KubernetesBackend, FakeKube],
) -> None:
    from hotpod.volume import Volume

    backend, fake = k8s
    claim = Volume("data", "/data", size="1Gi")
    compute = Compute(replicas=2, labels={"team": "a"}, volumes=[claim])
    backend.apply(_plan(compute.distribute("spmd")))
    path = "/apis/apps/v1/namespaces/default/deployments/svc"
    assert fake.objects[path]["metadata"]["labels"]["team"] == "a"
    assert "/api/v1/namespaces/default/services/svc-headless" in fake.objects
    fake.objects[path]["metadata"]["labels"]["theirs"] = "kept"  # (not hotpod's to remove)
    backend.apply(_plan(Compute(replicas=2)))
    labels = fake.objects[path]["metadata"]["labels"]
    assert "team" not in labels and labels["theirs"] == "kept"
    assert "/api/v1/namespaces/default/services/svc-headless" not in fake.objects
    assert "/api/v1/namespaces/default/persistentvolumeclaims/data" in fake.objects  # (data)


def _service(*pods: PodInfo) -> ServiceInfo:
    return ServiceInfo("svc", "tok", len(pods), tuple(pods), 0.0)


def test_diagnose_fails_a_gpu_pod_that_cannot_be_scheduled_after_a_grace(
    k8s: tuple[KubernetesBackend, FakeKube],
) -> None:
    backend, fake = k8s
    fake.add_pod(GPU_PENDING)
    pending = [PodInfo("svc-abc", 0, "", "starting")]
    backend.diagnose(_service(*pending), pending, {}, waited=1.0, timeout=300)  # still in grace
    with pytest.raises(DeployError) as caught:
        backend.diagnose(_service(*pending), pending, {}, waited=10.5, timeout=300)
    assert "svc-abc is Pending" in str(caught.value)
    assert "Insufficient nvidia.com/gpu" in str(caught.value)


def test_diagnose_waits_for_a_node_the_cluster_autoscaler_is_adding(
    k8s: tuple[KubernetesBackend, FakeKube],
) -> None:
    backend, fake = k8s
    fake.add_pod(GPU_PENDING)  # (its Unschedulable condition written: events still read)
    fake.objects["/api/v1/namespaces/default/events/svc-abc.1"] = {
        "metadata": {"name": "svc-abc.1"},
        "reason": "TriggeredScaleUp",
        "involvedObject": {"kind": "Pod", "name": "svc-abc", "uid": "uid-svc-abc"},
        "message": "pod triggered scale-up: [{gpu-pool 0->1 (max: 4)}]",
    }
    pending = [PodInfo("svc-abc", 0, "", "starting")]
    backend.diagnose(_service(*pending), pending, {}, waited=60.0, timeout=300)  # past the grace
    with pytest.raises(DeployError, match="the cluster autoscaler is adding a node"):
        backend.diagnose(_service(*pending), pending, {}, waited=300.0, timeout=300)


def test_diagnose_fails_a_crash_loop_at_once_with_the_log(
    k8s: tuple[KubernetesBackend, FakeKube],
) -> None:
    backend, fake = k8s
    fake.add_pod(pod("svc-c", ready=False, waiting=("CrashLoopBackOff", "back-off"), restarts=3))
    fake.logs["svc-c"] = "Traceback (most recent call last):\nImportError: no module named hotpod\n"
    pending = [PodInfo("svc-c", 0, "", "restarting", restarts=3)]
    with pytest.raises(DeployError, match=r"(?s)keeps crashing.*no module named hotpod"):
        backend.diagnose(_service(*pending), pending, {"svc-c": 0}, waited=0.5, timeout=300)


def test_diagnose_at_the_timeout_says_what_is_not_ready(
    k8s: tuple[KubernetesBackend, FakeKube],
) -> None:
    backend, fake = k8s
    fake.add_pod(pod("svc-s", ready=False))
    pending = [PodInfo("svc-s", 0, "", "starting")]
    service = ServiceInfo("svc", "tok", 2, tuple(pending), 0.0)
    backend.diagnose(service, pending, {}, waited=5, timeout=30)
    with pytest.raises(
        DeployError, match=r"0/2 pods ready after 30 s.*svc-s \(starting\).*only 1 of 2"
    ):
        backend.diagnose(service, pending, {}, waited=30, timeout=30)


def test_pip_bootstrap_starts_the_runtime_when_hotpod_imports(
    k8s: tuple[KubernetesBackend, FakeKube], env: pytest.MonkeyPatch
) -> None:
    from hotpod import __version__
    from hotpod.backends.k8s.bootstrap import pip_command

    command = pip_command(__version__)
    assert command[:2] == ["/bin/sh", "-c"] and f"hotpod=={__version__}" in command[2]
    script = command[2].replace("exec python -m hotpod.runtime.supervisor", "echo started")
    bindir = Path(sys.executable).parent  # its python has hotpod
    out = subprocess.run(
        ["/bin/sh", "-c", script],
        capture_output=True,
        text=True,
        env={"PATH": f"{bindir}:/usr/bin:/bin"},
        check=True,
    )
    assert out.stdout.strip() == "started"  # hotpod imports: no pip run

    env.setenv("HOTPOD_K8S_BOOTSTRAP", "pip")
    backend = KubernetesBackend(reload_settings())
    fake = FakeKube()
    backend._kube = fake  # type: ignore[assignment]
    backend.watch = lambda name: None  # type: ignore[method-assign]
    backend.apply(_plan(Compute(replicas=1)))
    deployment = fake.objects["/apis/apps/v1/namespaces/default/deployments/svc"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["command"] == command


def test_the_kubeconfig_gives_the_server_and_the_namespace_of_the_context_asked_for(
    tmp_path: Path,
) -> None:
    from hotpod.backends.k8s.kube import Kube
    from hotpod.config import KubeSettings

    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "a",
                "clusters": [
                    {"name": "ca", "cluster": {"server": "https://a.example:6443"}},
                    {"name": "cb", "cluster": {"server": "https://b.example:6443"}},
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [
                    {"name": "a", "context": {"cluster": "ca", "user": "u", "namespace": "na"}},
                    {"name": "b", "context": {"cluster": "cb", "user": "u", "namespace": "nb"}},
                ],
            }
        )
    )
    current = Kube(KubeSettings(kubeconfig=str(kubeconfig)))
    assert (current.server, current.namespace) == ("https://a.example:6443", "na")
    other = Kube(KubeSettings(kubeconfig=str(kubeconfig), context="b"))
    assert (other.server, other.namespace) == ("https://b.example:6443", "nb")
    for kube in (current, other):
        kube.close()
