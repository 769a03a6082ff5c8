"""How the pod runtime starts in an image: as compiled, or installing hotpod first.

``HOTPOD_K8S_BOOTSTRAP`` (config ``kubernetes.bootstrap``):

- ``image`` (default): the container runs ``python -m hotpod.runtime.supervisor``; the image
  must have hotpod (no package index is needed at run time);
- ``pip``: the container runs a shell that starts the runtime when ``import hotpod`` works and
  otherwise first installs ``hotpod==<this client's version>`` with the image's pip, from the
  index the pod is configured for (``PIP_INDEX_URL``... in ``env_vars``); an image without a
  shell or pip cannot use it.
"""

from __future__ import annotations

import shlex
from typing import Any

from hotpod.k8s.pod import CONTAINER_NAME, RUNTIME_COMMAND

MODES = ("image", "pip")


def pip_command(version: str) -> list[str]:
    """The container command that installs ``hotpod==version`` when the image lacks it."""
    runtime = " ".join(RUNTIME_COMMAND)
    requirement = shlex.quote(f"hotpod=={version}")
    script = (
        'python -c "import hotpod" 2>/dev/null || '
        f"python -m pip install --no-cache-dir --disable-pip-version-check {requirement} || "
        f'{{ echo "hotpod: could not install {requirement} in the image" >&2; exit 1; }}; '
        f"exec {runtime}"
    )
    return ["/bin/sh", "-c", script]


def apply_bootstrap(template: dict[str, Any], mode: str, version: str) -> None:
    """Change the runtime container of a pod template for ``mode`` (in place)."""
    if mode == "image":
        return
    for container in (template.get("spec") or {}).get("containers") or []:
        if container.get("name") == CONTAINER_NAME and container.get("command") == RUNTIME_COMMAND:
            container["command"] = pip_command(version)


__all__ = ["MODES", "apply_bootstrap", "pip_command"]
