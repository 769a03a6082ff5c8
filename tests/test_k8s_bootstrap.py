"""How the pod runtime starts in an image (``HOTPOD_K8S_BOOTSTRAP``), without a cluster: the
``init`` mode's pod template changes, its boot check in the pod, the runtime image's
Dockerfile, and the pod name a runtime takes when no backend gives it one.

The init mode end to end (the init container copying, the pod importing hotpod from the copy) is
``test_k8s_e2e.py::test_the_init_bootstrap_runs_hotpod_copied_from_the_runtime_image``.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hotpod
import hotpod as kt
from hotpod import __version__
from hotpod.backends.base import Plan
from hotpod.backends.k8s import bootstrap
from hotpod.backends.k8s.backend import TEMPLATE_LABEL, KubernetesBackend
from hotpod.backends.k8s.bootstrap import Bootstrap, init_wrapper
from hotpod.config import ConfigError, reload_settings
from hotpod.dockerfile import parse_dockerfile
from hotpod.k8s import compile_manifests
from hotpod.k8s.byo import pod_templates
from hotpod.runtime.supervisor import pod_name

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "deploy" / "runtime.Dockerfile"
IMAGE = "my-team/hotpod-runtime:1-py3.11"
INIT = Bootstrap("init", "0.1.0", IMAGE)


def runtime_containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        c
        for c in template["spec"]["containers"]
        if any(e["name"] == "HOTPOD_POD" for e in c.get("env") or [])
    ]


def _deployment(*init: dict[str, Any]) -> dict[str, Any]:
    """A user's Deployment of one container (no resources), with ``init`` containers."""
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "python:3.11"}]}
    if init:
        spec["initContainers"] = list(init)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "w"},
        "spec": {
            "selector": {"matchLabels": {"app": "w"}},
            "template": {"metadata": {"labels": {"app": "w"}}, "spec": spec},
        },
    }


# -- the pod template ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "compute",
    [
        kt.Compute(cpus="1"),
        kt.Compute(cpus="1").autoscale(min_scale=1, max_scale=3),
        kt.Compute(cpus="1", image=kt.Image("rayproject/ray:2.9.0")).distribute("ray", workers=2),
        kt.Compute.from_manifest(_deployment({"name": "theirs", "image": "busybox"})),
    ],
    ids=["deployment", "knative", "ray", "from_manifest"],
)
def test_init_reaches_every_runtime_container_and_applies_once(compute: kt.Compute) -> None:
    objects = compile_manifests("svc", compute)
    INIT.apply_all(objects)
    templates = [t for o in objects for t in pod_templates(o)]
    assert templates
    for template in templates:
        spec = template["spec"]
        (runtime,) = runtime_containers(template)
        argv = init_wrapper(IMAGE, "0.1.0")
        command = runtime["command"]
        if command[0] == "/bin/bash":  # a Ray node: its script ends by exec'ing the runtime
            assert command[2].endswith("exec " + " ".join(_quoted(argv)))
            assert command[2].startswith("ray start")
        else:
            assert command == argv
        assert {"name": "HOTPOD_RUNTIME_DIR", "value": "/hotpod-runtime"} in runtime["env"]
        assert {
            "name": "hotpod-runtime",
            "mountPath": "/hotpod-runtime",
            "readOnly": True,
        } in runtime["volumeMounts"]
        assert spec["initContainers"][0] == bootstrap.init_container(IMAGE, runtime)
        assert spec["initContainers"][0]["image"] == IMAGE
        assert {"name": "hotpod-runtime", "emptyDir": {}} in spec["volumes"]
        again = copy.deepcopy(template)
        INIT.apply(again)
        assert again == template  # applying it twice changes nothing more
    if compute.manifest is not None:  # the user's own init container is kept, after ours
        assert [c["name"] for c in templates[0]["spec"]["initContainers"]] == [
            "hotpod-runtime",
            "theirs",
        ]


def test_the_init_container_asks_for_the_runtimes_cpu_and_memory_but_no_gpu() -> None:
    # (a ResourceQuota on cpu/memory rejects a pod with a container that sets none)
    objects = compile_manifests("svc", kt.Compute(cpus="2", memory="4Gi", gpus="1"))
    INIT.apply_all(objects)
    (template,) = [t for o in objects for t in pod_templates(o)]
    (init,) = template["spec"]["initContainers"]
    assert init["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
    assert "nvidia.com/gpu" not in init["resources"].get("limits", {})
    assert template["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    bare = compile_manifests("svc", kt.Compute.from_manifest(_deployment()))  # none set: none asked
    INIT.apply_all(bare)
    assert "resources" not in next(pod_templates(bare[0]))["spec"]["initContainers"][0]


def _quoted(argv: list[str]) -> list[str]:
    import shlex

    return [shlex.quote(a) for a in argv]


def test_the_init_command_leaves_nothing_for_kubernetes_to_expand() -> None:
    # Kubernetes expands $(VAR) in commands: only the init container's destination may use it
    (_, _, script, *_) = init_wrapper(IMAGE, "0.1.0")
    assert "$" not in script
    assert bootstrap.init_container(IMAGE)["command"][-1] == "$(HOTPOD_RUNTIME_DIR)/"


def test_pip_and_image_modes_leave_the_template_as_before_except_the_command() -> None:
    objects = compile_manifests("svc", kt.Compute(cpus="1"))
    plain = copy.deepcopy(objects)
    Bootstrap("image", "0.1.0").apply_all(objects)
    assert objects == plain
    Bootstrap("pip", "0.1.0").apply_all(objects)
    container = objects[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == bootstrap.pip_command("0.1.0")
    container["command"] = plain[0]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert objects == plain


def test_the_template_label_changes_with_the_mode_and_the_runtime_image() -> None:
    digest = "a" * 64
    labels = {
        Bootstrap("image", "0.1.0").label(digest),
        Bootstrap("pip", "0.1.0").label(digest),
        INIT.label(digest),
        Bootstrap("init", "0.1.0", "other/runtime:1").label(digest),
        Bootstrap("init", "0.2.0", IMAGE).label(digest),
    }
    assert len(labels) == 5 and all(len(x) <= 63 for x in labels)
    assert Bootstrap("image", "0.1.0").label(digest) == digest[:16]  # as before


# -- settings and the backend ---------------------------------------------------------------------


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    for var in ("HOTPOD_NAMESPACE", "HOTPOD_K8S_REACH", "KUBECONFIG", "HOTPOD_K8S_BOOTSTRAP_IMAGE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOTPOD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HOTPOD_BACKEND", "kubernetes")
    monkeypatch.setenv("HOTPOD_K8S_REACH", "direct")
    yield monkeypatch
    monkeypatch.undo()
    reload_settings()


def test_the_bootstrap_settings(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("HOTPOD_K8S_BOOTSTRAP", "INIT")
    kube = reload_settings().kube
    assert (kube.bootstrap, kube.bootstrap_image) == ("init", None)
    default = Bootstrap.from_settings(kube.bootstrap, kube.bootstrap_image, "0.1.0")
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert default.image == f"hotpod-runtime:0.1.0-py{python}"
    env.delenv("HOTPOD_K8S_BOOTSTRAP")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "config.yaml").write_text(
        f"kubernetes:\n  bootstrap: init\n  bootstrap_image: {IMAGE}\n"
    )
    kube = reload_settings().kube
    assert (kube.bootstrap, kube.bootstrap_image) == ("init", IMAGE)
    env.setenv("HOTPOD_K8S_BOOTSTRAP", "copy")
    with pytest.raises(ConfigError, match=r"'copy'.*or init \(an init container copies"):
        reload_settings()


def test_a_deploy_with_the_init_bootstrap(env: pytest.MonkeyPatch) -> None:
    from test_k8s_backend import FakeKube

    env.setenv("HOTPOD_K8S_BOOTSTRAP", "init")
    env.setenv("HOTPOD_K8S_BOOTSTRAP_IMAGE", IMAGE)
    backend = KubernetesBackend(reload_settings())
    fake = FakeKube()
    backend._kube = fake  # type: ignore[assignment]
    backend.watch = lambda name: None  # type: ignore[method-assign]
    compute = kt.Compute(replicas=1, image=kt.Image("python:3.11"))
    plan = Plan("svc", 1, {}, meta={"kind": "fn"}, compute=compute)
    backend.apply(plan)
    template = fake.objects["/apis/apps/v1/namespaces/default/deployments/svc"]["spec"]["template"]
    (init,) = template["spec"]["initContainers"]
    assert init["image"] == IMAGE
    assert template["spec"]["containers"][0]["command"] == init_wrapper(IMAGE, __version__)
    label = template["metadata"]["labels"][TEMPLATE_LABEL]
    assert label == Bootstrap("init", __version__, IMAGE).label(compute.template_hash())


# -- the boot check in the pod ------------------------------------------------------------------


def make_runtime(root: Path, **info: str) -> Path:
    """A runtime tree as the runtime image has it: hotpod (this one) and its info file."""
    tree = root / "runtime"
    shutil.copytree(
        Path(hotpod.__file__).parent, tree / "hotpod", ignore=shutil.ignore_patterns("__pycache__")
    )
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    record = {"python": python, "libc": "glibc 2.36", "hotpod": __version__, **info}
    (tree / bootstrap.RUNTIME_INFO).write_text(json.dumps(record))
    return tree


def boot(tree: Path, python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    argv = init_wrapper(IMAGE, __version__)
    return subprocess.run(
        [python, *argv[1:]],
        env={"HOTPOD_RUNTIME_DIR": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_boot_refuses_a_runtime_built_for_another_python(tmp_path: Path) -> None:
    done = boot(make_runtime(tmp_path, python="3.9"))
    assert done.returncode == 1
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert f"runtime image {IMAGE}" in done.stderr
    assert "it was built for Python 3.9 (glibc 2.36)" in done.stderr
    assert f"this image runs Python {sys.version.split()[0]}" in done.stderr
    assert f"--build-arg PYTHON_VERSION={python}" in done.stderr


def test_boot_refuses_another_hotpod_version_and_an_empty_copy(tmp_path: Path) -> None:
    done = boot(make_runtime(tmp_path, hotpod="0.0.1"))
    assert done.returncode == 1
    assert f"it has hotpod 0.0.1 and the client is hotpod {__version__}" in done.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    done = boot(empty)
    assert done.returncode == 1
    assert f"copied no hotpod runtime into {empty}" in done.stderr


def test_boot_says_which_dependency_does_not_import(tmp_path: Path) -> None:
    # a Python without hotpod's dependencies (isolated from this venv's site-packages)
    done = subprocess.run(
        [sys.executable, "-I", "-S", *init_wrapper(IMAGE, __version__)[1:]],
        env={"HOTPOD_RUNTIME_DIR": str(make_runtime(tmp_path))},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "does not import with this image's Python" in done.stderr
    assert "ModuleNotFoundError: No module named" in done.stderr


def test_boot_starts_the_supervisor_from_the_copy(tmp_path: Path) -> None:
    tree = make_runtime(tmp_path)
    argv = init_wrapper(IMAGE, __version__)
    env = {
        "HOTPOD_RUNTIME_DIR": str(tree),
        "PATH": "/usr/bin:/bin",
        "HOTPOD_PORT": "0",
        "PYTHONPATH": "/the/images/own",
        "HOSTNAME": "web-00001-deployment-abc12-xyz45",
    }
    proc = subprocess.Popen([sys.executable, *argv[1:]], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "hotpod-supervisor: listening on" in line
        # the pod's name from its hostname (no HOTPOD_POD_NAME, as in a Knative pod)
        assert "pod=web-00001-deployment-abc12-xyz45" in line
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
        assert f"PYTHONPATH={tree}:/the/images/own".encode() in environ
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[1:3] == [b"-m", b"hotpod.runtime.supervisor"]  # exec'd: same pid
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


# -- the runtime image ----------------------------------------------------------------------------


def test_the_runtime_dockerfile_builds_what_the_init_bootstrap_copies() -> None:
    image = parse_dockerfile(DOCKERFILE)
    assert image.image_id == "python:3.11-slim"
    (run,) = [s for s in image.to_dict()["steps"] if s["kind"] == "run_bash"]
    command = " ".join(run["commands"])
    assert f"--target {bootstrap.RUNTIME_SOURCE} " in command
    assert f'"hotpod=={__version__}"' in command  # the default requirement is this version
    assert f"{bootstrap.RUNTIME_SOURCE}/{bootstrap.RUNTIME_INFO}" in command
    for key in ('"python"', '"libc"', '"hotpod"'):
        assert key in command  # what boot.py reads


# -- the pod's name -------------------------------------------------------------------------------


def test_the_pod_name_falls_back_to_the_hostname() -> None:
    import socket

    assert pod_name({"HOTPOD_POD_NAME": "a", "HOSTNAME": "b"}) == "a"
    assert pod_name({"HOTPOD_POD_NAME": "", "HOSTNAME": "b"}) == "b"
    assert pod_name({}) == socket.gethostname()
