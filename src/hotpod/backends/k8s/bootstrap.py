"""How the pod runtime starts in an image: as compiled, installing hotpod, or copied in.

``HOTPOD_K8S_BOOTSTRAP`` (config ``kubernetes.bootstrap``):

- ``image`` (default): the container runs ``python -m hotpod.runtime.supervisor``; the image
  must have hotpod (no package index is needed at run time);
- ``pip``: the container runs a shell that starts the runtime when ``import hotpod`` works and
  otherwise first installs ``hotpod==<this client's version>`` with the image's pip, from the
  index the pod is configured for (``PIP_INDEX_URL``... in ``env_vars``); an image without a
  shell or pip cannot use it;
- ``init``: an init container from the runtime image (``HOTPOD_K8S_BOOTSTRAP_IMAGE``, config
  ``kubernetes.bootstrap_image``; built from ``deploy/runtime.Dockerfile``, which installs
  hotpod and its dependencies with ``pip install --target`` into :data:`RUNTIME_SOURCE`) copies
  that tree into an ``emptyDir`` at :data:`RUNTIME_DIR`; the runtime container runs ``python -c``
  the copied tree's :mod:`.boot`, which checks that the copy fits the image's Python, puts it
  first on ``PYTHONPATH`` and execs the supervisor. No package index, no shell and no hotpod needed in
  the image, but the runtime image's Python minor version (and C library: glibc) must match the
  image's, since hotpod's dependencies have compiled extensions.

The change is made to compiled pod templates, in place (pure: no client, no I/O): to every
container that runs the runtime (the one with ``HOTPOD_POD`` in its environment), whether its
command is the runtime's own or a shell script ending in it (a Ray node's).
"""

from __future__ import annotations

import hashlib
import shlex
import sys
from dataclasses import dataclass
from typing import Any

from hotpod.backends.k8s.boot import INFO, SOURCE
from hotpod.k8s.pod import RUNTIME_COMMAND

MODES = ("image", "pip", "init")
#: Where the runtime image has hotpod and its dependencies (``pip install --target``), and the
#: file it writes next to them (its Python, C library and hotpod version).
RUNTIME_SOURCE, RUNTIME_INFO = SOURCE, INFO
#: Where the init container copies the runtime to, and the runtime container reads it from.
RUNTIME_DIR = "/hotpod-runtime"
INIT_CONTAINER = "hotpod-runtime"
RUNTIME_VOLUME = "hotpod-runtime"

_RUNTIME_TEXT = " ".join(RUNTIME_COMMAND)


def default_image(version: str) -> str:
    """The runtime image ``init`` uses unless one is named: for this client's Python, which a
    pod's must match anyway (functions travel by value as bytecode)."""
    return f"hotpod-runtime:{version}-py{sys.version_info[0]}.{sys.version_info[1]}"


def pip_command(version: str) -> list[str]:
    """The container command that installs ``hotpod==version`` when the image lacks it."""
    requirement = shlex.quote(f"hotpod=={version}")
    script = (
        'python -c "import hotpod" 2>/dev/null || '
        f"python -m pip install --no-cache-dir --disable-pip-version-check {requirement} || "
        f'{{ echo "hotpod: could not install {requirement} in the image" >&2; exit 1; }}; '
        f"exec {_RUNTIME_TEXT}"
    )
    return ["/bin/sh", "-c", script]


# The runtime container's command: run the copied tree's own boot.py (it checks the copy, then
# execs the supervisor), or say that nothing was copied. No "$(" (Kubernetes expands it).
_BOOT = (
    "import os, runpy, sys; "
    'f = os.path.join(os.environ["HOTPOD_RUNTIME_DIR"], "hotpod", "backends", "k8s", "boot.py"); '
    "os.path.isfile(f) or sys.exit("
    '"hotpod: the init container copied no hotpod runtime into %s; check the runtime image " '
    '"(HOTPOD_K8S_BOOTSTRAP_IMAGE): it must have hotpod in ' + RUNTIME_SOURCE + '" '
    '% os.environ["HOTPOD_RUNTIME_DIR"]); '
    'runpy.run_path(f, run_name="__main__")'
)


def init_wrapper(image: str, version: str) -> list[str]:
    """The runtime container's command in ``init`` mode: :mod:`.boot` from the copied tree,
    which checks it fits this image, then starts the supervisor with it first on
    ``PYTHONPATH`` (or exits 1 saying what differs and what to do)."""
    return ["python", "-c", _BOOT, image, version]


def init_container(image: str, runtime: dict[str, Any] | None = None) -> dict[str, Any]:
    """The init container that copies the runtime image's tree into the ``emptyDir``.

    It asks for the CPU and memory of the ``runtime`` container: a namespace whose
    ResourceQuota covers cpu/memory rejects a pod with a container that sets none, and a pod's
    request is the larger of its init containers' and the sum of the others', so this adds
    nothing to it (GPUs and other devices are not copied: a copy needs none).
    """
    container: dict[str, Any] = {
        "name": INIT_CONTAINER,
        "image": image,
        "command": ["cp", "-R", f"{RUNTIME_SOURCE}/.", "$(HOTPOD_RUNTIME_DIR)/"],
        "env": [{"name": "HOTPOD_RUNTIME_DIR", "value": RUNTIME_DIR}],
        "volumeMounts": [{"name": RUNTIME_VOLUME, "mountPath": RUNTIME_DIR}],
    }
    resources: dict[str, dict[str, Any]] = {}
    for part, amounts in ((runtime or {}).get("resources") or {}).items():
        kept = {k: v for k, v in (amounts or {}).items() if k in ("cpu", "memory")}
        if part in ("requests", "limits") and kept:
            resources[part] = kept
    if resources:
        container["resources"] = resources
    return container


def _runs_the_runtime(container: Any) -> bool:
    return isinstance(container, dict) and any(
        isinstance(e, dict) and e.get("name") == "HOTPOD_POD" for e in container.get("env") or []
    )


def _set_command(container: dict[str, Any], argv: list[str]) -> None:
    """Replace the runtime's command with ``argv``, also at the end of a shell script."""
    command = container.get("command")
    if command == RUNTIME_COMMAND:
        container["command"] = list(argv)
    elif (
        isinstance(command, list)
        and len(command) == 3
        and command[1] == "-c"
        and f"exec {_RUNTIME_TEXT}" in command[2]
    ):
        script = command[2].replace(f"exec {_RUNTIME_TEXT}", f"exec {shlex.join(argv)}")
        container["command"] = [command[0], "-c", script]


def _put_named(items: list[dict[str, Any]], item: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in items if i.get("name") != item["name"]] + [item]


@dataclass(frozen=True)
class Bootstrap:
    """A bootstrap mode with what it needs: the client's version and (``init``) the image."""

    mode: str = "image"
    version: str = ""
    image: str | None = None

    @classmethod
    def from_settings(cls, mode: str, image: str | None, version: str) -> Bootstrap:
        if mode == "init" and not image:
            image = default_image(version)
        return cls(mode, version, image if mode == "init" else None)

    def label(self, template_hash: str) -> str:
        """The pods' ``hotpod.dev/template`` label: the Compute's template and this mode (a
        change of either replaces the pods)."""
        if self.mode == "image":
            return template_hash[:16]
        if self.mode == "init":
            digest = hashlib.sha256(f"{self.image} {self.version}".encode()).hexdigest()
            return f"{template_hash[:12]}-init-{digest[:8]}"
        return f"{template_hash[:12]}-{self.mode}"

    def apply(self, template: dict[str, Any]) -> None:
        """Change a pod template (``metadata`` + ``spec``) for this mode, in place."""
        if self.mode == "image":
            return
        spec = template.get("spec") or {}
        runtime = [c for c in spec.get("containers") or [] if _runs_the_runtime(c)]
        if self.mode == "pip":
            for container in runtime:
                _set_command(container, pip_command(self.version))
            return
        assert self.mode == "init" and self.image
        if not runtime:
            return
        wrapper = init_wrapper(self.image, self.version)
        for container in runtime:
            _set_command(container, wrapper)
            env = {"name": "HOTPOD_RUNTIME_DIR", "value": RUNTIME_DIR}
            container["env"] = _put_named(container.get("env") or [], env)
            mount = {"name": RUNTIME_VOLUME, "mountPath": RUNTIME_DIR, "readOnly": True}
            container["volumeMounts"] = _put_named(container.get("volumeMounts") or [], mount)
        inits = spec.get("initContainers") or []
        spec["initContainers"] = [
            init_container(self.image, runtime[0]),
            *(c for c in inits if c.get("name") != INIT_CONTAINER),
        ]
        spec["volumes"] = _put_named(
            spec.get("volumes") or [], {"name": RUNTIME_VOLUME, "emptyDir": {}}
        )

    def apply_all(self, objects: list[dict[str, Any]]) -> None:
        """:meth:`apply` to every pod template of compiled objects."""
        from hotpod.k8s.byo import pod_templates

        for obj in objects:
            for template in pod_templates(obj):
                self.apply(template)


__all__ = [
    "INIT_CONTAINER",
    "MODES",
    "RUNTIME_DIR",
    "RUNTIME_INFO",
    "RUNTIME_SOURCE",
    "Bootstrap",
    "default_image",
    "init_container",
    "init_wrapper",
    "pip_command",
]
