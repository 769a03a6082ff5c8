"""hotpod's configuration, read once from the environment into one typed object.

Settings come from environment variables, then from an optional file
``$HOTPOD_HOME/config.yaml`` for what the environment leaves unset::

    backend: kubernetes        # or local (the default)
    kubernetes:
      namespace: ml            # default: the kubeconfig context's namespace, else "default"
      context: prod            # default: the kubeconfig's current context
      reach: proxy             # auto (default) | direct | proxy
      runtime_image: my-team/hotpod-runtime:0.1
      bootstrap: image         # image (default: it has hotpod) | pip (installs it if missing)
                               # | init (copies it from bootstrap_image in an init container)
      bootstrap_image: my-team/hotpod-runtime:0.1.0-py3.11

The file is read only when it exists (so ``import hotpod`` stays fast without one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from hotpod.errors import ConfigError

BACKENDS = ("local", "kubernetes")
#: other names accepted for a backend
ALIASES = {"k8s": "kubernetes", "kube": "kubernetes"}
#: how the client reaches pods on Kubernetes: ``direct`` (pod IPs, from inside the cluster),
#: ``proxy`` (the API server's pod proxy, from outside), ``auto`` (direct when in a pod)
REACH_MODES = ("auto", "direct", "proxy")
CONFIG_FILE = "config.yaml"
_K8S_KEYS = (
    "namespace",
    "context",
    "reach",
    "runtime_image",
    "kubeconfig",
    "bootstrap",
    "bootstrap_image",
)
#: how the pod runtime starts in an image: ``image`` (it has hotpod), ``pip`` (installs it),
#: ``init`` (an init container copies it from a runtime image)
BOOTSTRAP_MODES = ("image", "pip", "init")
#: a broadcast to more pods than this goes down a tree of relaying pods (``HOTPOD_FANOUT_TREE``;
#: 0: never): on a 2-core machine the flat fan-out was faster at 16 and 32 pods, the most it
#: can run (docs/distributed.md#large-pools)
DEFAULT_FANOUT_TREE = 64


@dataclass(frozen=True)
class KubeSettings:
    """The Kubernetes backend's settings (None: take it from the kubeconfig)."""

    namespace: str | None = None  # HOTPOD_NAMESPACE
    context: str | None = None  # HOTPOD_K8S_CONTEXT
    reach: str = "auto"  # HOTPOD_K8S_REACH
    runtime_image: str | None = None  # HOTPOD_RUNTIME_IMAGE
    kubeconfig: str | None = None  # KUBECONFIG
    bootstrap: str = "image"  # HOTPOD_K8S_BOOTSTRAP
    bootstrap_image: str | None = None  # HOTPOD_K8S_BOOTSTRAP_IMAGE (the init mode's)
    in_cluster: bool = False  # KUBERNETES_SERVICE_HOST is set: this process runs in a pod


@dataclass(frozen=True)
class Settings:
    """Where hotpod keeps its state and which backend it uses.

    ``HOTPOD_HOME``     directory for the local controller, pods, store and tokens (``~/.hotpod``)
    ``HOTPOD_BACKEND``  ``local`` (the default) or ``kubernetes`` (alias ``k8s``)
    ``HOTPOD_POD``      set inside a pod; makes ``.to()`` return the local object
    ``HOTPOD_FANOUT_TREE``  ``fanout_tree``: a broadcast to more pods than this goes down a
                        tree of relaying pods (a whole number; 0: never; default 64)
    ``HOTPOD_NAMESPACE``, ``HOTPOD_K8S_CONTEXT``, ``HOTPOD_K8S_REACH``, ``HOTPOD_RUNTIME_IMAGE``,
    ``HOTPOD_K8S_BOOTSTRAP``, ``HOTPOD_K8S_BOOTSTRAP_IMAGE``, ``KUBECONFIG``: the Kubernetes backend's (see :class:`KubeSettings`)
    """

    home: Path
    backend: str
    in_pod: bool
    kube: KubeSettings = KubeSettings()
    fanout_tree: int = DEFAULT_FANOUT_TREE

    @property
    def store_dir(self) -> Path:
        return self.home / "store"

    @property
    def pods_dir(self) -> Path:
        return self.home / "pods"

    @property
    def volumes_dir(self) -> Path:
        return self.home / "volumes"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def controller_socket(self) -> Path:
        return self.home / "controller.sock"


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc}); fix or remove the file") from None
    if not isinstance(data, dict) or not isinstance(data.get("kubernetes", {}), dict):
        raise ConfigError(
            f"{path}: expected a mapping like 'backend: kubernetes' with an optional "
            "'kubernetes:' mapping"
        )
    unknown = set(data) - {"backend", "kubernetes"}
    unknown |= {f"kubernetes.{k}" for k in set(data.get("kubernetes") or {}) - set(_K8S_KEYS)}
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting(s) {', '.join(sorted(unknown))}; known: backend, "
            + ", ".join(f"kubernetes.{k}" for k in _K8S_KEYS)
        )
    return data


def _backend_name(value: str, where: str) -> str:
    name = value.strip().lower() or "local"
    name = ALIASES.get(name, name)
    if name not in BACKENDS:
        raise ConfigError(
            f"{where}={value!r}: expected one of {', '.join(BACKENDS)} (or k8s). "
            "Unset it to use the local backend."
        )
    return name


def _fanout_tree(value: str) -> int:
    if not value.strip():
        return DEFAULT_FANOUT_TREE
    try:
        pods = int(value)
    except ValueError:
        pods = -1
    if pods < 0:
        raise ConfigError(
            f"HOTPOD_FANOUT_TREE={value!r}: expected a whole number of pods, past which a "
            f"broadcast goes down a tree of relaying pods (0: never; unset: "
            f"{DEFAULT_FANOUT_TREE})"
        )
    return pods


def _kube(env: os._Environ[str] | dict[str, str], file: dict[str, Any]) -> KubeSettings:
    conf = file.get("kubernetes") or {}

    def pick(var: str, key: str) -> str | None:
        value = env.get(var) or conf.get(key)
        return str(value).strip() if value not in (None, "") else None

    reach = (pick("HOTPOD_K8S_REACH", "reach") or "auto").lower()
    if reach not in REACH_MODES:
        raise ConfigError(
            f"HOTPOD_K8S_REACH={reach!r}: expected one of {', '.join(REACH_MODES)} (direct: pod "
            "IPs, from inside the cluster; proxy: through the API server)"
        )
    bootstrap = (pick("HOTPOD_K8S_BOOTSTRAP", "bootstrap") or "image").lower()
    if bootstrap not in BOOTSTRAP_MODES:
        raise ConfigError(
            f"HOTPOD_K8S_BOOTSTRAP={bootstrap!r}: expected image (the image has hotpod), pip "
            "(the pod installs hotpod when its image lacks it) or init (an init container "
            "copies hotpod from the runtime image HOTPOD_K8S_BOOTSTRAP_IMAGE)"
        )
    return KubeSettings(
        namespace=pick("HOTPOD_NAMESPACE", "namespace"),
        context=pick("HOTPOD_K8S_CONTEXT", "context"),
        reach=reach,
        runtime_image=pick("HOTPOD_RUNTIME_IMAGE", "runtime_image"),
        kubeconfig=pick("KUBECONFIG", "kubeconfig"),
        bootstrap=bootstrap,
        bootstrap_image=pick("HOTPOD_K8S_BOOTSTRAP_IMAGE", "bootstrap_image"),
        in_cluster=bool(env.get("KUBERNETES_SERVICE_HOST")),
    )


def _read() -> Settings:
    env = os.environ
    home = Path(env.get("HOTPOD_HOME") or Path.home() / ".hotpod").expanduser().absolute()
    file = _read_file(home / CONFIG_FILE)
    if env.get("HOTPOD_BACKEND", "").strip():
        backend = _backend_name(env["HOTPOD_BACKEND"], "HOTPOD_BACKEND")
    else:
        backend = _backend_name(
            str(file.get("backend") or "local"), f"{home / CONFIG_FILE}: backend"
        )
    kube = _kube(env, file) if backend == "kubernetes" else KubeSettings()
    return Settings(
        home=home,
        backend=backend,
        in_pod=env.get("HOTPOD_POD") == "1",
        kube=kube,
        fanout_tree=_fanout_tree(env.get("HOTPOD_FANOUT_TREE", "")),
    )


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The settings of this process (read on first use; ``reload_settings()`` re-reads them)."""
    return _read()


def reload_settings() -> Settings:
    """Forget the cached settings and read the environment again (tests change HOTPOD_HOME)."""
    settings.cache_clear()
    return settings()
