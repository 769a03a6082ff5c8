"""What an Image's setup steps need from this machine, uploaded to the store.

``prepare_steps`` turns an Image's steps into the JSON step specs a pod's setup ledger runs:
local files the steps name (``copy`` sources, ``sync_package`` sources, pip requirements that are
local paths) are uploaded to the content-addressed store and named by manifest id, so a step's
identity changes exactly when what it copies changes, and pods never read the user's disk.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from hotpod import codesync
from hotpod.errors import SpecError
from hotpod.image import Image, ImageStep
from hotpod.store import FileEntry, Manifest, Store


def upload_path(store: Store, path: Path) -> tuple[str, bool]:
    """Upload a file or a directory tree; returns (manifest id, whether it was a single file)."""
    if path.is_dir():
        return codesync.sync(path, store).manifest_id, False
    st = path.stat()
    digest = store.put_file(path)
    manifest = Manifest({path.name: FileEntry(digest, FileEntry.mode_of(st.st_mode), st.st_size)})
    return store.put_manifest(manifest), True


def is_local_requirement(req: str) -> bool:
    """A pip requirement that names a path on this machine rather than a package index entry."""
    return req.startswith(("./", "../", "/", "~")) or (
        os.sep in req and Path(req).expanduser().exists()
    )


def package_source(package: str) -> Path:
    """The directory (or module file) ``sync_package`` copies: a path, or an importable name."""
    path = Path(package).expanduser()
    if path.exists():
        return path.resolve()
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin in (None, "built-in", "frozen"):
        raise SpecError(
            f"sync_package({package!r}): no such directory, and no importable package of that "
            "name on this machine"
        )
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).resolve()
    return Path(spec.origin).resolve()  # type: ignore[arg-type]


def _step_spec(step: ImageStep, store: Store) -> dict[str, Any]:
    spec = step.to_dict()
    kind = step.kind
    if kind == "pip_install":
        local: dict[str, str] = {}
        for req in spec["packages"]:
            if is_local_requirement(req):
                path = Path(req).expanduser().resolve()
                if not path.exists():
                    raise SpecError(f"{step}: local requirement {req!r} does not exist")
                local[req] = upload_path(store, path)[0]
        spec["local"] = local
    elif kind == "copy":
        source = Path(spec["local_path"]).expanduser().resolve()
        if not source.exists():
            raise SpecError(
                f"{step}: {spec['local_path']!r} does not exist (relative paths are taken from "
                f"the working directory, {Path.cwd()})"
            )
        spec["manifest"], spec["file"] = upload_path(store, source)
    elif kind == "sync_package":
        source = package_source(spec["package"])
        spec["name"] = source.stem if source.is_file() else source.name
        spec["manifest"], spec["file"] = upload_path(store, source)
    return spec


def prepare_steps(image: Image | None, store: Store) -> dict[str, Any]:
    """The ``image`` part of a launch spec: base image id and the runnable step specs."""
    if image is None:
        return {"image_id": None, "steps": []}
    return {"image_id": image.image_id, "steps": [_step_spec(s, store) for s in image.steps]}
