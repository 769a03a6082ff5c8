"""Starts the pod runtime that an init container copied in (``HOTPOD_K8S_BOOTSTRAP=init``).

Runs in the pod as a file of the copied tree (``runpy.run_path``), under the image's own Python,
before anything of that tree is importable: standard library only, and nothing newer than the
oldest Python it may meet needs, so that a mismatch gets a message rather than a traceback.
Arguments: the runtime image and the client's hotpod version. It checks that the copy in
``$HOTPOD_RUNTIME_DIR`` fits this Python (the minor version the runtime image recorded in
``hotpod-runtime.json``, the same hotpod as the client, hotpod and its compiled dependencies
importing), then puts it first on ``PYTHONPATH`` and execs ``python -m hotpod.runtime.supervisor``.
Otherwise it exits 1 saying what differs and what to do (the pod's log, which a failing ``.to()``
shows).
"""

from __future__ import annotations

import json
import os
import platform
import sys

#: the file the runtime image writes next to the tree: its Python, C library and hotpod
INFO = "hotpod-runtime.json"
#: where the runtime image has the tree (deploy/runtime.Dockerfile)
SOURCE = "/opt/hotpod/runtime"
#: modules whose import proves the copy works here (the last two have compiled extensions)
CHECK_IMPORTS = ("hotpod", "httptools", "psutil")


class BootError(Exception):
    """The copied runtime cannot start here: ``why`` and ``fix``."""

    def __init__(self, why: str, fix: str) -> None:
        super().__init__(f"{why}. {fix}")
        self.why, self.fix = why, fix


def _here() -> str:
    libc = " ".join(platform.libc_ver()).strip() or "no glibc"
    return f"Python {sys.version.split()[0]} ({libc}, {sys.executable})"


def check(runtime: str, client: str) -> None:
    """Raise :class:`BootError` unless the tree in ``runtime`` can run here."""
    have = f"{sys.version_info[0]}.{sys.version_info[1]}"
    try:
        with open(os.path.join(runtime, INFO)) as f:
            info = json.load(f)
    except (OSError, ValueError):
        info = {}
    built = f"Python {info.get('python', '?')} ({info.get('libc', '?')})"
    rebuild = (
        f"Use a runtime image built for Python {have} (docker build --build-arg "
        f"PYTHON_VERSION={have} -f deploy/runtime.Dockerfile) in HOTPOD_K8S_BOOTSTRAP_IMAGE, "
        "or an image that has hotpod installed"
    )
    if not os.path.isdir(os.path.join(runtime, "hotpod")):
        raise BootError(
            "the init container copied no hotpod package there",
            f"The runtime image must have hotpod and its dependencies in {SOURCE}",
        )
    if info.get("python") not in (None, have):
        raise BootError(f"it was built for {built} and this image runs {_here()}", rebuild)
    if info.get("hotpod") not in (None, client):
        raise BootError(
            f"it has hotpod {info['hotpod']} and the client is hotpod {client}",
            f"Use the runtime image of hotpod {client} (--build-arg "
            f"HOTPOD_REQUIREMENT=hotpod=={client})",
        )
    if runtime not in sys.path:
        sys.path.insert(0, runtime)
    for name in CHECK_IMPORTS:
        try:
            __import__(name)
        except Exception as exc:
            raise BootError(
                f"{name} does not import with this image's {_here()}: "
                f"{type(exc).__name__}: {exc}; the runtime was built for {built}",
                f"The runtime image must have hotpod's dependencies in {SOURCE}, built for this "
                f"image's Python minor version and C library. {rebuild}",
            ) from None


def main(argv: list[str]) -> None:
    image, client = [*argv, "?", "?"][:2]
    runtime = os.environ.get("HOTPOD_RUNTIME_DIR", "")
    try:
        check(runtime, client)
    except BootError as exc:
        sys.stderr.write(
            f"hotpod: cannot start the pod runtime copied from the runtime image {image} "
            f"(HOTPOD_K8S_BOOTSTRAP=init) into {runtime}: {exc}\n"
        )
        sys.exit(1)
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = runtime + (os.pathsep + path if path else "")
    os.execv(sys.executable, [sys.executable, "-m", "hotpod.runtime.supervisor"])


if __name__ == "__main__":
    main(sys.argv[1:])
