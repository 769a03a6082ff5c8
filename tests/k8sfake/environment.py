"""What a container needs before its process starts: volumes, environment and command line.

A pod's filesystem is a directory: each volume is a directory (a PVC's is shared by every pod
that claims it and outlives them) linked at ``<pod>/fs<mountPath>``, and environment values
naming an absolute path at, under or above a mount point are rewritten to point into it.
Command arguments and file contents are not rewritten.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from kubernetes.utils import parse_quantity

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
#: Interpreter names a container command may start with; they all run this test's Python.
_PYTHONS = re.compile(r"^python(3(\.\d+)?)?$")


class ConfigError(Exception):
    """The container cannot be created yet (``CreateContainerConfigError`` and the like)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names are replaced, ``$$`` escapes, the rest
    stays as written."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR.sub(sub, value)


def _lookup(store: Any, kinds: Any, kind: str, ns: str, name: str) -> dict[str, Any] | None:
    return store.get(kinds(kind), ns, name)


def _data(obj: dict[str, Any], secret: bool) -> dict[str, str]:
    if secret:
        return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
    return dict(obj.get("data") or {})


def _field_ref(pod: dict[str, Any], path: str) -> str:
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    m = re.match(r"^metadata\.(labels|annotations)\['(.+)'\]$", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    values = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": status.get("podIP"),
        "status.podIPs": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
        "status.hostIPs": status.get("hostIP"),
    }
    if path not in values:
        raise ConfigError("CreateContainerConfigError", f"unsupported fieldPath: {path}")
    return str(values[path] or "")


def _resource_ref(container: dict[str, Any], ref: dict[str, Any], node: dict[str, Any]) -> str:
    section, _, res = ref["resource"].partition(".")
    amounts = (container.get("resources") or {}).get(section) or {}
    value = amounts.get(res)
    amount = parse_quantity(value) if value is not None else node.get(res, 0)
    divisor = parse_quantity(ref.get("divisor", "1"))
    quotient = amount / divisor
    return str(int(-(-quotient // 1)))  # rounded up, as the kubelet does


def container_env(
    store: Any,
    kinds: Any,
    pod: dict[str, Any],
    container: dict[str, Any],
    node: dict[str, Any],
) -> dict[str, str]:
    """The container's variables from ``envFrom`` and ``env`` (Secrets and ConfigMaps read from
    the API); ConfigError when one it needs is missing."""
    ns = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        for field, kind, secret in (
            ("secretRef", "secrets", True),
            ("configMapRef", "configmaps", False),
        ):
            ref = source.get(field)
            if ref is None:
                continue
            obj = _lookup(store, kinds, kind, ns, ref["name"])
            if obj is None:
                if ref.get("optional"):
                    continue
                word = "secret" if secret else "configmap"
                raise ConfigError("CreateContainerConfigError", f'{word} "{ref["name"]}" not found')
            for k, v in _data(obj, secret).items():
                env[source.get("prefix", "") + k] = v
    for var in container.get("env") or []:
        name = var["name"]
        if "value" in var or "valueFrom" not in var:
            env[name] = expand(str(var.get("value", "")), env)
            continue
        src = var["valueFrom"]
        if "fieldRef" in src:
            env[name] = _field_ref(pod, src["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in src:
            env[name] = _resource_ref(container, src["resourceFieldRef"], node)
        else:
            secret = "secretKeyRef" in src
            ref = src["secretKeyRef"] if secret else src["configMapKeyRef"]
            kind, word = ("secrets", "secret") if secret else ("configmaps", "configmap")
            obj = _lookup(store, kinds, kind, ns, ref["name"])
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ConfigError("CreateContainerConfigError", f'{word} "{ref["name"]}" not found')
            data = _data(obj, secret)
            if ref["key"] not in data:
                if ref.get("optional"):
                    continue
                title = "Secret" if secret else "ConfigMap"
                raise ConfigError(
                    "CreateContainerConfigError",
                    f"couldn't find key {ref['key']} in {title} {ns}/{ref['name']}",
                )
            env[name] = data[ref["key"]]
    return env


def prepare_volumes(
    store: Any, kinds: Any, pod: dict[str, Any], pod_dir: Path, shared: Path
) -> dict[str, Path]:
    """Make each volume's directory; ConfigError when a Secret or ConfigMap is missing."""
    ns = pod["metadata"]["namespace"]
    out: dict[str, Path] = {}
    for vol in pod["spec"].get("volumes") or []:
        name = vol["name"]
        path = pod_dir / "volumes" / name
        if "persistentVolumeClaim" in vol:
            path = shared / "pvc" / ns / vol["persistentVolumeClaim"]["claimName"]
        elif "secret" in vol or "configMap" in vol:
            secret = "secret" in vol
            src = vol["secret"] if secret else vol["configMap"]
            ref = src.get("secretName") if secret else src.get("name")
            obj = _lookup(store, kinds, "secrets" if secret else "configmaps", ns, ref)
            if obj is None and not src.get("optional"):
                word = "secret" if secret else "configmap"
                raise ConfigError(
                    "ContainerCreating",
                    f'MountVolume.SetUp failed for volume "{name}" : {word} "{ref}" not found',
                )
            data = _data(obj, secret) if obj is not None else {}
            items = src.get("items") or [{"key": k, "path": k} for k in data]
            path.mkdir(parents=True, exist_ok=True)
            for item in items:
                if item["key"] in data:
                    target = path / item["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(data[item["key"]])
        path.mkdir(parents=True, exist_ok=True)
        out[name] = path
    return out


def mount(container: dict[str, Any], volumes: dict[str, Path], fs: Path) -> list[str]:
    """Link each of the container's mounts into the pod's filesystem; returns the mount paths."""
    paths = []
    for m in container.get("volumeMounts") or []:
        source = volumes.get(m["name"])
        if source is None:
            raise ConfigError(
                "CreateContainerConfigError", f'volume "{m["name"]}" of a mount is not in the pod'
            )
        if m.get("subPath"):
            source = source / m["subPath"]
            source.mkdir(parents=True, exist_ok=True)
        link = fs / m["mountPath"].lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            if link.resolve() != source.resolve():
                if link.is_symlink() or link.is_file():
                    link.unlink()
                else:
                    shutil.rmtree(link)
                link.symlink_to(source)
        else:
            link.symlink_to(source)
        paths.append(m["mountPath"].rstrip("/") or "/")
    return paths


def rewrite_path(value: str, mounts: list[str], fs: Path) -> str:
    """A path at, under or above a mount point, moved into the pod's filesystem."""
    if not value.startswith("/"):
        return value
    for mp in mounts:
        if value == mp or value.startswith(mp + "/") or mp.startswith(value.rstrip("/") + "/"):
            return str(fs) + value
    return value


def base_env(pod: dict[str, Any], fs: Path, api_port: int) -> dict[str, str]:
    """What a container has before its own variables: a PATH whose ``python`` is this test's
    interpreter, a home and temp directory in the pod, the pod's hostname and the API's
    address (as ``KUBERNETES_SERVICE_HOST/PORT``). Nothing of the test's own environment."""
    home = fs / "root"
    tmp = fs / "tmp"
    home.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.pathsep.join(
            [str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]
        ),
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "LANG": "C.UTF-8",
        "HOSTNAME": pod["metadata"]["name"],
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(api_port),
    }


def command_line(container: dict[str, Any], env: dict[str, str]) -> list[str]:
    """``command`` + ``args`` with ``$(VAR)`` expanded and the program found on the PATH."""
    argv = [expand(str(a), env) for a in (container.get("command") or [])]
    argv += [expand(str(a), env) for a in (container.get("args") or [])]
    if not argv:
        raise ConfigError(
            "CreateContainerError",
            f'container "{container["name"]}" has no command: the fake cluster cannot run an '
            "image's own entrypoint",
        )
    if _PYTHONS.match(argv[0]):
        argv[0] = sys.executable
    elif "/" not in argv[0]:
        found = shutil.which(argv[0], path=env.get("PATH"))
        if found is None:
            raise ConfigError(
                "StartError",
                f'exec: "{argv[0]}": executable file not found in $PATH',
            )
        argv[0] = found
    return argv


def requests_of(pod: dict[str, Any]) -> dict[str, Any]:
    """The pod's requests per resource (a limit with no request counts as the request, as the
    API server defaults it), summed over containers; init containers count by their max."""
    total: dict[str, Any] = {}
    for c in pod["spec"].get("containers") or []:
        res = c.get("resources") or {}
        amounts = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        for k, v in amounts.items():
            total[k] = total.get(k, 0) + parse_quantity(v)
    for c in pod["spec"].get("initContainers") or []:
        res = c.get("resources") or {}
        amounts = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        for k, v in amounts.items():
            total[k] = max(total.get(k, 0), parse_quantity(v))
    return total
