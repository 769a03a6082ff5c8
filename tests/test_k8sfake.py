"""The fake Kubernetes cluster of the end-to-end tests (tests/k8sfake), driven through the official
``kubernetes`` client as a backend would drive a real cluster."""

from __future__ import annotations

import http.client
import json
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from k8sfake import FakeCluster

T = TypeVar("T")


@pytest.fixture
def api(fake_cluster: FakeCluster) -> Iterator[client.ApiClient]:
    api_client = config.new_client_from_config(config_file=str(fake_cluster.kubeconfig))
    try:
        yield api_client
    finally:
        api_client.close()


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last seen: {last!r}")


def deployment(
    name: str, command: list[str], *, replicas: int = 1, **container: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": "python:3.11-slim",
                            "command": command,
                            **container,
                        }
                    ]
                },
            },
        },
    }


def ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# -- the API -----------------------------------------------------------------------------------


def test_objects_get_metadata_and_the_usual_verbs(api: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    body = {"metadata": {"name": "conf", "labels": {"a": "1"}}, "data": {"k": "v"}}  # no namespace
    made = v1.create_namespaced_config_map("default", body)
    assert made.metadata.namespace == "default"
    assert made.metadata.uid and made.metadata.creation_timestamp
    rv = int(made.metadata.resource_version)
    with pytest.raises(ApiException) as exc:
        v1.create_namespaced_config_map("default", body)
    assert exc.value.status == 409

    patched = v1.patch_namespaced_config_map("conf", "default", {"data": {"k2": "v2"}})
    assert patched.data == {"k": "v", "k2": "v2"}
    assert int(patched.metadata.resource_version) > rv

    patched.data = {"only": "this"}
    replaced = v1.replace_namespaced_config_map("conf", "default", patched)
    assert replaced.data == {"only": "this"}
    stale = dict(body, metadata={"name": "conf", "resourceVersion": str(rv)})
    with pytest.raises(ApiException) as exc:
        v1.replace_namespaced_config_map("conf", "default", stale)
    assert exc.value.status == 409

    assert [c.metadata.name for c in v1.list_namespaced_config_map("default").items] == ["conf"]
    v1.delete_namespaced_config_map("conf", "default")
    with pytest.raises(ApiException) as exc:
        v1.read_namespaced_config_map("conf", "default")
    assert exc.value.status == 404


def test_secret_string_data_and_generation(api: client.ApiClient) -> None:
    v1, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    secret = v1.create_namespaced_secret(
        "default", {"metadata": {"name": "s"}, "stringData": {"token": "abc"}}
    )
    assert secret.data == {"token": "YWJj"} and secret.string_data is None
    dep = apps.create_namespaced_deployment("default", deployment("idle", ["python"], replicas=0))
    assert dep.metadata.generation == 1
    dep = apps.patch_namespaced_deployment("idle", "default", {"metadata": {"labels": {"x": "y"}}})
    assert dep.metadata.generation == 1  # metadata only
    dep = apps.patch_namespaced_deployment("idle", "default", {"spec": {"paused": True}})
    assert dep.metadata.generation == 2


def test_custom_object_create_returns_the_object(
    api: client.ApiClient, fake_cluster: FakeCluster
) -> None:
    fake_cluster.missing_images.add("nowhere/app:1")  # its pod never starts a process
    custom = client.CustomObjectsApi(api)
    ksvc = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {
            "template": {
                "spec": {"containers": [{"image": "nowhere/app:1", "command": ["python"]}]}
            }
        },
    }
    made = custom.create_namespaced_custom_object(
        "serving.knative.dev", "v1", "default", "services", ksvc
    )
    assert made["metadata"]["name"] == "web" and made["metadata"]["uid"]
    got = custom.get_namespaced_custom_object(
        "serving.knative.dev", "v1", "default", "services", "web"
    )
    assert got["metadata"]["uid"] == made["metadata"]["uid"]
    patched = custom.patch_namespaced_custom_object(
        "serving.knative.dev",
        "v1",
        "default",
        "services",
        "web",
        {"metadata": {"labels": {"a": "b"}}},
    )
    assert patched["metadata"]["labels"] == {"a": "b"}
    # the revision's pod fails to pull, and the Service says why
    status = wait_for(
        "the Knative Service to fail",
        lambda: (
            (
                custom.get_namespaced_custom_object(
                    "serving.knative.dev", "v1", "default", "services", "web"
                ).get("status")
                or {}
            )
            .get("conditions", [{}])[0]
            .get("reason")
            == "RevisionFailed"
        ),
    )
    assert status


def test_deleting_an_owner_deletes_or_orphans_its_dependents(api: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    for policy, left in [("Background", []), ("Orphan", ["dependent"])]:
        owner = v1.create_namespaced_config_map("default", {"metadata": {"name": "owner"}})
        ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
        v1.create_namespaced_config_map(
            "default", {"metadata": {"name": "dependent", "ownerReferences": [ref]}}
        )
        v1.delete_namespaced_config_map("owner", "default", propagation_policy=policy)
        items = v1.list_namespaced_config_map("default").items
        assert [c.metadata.name for c in items] == left
        assert all(not c.metadata.owner_references for c in items)
        for c in items:
            v1.delete_namespaced_config_map(c.metadata.name, "default")


def test_watch_ends_at_its_timeout_and_resumes_from_a_resource_version(
    api: client.ApiClient,
) -> None:
    v1 = client.CoreV1Api(api)
    v1.create_namespaced_config_map("default", {"metadata": {"name": "one"}})
    start = time.monotonic()
    events = list(watch.Watch().stream(v1.list_namespaced_config_map, "default", timeout_seconds=1))
    assert 0.9 < time.monotonic() - start < 5
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "one")]

    rv = v1.list_namespaced_config_map("default").metadata.resource_version
    v1.create_namespaced_config_map("default", {"metadata": {"name": "two"}})
    v1.delete_namespaced_config_map("one", "default")
    events = list(
        watch.Watch().stream(
            v1.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=1
        )
    )
    assert [(e["type"], e["object"].metadata.name) for e in events] == [
        ("ADDED", "two"),
        ("DELETED", "one"),
    ]


def test_label_selectors_on_list_watch_and_deletecollection(api: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    for name, labels in [
        ("a", {"tier": "web", "env": "prod"}),
        ("b", {"tier": "db"}),
        ("c", {"tier": "web"}),
    ]:
        v1.create_namespaced_config_map("default", {"metadata": {"name": name, "labels": labels}})

    def names(selector: str) -> list[str]:
        return sorted(
            c.metadata.name
            for c in v1.list_namespaced_config_map("default", label_selector=selector).items
        )

    assert names("tier=web") == ["a", "c"]
    assert names("tier!=web") == ["b"]
    assert names("tier in (db, cache)") == ["b"]
    assert names("tier notin (db)") == ["a", "c"]
    assert names("env") == ["a"]
    assert names("!env") == ["b", "c"]
    assert names("tier=web,env=prod") == ["a"]
    events = list(
        watch.Watch().stream(
            v1.list_namespaced_config_map, "default", label_selector="tier=db", timeout_seconds=1
        )
    )
    assert [e["object"].metadata.name for e in events] == ["b"]
    v1.delete_collection_namespaced_config_map("default", label_selector="tier=web")
    assert names("") == ["b"]


def test_version_paths_and_the_token(fake_cluster: FakeCluster) -> None:
    status, body = http_get(fake_cluster.url + "/version/")
    assert status == 200 and json.loads(body)["major"] == "1"
    status, body = http_get(fake_cluster.url + "/api/v1/namespaces/default/pods")
    assert status == 401 and json.loads(body)["reason"] == "Unauthorized"
    status, _ = http_get(
        fake_cluster.url + "/api/v1/namespaces/default/pods",
        {"Authorization": f"Bearer {fake_cluster.token}"},
    )
    assert status == 200


def test_strategic_merge_and_server_side_apply(api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    dep = deployment(
        "idle",
        ["python"],
        replicas=0,
        env=[{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
    )
    apps.create_namespaced_deployment("default", dep)
    patch = {
        "spec": {
            "template": {
                "spec": {"containers": [{"name": "main", "env": [{"name": "B", "value": "3"}]}]}
            }
        }
    }
    got = apps.patch_namespaced_deployment("idle", "default", patch)  # strategic: merges by name
    env = {e.name: e.value for e in got.spec.template.spec.containers[0].env}
    assert env == {"A": "1", "B": "3"} and got.spec.template.spec.containers[0].command == [
        "python"
    ]

    applied = deployment("applied", ["python"], replicas=0)
    got = apps.patch_namespaced_deployment(
        "applied",
        "default",
        applied,
        field_manager="test",
        force=True,
        _content_type="application/apply-patch+yaml",
    )
    assert got.metadata.uid
    applied["spec"]["replicas"] = 0
    applied["spec"]["template"]["spec"]["containers"][0]["command"] = ["python", "-V"]
    got = apps.patch_namespaced_deployment(
        "applied",
        "default",
        applied,
        field_manager="test",
        force=True,
        _content_type="application/apply-patch+yaml",
    )
    assert (
        got.spec.template.spec.containers[0].command == ["python", "-V"]
        and got.metadata.generation == 2
    )


def test_missing_image_and_missing_secret_keep_the_pod_pending(
    api: client.ApiClient, fake_cluster: FakeCluster
) -> None:
    v1 = client.CoreV1Api(api)
    fake_cluster.missing_images.add("nowhere/app:1")
    v1.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": "nopull"},
            "spec": {
                "containers": [{"name": "c", "image": "nowhere/app:1", "command": ["python"]}]
            },
        },
    )
    secret_ref = {"secretKeyRef": {"name": "absent", "key": "token"}}
    v1.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": "nosecret"},
            "spec": {
                "containers": [
                    {
                        "name": "c",
                        "image": "python:3.11",
                        "command": ["python"],
                        "env": [{"name": "T", "valueFrom": secret_ref}],
                    }
                ]
            },
        },
    )

    def waiting(name: str, reason: str) -> dict[str, Any] | None:
        pod = v1.read_namespaced_pod(name, "default")
        for cs in pod.status.container_statuses or []:
            if cs.state.waiting and cs.state.waiting.reason == reason:
                return {"phase": pod.status.phase, "message": cs.state.waiting.message}
        return None

    got = wait_for("ImagePullBackOff", lambda: waiting("nopull", "ImagePullBackOff"))
    assert got == {"phase": "Pending", "message": 'Back-off pulling image "nowhere/app:1"'}
    got = wait_for(
        "CreateContainerConfigError", lambda: waiting("nosecret", "CreateContainerConfigError")
    )
    assert got == {"phase": "Pending", "message": 'secret "absent" not found'}
    assert fake_cluster.processes() == []


# -- pods that run -----------------------------------------------------------------------------

SERVE = ["python", "-m", "http.server", "$(PORT)", "--bind", "$(POD_IP)"]
SERVE_ENV = [
    {"name": "PORT", "value": "8000"},
    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
]


@pytest.mark.slow
def test_deployment_pods_run_scale_roll_and_go(
    api: client.ApiClient, fake_cluster: FakeCluster
) -> None:
    apps, v1 = client.AppsV1Api(api), client.CoreV1Api(api)
    probe = {"httpGet": {"path": "/", "port": "http"}}
    dep = deployment(
        "web",
        SERVE,
        replicas=2,
        env=SERVE_ENV,
        ports=[{"name": "http", "containerPort": 8000}],
        readinessProbe=probe,
    )
    apps.create_namespaced_deployment("default", dep)

    def ready_pods(n: int) -> list[client.V1Pod] | None:
        pods = [
            p
            for p in v1.list_namespaced_pod("default", label_selector="app=web").items
            if not p.metadata.deletion_timestamp
        ]
        return pods if len(pods) == n and all(ready(p) for p in pods) else None

    pods = wait_for("2 ready pods", lambda: ready_pods(2))
    ips = {p.status.pod_ip for p in pods}
    assert len(ips) == 2 and all(ip.startswith("127.0.0.") for ip in ips)
    for p in pods:
        assert p.metadata.name.startswith("web-") and len(p.metadata.name.split("-")) == 3
        assert p.metadata.owner_references[0].kind == "ReplicaSet"
        assert http_get(f"http://{p.status.pod_ip}:8000/")[0] == 200
    assert len(fake_cluster.processes()) == 2
    wait_for(
        "the Deployment's status",
        lambda: apps.read_namespaced_deployment("web", "default").status.ready_replicas == 2,
    )

    fake_cluster.kill(pods[0].metadata.name)  # a crash restarts the container in its pod
    wait_for(
        "the restart",
        lambda: (
            (
                s := v1.read_namespaced_pod(
                    pods[0].metadata.name, "default"
                ).status.container_statuses[0]
            )
            and s.restart_count == 1
            and s.last_state.terminated.exit_code == 137
        ),
    )
    v1.delete_namespaced_pod(pods[1].metadata.name, "default")  # a deleted pod is replaced
    names = wait_for(
        "a replacement pod", lambda: (p := ready_pods(2)) and {x.metadata.name for x in p}
    )
    assert pods[1].metadata.name not in names and pods[0].metadata.name in names

    apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 1}})
    (left,) = wait_for("1 pod", lambda: ready_pods(1))
    wait_for("one process", lambda: len(fake_cluster.processes()) == 1)

    patch = {"spec": {"template": {"metadata": {"annotations": {"rev": "2"}}}}}
    apps.patch_namespaced_deployment("web", "default", patch)
    (new,) = wait_for(
        "the replaced pod",
        lambda: (p := ready_pods(1)) and p[0].metadata.name != left.metadata.name and p,
    )
    assert new.metadata.annotations == {"rev": "2"}

    procs = [psutil.Process(pid) for pid in fake_cluster.processes()]
    apps.delete_namespaced_deployment("web", "default")
    wait_for("no pods", lambda: v1.list_namespaced_pod("default").items == [])
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs)
    assert fake_cluster.processes() == [] and fake_cluster.leftovers() == []
    assert client.AppsV1Api(api).list_namespaced_replica_set("default").items == []


@pytest.mark.slow
def test_gpu_pod_is_unschedulable_until_the_node_has_one(
    api: client.ApiClient, fake_cluster: FakeCluster
) -> None:
    v1 = client.CoreV1Api(api)
    pod = {
        "metadata": {"name": "trainer"},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "python:3.11",
                    "command": ["python", "-c", "import time; time.sleep(60)"],
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                }
            ]
        },
    }
    v1.create_namespaced_pod("default", pod)
    message = (
        "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. preemption: 0/1 nodes are "
        "available: 1 No preemption victims found for incoming pod."
    )

    def scheduled_condition() -> client.V1PodCondition | None:
        conds = v1.read_namespaced_pod("trainer", "default").status.conditions or []
        return next((c for c in conds if c.type == "PodScheduled"), None)

    cond = wait_for("the scheduler's verdict", scheduled_condition)
    assert (cond.status, cond.reason, cond.message) == ("False", "Unschedulable", message)
    events = v1.list_namespaced_event("default", field_selector="involvedObject.name=trainer").items
    assert [(e.reason, e.type, e.message) for e in events] == [
        ("FailedScheduling", "Warning", message)
    ]
    assert v1.read_namespaced_pod("trainer", "default").status.phase == "Pending"

    fake_cluster.set_node(gpus=1)
    wait_for(
        "the pod to run",
        lambda: v1.read_namespaced_pod("trainer", "default").status.phase == "Running",
    )
    v1.delete_namespaced_pod("trainer", "default", grace_period_seconds=0)
    wait_for("the pod to go", lambda: v1.list_namespaced_pod("default").items == [])


@pytest.mark.slow
def test_crash_loop_counts_restarts_and_keeps_the_logs(api: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    script = (
        "import sys; print('starting up', flush=True); print('boom', file=sys.stderr); sys.exit(3)"
    )
    pod = {
        "metadata": {"name": "crasher"},
        "spec": {
            "containers": [
                {"name": "c", "image": "python:3.11", "command": ["python", "-c", script]}
            ]
        },
    }
    v1.create_namespaced_pod("default", pod)

    def looping() -> client.V1ContainerStatus | None:
        (cs,) = v1.read_namespaced_pod("crasher", "default").status.container_statuses or [None]
        ok = (
            cs
            and cs.restart_count >= 1
            and cs.state.waiting
            and cs.state.waiting.reason == "CrashLoopBackOff"
        )
        return cs if ok else None

    cs = wait_for("CrashLoopBackOff", looping)
    assert cs.last_state.terminated.exit_code == 3 and cs.last_state.terminated.reason == "Error"
    assert "restarting failed container=c pod=crasher_default" in cs.state.waiting.message
    assert v1.read_namespaced_pod("crasher", "default").status.phase == "Running"
    assert v1.read_namespaced_pod_log("crasher", "default") == "starting up\nboom\n"
    assert v1.read_namespaced_pod_log("crasher", "default", previous=True) == "starting up\nboom\n"
    assert v1.read_namespaced_pod_log("crasher", "default", tail_lines=1) == "boom\n"


POD_SERVER = textwrap.dedent(
    """
    import json, os, sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            if self.path == "/stream":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for part in (b"first", b"second"):
                    self.wfile.write(b"%x\\r\\n%s\\r\\n" % (len(part), part))
                    self.wfile.flush()
                    time.sleep(1.0)
                self.wfile.write(b"0\\r\\n\\r\\n")
                return
            if self.path == "/env":
                secret_dir = os.environ["SECRET_DIR"]
                body = json.dumps({
                    "env": {k: v for k, v in os.environ.items() if k in ("TOKEN", "POD", "HOTPOD_HOST", "SECRET_DIR")},
                    "file": open(os.path.join(secret_dir, "token")).read(),
                    "headers": dict(self.headers),
                }).encode()
            else:
                body = b"ok"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    HTTPServer((os.environ["HOTPOD_HOST"], 8080), H).serve_forever()
    """
)


@pytest.mark.slow
def test_pod_and_service_proxy_stream_and_the_pod_environment(
    api: client.ApiClient, fake_cluster: FakeCluster, tmp_path: Path
) -> None:
    v1 = client.CoreV1Api(api)
    script = tmp_path / "server.py"
    script.write_text(POD_SERVER)
    v1.create_namespaced_secret(
        "default", {"metadata": {"name": "tok"}, "stringData": {"token": "s3cret"}}
    )
    pod = {
        "metadata": {"name": "srv", "labels": {"app": "srv"}},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "python:3.11",
                    "command": ["python", str(script)],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "env": [
                        {
                            "name": "TOKEN",
                            "valueFrom": {"secretKeyRef": {"name": "tok", "key": "token"}},
                        },
                        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "HOTPOD_HOST", "value": "0.0.0.0"},
                        {"name": "SECRET_DIR", "value": "/etc/secrets"},
                    ],
                    "volumeMounts": [{"name": "s", "mountPath": "/etc/secrets"}],
                    "readinessProbe": {"tcpSocket": {"port": 8080}},
                }
            ],
            "volumes": [{"name": "s", "secret": {"secretName": "tok"}}],
        },
    }
    v1.create_namespaced_pod("default", pod)
    v1.create_namespaced_service(
        "default",
        {
            "metadata": {"name": "srv"},
            "spec": {
                "selector": {"app": "srv"},
                "ports": [{"name": "web", "port": 80, "targetPort": "http"}],
            },
        },
    )
    wait_for("the pod to be ready", lambda: ready(v1.read_namespaced_pod("srv", "default")))
    ip = v1.read_namespaced_pod("srv", "default").status.pod_ip

    auth = {"Authorization": f"Bearer {fake_cluster.token}", "X-Hotpod-Token": "pod-token"}
    status, body = http_get(
        f"{fake_cluster.url}/api/v1/namespaces/default/pods/srv:8080/proxy/env", auth
    )
    assert status == 200, body
    seen = json.loads(body)
    assert (
        seen["env"]["TOKEN"] == "s3cret"
        and seen["env"]["POD"] == "srv"
        and seen["env"]["HOTPOD_HOST"] == ip
    )
    assert seen["env"]["SECRET_DIR"].endswith("/fs/etc/secrets") and seen["file"] == "s3cret"
    assert (
        seen["headers"]["X-Hotpod-Token"] == "pod-token" and "Authorization" not in seen["headers"]
    )

    assert http_get(
        f"{fake_cluster.url}/api/v1/namespaces/default/services/srv:web/proxy/", auth
    ) == (200, b"ok")
    status, _ = http_get(f"{fake_cluster.url}/api/v1/namespaces/default/pods/srv:8080/proxy/env")
    assert status == 401

    conn = http.client.HTTPConnection(fake_cluster.url.removeprefix("http://"), timeout=10)
    start = time.monotonic()
    conn.request("GET", "/api/v1/namespaces/default/pods/srv:http/proxy/stream", headers=auth)
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.read1() == b"first"
    first_at = time.monotonic() - start
    assert resp.read() == b"second"
    conn.close()
    assert first_at < 0.8 < time.monotonic() - start  # the first chunk came before the end


SLEEP = ["python", "-c", "import time; time.sleep(60)"]


@pytest.mark.slow
def test_statefulset_job_knative_and_raycluster_make_their_pods(api: client.ApiClient) -> None:
    v1, apps, batch = client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api)
    custom = client.CustomObjectsApi(api)
    container = {"name": "c", "image": "python:3.11", "command": SLEEP}
    template = {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [container]}}
    sts = {
        "metadata": {"name": "db"},
        "spec": {
            "replicas": 2,
            "serviceName": "db",
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "db"}},
            "template": template,
        },
    }
    apps.create_namespaced_stateful_set("default", sts)
    job_container = {
        "name": "c",
        "image": "python:3.11",
        "command": ["python", "-c", "print('done')"],
    }
    job = {
        "metadata": {"name": "once"},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [job_container]}}},
    }
    batch.create_namespaced_job("default", job)
    annotations = {"autoscaling.knative.dev/initial-scale": "2"}
    ksvc = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {
            "template": {
                "metadata": {"annotations": annotations},
                "spec": {"containers": [container]},
            }
        },
    }
    custom.create_namespaced_custom_object("serving.knative.dev", "v1", "default", "services", ksvc)
    ray_template = {"spec": {"containers": [container]}}
    rc = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "rc"},
        "spec": {
            "headGroupSpec": {"rayStartParams": {}, "template": ray_template},
            "workerGroupSpecs": [
                {
                    "groupName": "workers",
                    "replicas": 1,
                    "minReplicas": 1,
                    "maxReplicas": 1,
                    "rayStartParams": {},
                    "template": ray_template,
                }
            ],
        },
    }
    custom.create_namespaced_custom_object("ray.io", "v1", "default", "rayclusters", rc)

    def names(selector: str) -> list[str]:
        return sorted(
            p.metadata.name
            for p in v1.list_namespaced_pod("default", label_selector=selector).items
            if ready(p)
        )

    assert wait_for("the StatefulSet's pods", lambda: names("app=db") == ["db-0", "db-1"])
    wait_for(
        "the Job to complete",
        lambda: (batch.read_namespaced_job("once", "default").status.succeeded or 0) == 1,
    )
    (job_pod,) = v1.list_namespaced_pod("default", label_selector="job-name=once").items
    assert (
        job_pod.status.phase == "Succeeded"
        and v1.read_namespaced_pod_log(job_pod.metadata.name, "default") == "done\n"
    )

    def ksvc_status() -> dict[str, Any]:
        return (
            custom.get_namespaced_custom_object(
                "serving.knative.dev", "v1", "default", "services", "web"
            ).get("status")
            or {}
        )

    status = wait_for(
        "the Knative Service to be ready", lambda: (s := ksvc_status()).get("url") and s
    )
    assert (
        status["url"] == "http://web.default.example.com"
        and status["latestReadyRevisionName"] == "web-00001"
    )
    assert len(names("serving.knative.dev/service=web")) == 2

    def rc_status() -> dict[str, Any]:
        return (
            custom.get_namespaced_custom_object("ray.io", "v1", "default", "rayclusters", "rc").get(
                "status"
            )
            or {}
        )

    status = wait_for(
        "the RayCluster to be ready", lambda: (s := rc_status()).get("state") == "ready" and s
    )
    assert status["readyWorkerReplicas"] == 1 and status["head"]["podIP"].startswith("127.0.0.")
    head, worker = names("ray.io/node-type=head"), names("ray.io/node-type=worker")
    assert head[0].startswith("rc-head-") and worker[0].startswith("rc-workers-worker-")
    assert v1.read_namespaced_service("rc-head-svc", "default").spec.selector == {
        "ray.io/cluster": "rc",
        "ray.io/node-type": "head",
    }


@pytest.mark.slow
def test_hotpod_manifests_run_the_pod_runtime(
    api: client.ApiClient, fake_cluster: FakeCluster
) -> None:
    from kubernetes import utils

    import hotpod as kt
    from hotpod.k8s import compile_manifests

    v1 = client.CoreV1Api(api)
    v1.create_namespaced_secret(
        "default", {"metadata": {"name": "train-hotpod-token"}, "stringData": {"token": "t0k"}}
    )
    for obj in compile_manifests("train", kt.Compute(cpus="0.5", memory="512Mi", replicas=2)):
        utils.create_from_dict(api, obj)
    pods = wait_for(
        "2 ready pods",
        lambda: (
            (
                p := v1.list_namespaced_pod(
                    "default", label_selector="hotpod.dev/service=train"
                ).items
            )
            and len(p) == 2
            and all(ready(x) for x in p)
            and p
        ),
    )
    auth = {"Authorization": f"Bearer {fake_cluster.token}"}
    status, body = http_get(
        f"{fake_cluster.url}/api/v1/namespaces/default/services/train:http/proxy/health", auth
    )
    assert status == 200 and json.loads(body)["pod"] in {p.metadata.name for p in pods}
    for pod in pods:
        assert f"listening on {pod.status.pod_ip}:32300" in v1.read_namespaced_pod_log(
            pod.metadata.name, "default"
        )


@pytest.mark.slow
def test_init_containers_run_first_and_share_an_empty_dir(api: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    write = "import os; open(os.environ['DATA'] + '/msg', 'w').write('from init')"
    read = "import os; print(open(os.environ['DATA'] + '/msg').read(), os.environ['GREETING'], flush=True)"
    env = [{"name": "DATA", "value": "/data"}]
    mounts = [{"name": "shared", "mountPath": "/data"}]
    v1.create_namespaced_config_map(
        "default", {"metadata": {"name": "conf"}, "data": {"GREETING": "hi"}}
    )
    pod = {
        "metadata": {"name": "two-step"},
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [
                {
                    "name": "init",
                    "image": "python:3.11",
                    "command": ["python", "-c", write],
                    "env": env,
                    "volumeMounts": mounts,
                }
            ],
            "containers": [
                {
                    "name": "main",
                    "image": "python:3.11",
                    "command": ["python", "-c", read],
                    "env": env,
                    "envFrom": [{"configMapRef": {"name": "conf"}}],
                    "volumeMounts": mounts,
                }
            ],
            "volumes": [{"name": "shared", "emptyDir": {}}],
        },
    }
    v1.create_namespaced_pod("default", pod)
    wait_for(
        "the pod to succeed",
        lambda: v1.read_namespaced_pod("two-step", "default").status.phase == "Succeeded",
    )
    status = v1.read_namespaced_pod("two-step", "default").status
    assert status.init_container_statuses[0].state.terminated.reason == "Completed"
    assert status.container_statuses[0].state.terminated.exit_code == 0
    assert v1.read_namespaced_pod_log("two-step", "default", container="main") == "from init hi\n"
