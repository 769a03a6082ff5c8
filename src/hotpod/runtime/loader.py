"""Loading the user's code into the worker, and swapping it for a new launch.

A launch spec (JSON, built by the client's deploy flow) says which code to load::

    {"launch_id": "...", "service": "train", "kind": "fn" | "cls",
     "code": {"manifest": "<id>" | None, "paths": ["", "src"], "module": "pkg.mod" | None,
              "script": "train.py" | None, "qualname": "train", "by_value": "<digest>" | None},
     "init": "<digest of pickled (args, kwargs)>" | None,
     "env": {"NAME": "value"}, "world_size": 2}

Loading materializes the code snapshot from the store, puts it on ``sys.path``, imports the module
(or the script, under a name other than ``__main__``, or unpickles the by-value object), and for a
class builds the instance. A failed load leaves the previous code in place.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import pickle
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotpod.store import Store, TreeUpdate

_RELOAD_FIELDS = ("kind", "code", "init", "env", "image", "app")


def reload_key(spec: dict[str, Any]) -> str:
    """What the worker depends on: when this is unchanged, nothing reloads."""
    return json.dumps({k: spec.get(k) for k in _RELOAD_FIELDS}, sort_keys=True)


@dataclass
class Loaded:
    """The code a worker serves: a function, or an instance of the user's class."""

    spec: dict[str, Any]
    obj: Any
    snapshot: Path | None
    paths: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return reload_key(self.spec)

    @property
    def launch_id(self) -> str:
        return str(self.spec.get("launch_id", ""))

    @property
    def kind(self) -> str:
        return str(self.spec.get("kind", "fn"))

    def resolve(self, method: str) -> tuple[Callable[..., Any] | None, Any]:
        """The callable for a call path, or ``(None, value)`` for a plain attribute."""
        if self.kind == "app":
            raise LookupError(
                f"service {self.spec.get('service')!r} is an app: send its requests to /app/PATH"
            )
        if self.kind == "fn":
            if method:
                raise LookupError(
                    f"service {self.spec.get('service')!r} is a function; call it without a method"
                )
            return self.obj, None
        if not method:
            raise LookupError("this service is a class: call one of its methods (POST /call/NAME)")
        if method.startswith("__") or not method.isidentifier():
            raise LookupError(f"{method!r} is not a method that can be called remotely")
        try:
            attr = getattr(self.obj, method)
        except AttributeError:
            public = sorted(
                n for n, v in inspect.getmembers(type(self.obj)) if callable(v) and n[0] != "_"
            )
            raise LookupError(
                f"{type(self.obj).__name__} has no attribute {method!r}; methods: "
                f"{', '.join(public) or '(none)'}"
            ) from None
        if callable(attr):
            return attr, None
        return None, attr


class LoadError(Exception):
    """Loading a launch failed; ``phase`` says where (sync, import, init)."""

    def __init__(self, phase: str, message: str, tb: str = "") -> None:
        super().__init__(message)
        self.phase = phase
        self.tb = tb


def _script_module_name(script: str) -> str:
    stem = Path(script).stem
    if stem.isidentifier() and stem not in sys.modules and stem not in sys.stdlib_module_names:
        return stem
    return f"_hotpod_script_{stem if stem.isidentifier() else 'main'}"


def _invalidate_finders(tree: Path | None, update: TreeUpdate | None) -> None:
    """Make imports see the files the update changed: only the finders of their directories
    when the update says which (a big project's other directories keep their listings),
    every finder otherwise."""
    if tree is None or update is None or update.previous_id is None:
        importlib.invalidate_caches()
        return
    directories = {tree}
    for rel in (*update.changed, *update.removed):  # and their ancestors: new packages too
        directories.update((tree / rel).parents)
    for directory in directories:
        finder = sys.path_importer_cache.get(str(directory))
        if finder is not None and hasattr(finder, "invalidate_caches"):
            finder.invalidate_caches()


def _loaded_script(path: Path) -> Any:
    """The module of a script already imported from this very file (only init args changed)."""
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) == str(path):
            return module
    return None


def _lookup(obj: Any, qualname: str) -> Any:
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _purge(previous: Loaded) -> dict[str, Any]:
    """Forget the modules imported from the previous code (and synced packages) so the new
    code imports fresh. Returns the modules it removed, so that a failed load can put them back.
    """
    removed: dict[str, Any] = {}
    roots = tuple(
        r if r.endswith(os.sep) else r + os.sep
        for r in ([str(previous.snapshot)] if previous.snapshot else []) + previous.paths
    )
    if not roots:
        return removed
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None) or ""
        if f.startswith(roots):
            removed[name] = sys.modules.pop(name)
    for p in previous.paths:
        while p in sys.path:
            sys.path.remove(p)
    return removed


def load(
    spec: dict[str, Any],
    store: Store,
    code_dir: Path,
    previous: Loaded | None,
    extra_paths: Sequence[str] = (),
    workdir: Path | None = None,
) -> Loaded:
    """Load the code a launch spec names. Raises :class:`LoadError`; ``previous`` stays usable."""
    import traceback

    code = spec.get("code") or {}
    snapshot: Path | None = None
    update: TreeUpdate | None = None
    previous_manifest = ((previous.spec.get("code") or {}).get("manifest")) if previous else None
    if code.get("manifest"):
        snapshot = code_dir / "current"  # the pod's own copy, brought up to date in place
        try:
            update = store.update_tree(code["manifest"], snapshot)
        except Exception as exc:
            raise LoadError(
                "sync", f"could not unpack the code: {exc}", traceback.format_exc()
            ) from None

    old_path = list(sys.path)
    old_env = dict(os.environ)
    before = set(sys.modules)
    purged: dict[str, Any] = {}
    if previous is not None and (
        previous_manifest != code.get("manifest")
        or previous.snapshot != snapshot
        or previous.spec.get("env") != spec.get("env")
        or previous.spec.get("image") != spec.get("image")
    ):  # new code, or an environment the code may read at import: import afresh
        purged = _purge(previous)  # (init args alone: the modules stay, the instance is new)
    paths = (
        [str(snapshot / p) if p else str(snapshot) for p in code.get("paths", [""])]
        if snapshot
        else []
    ) + [p for p in extra_paths if p not in code.get("paths", [])]
    for p in reversed(paths):
        while p in sys.path:  # a relaunch of the same snapshot must not stack duplicates
            sys.path.remove(p)
        sys.path.insert(0, p)
    for k in (previous.spec.get("env") or {}) if previous else {}:
        os.environ.pop(k, None)
    os.environ.update({k: str(v) for k, v in (spec.get("env") or {}).items()})
    _invalidate_finders(snapshot, update)
    phase = "import"
    try:
        if code.get("by_value"):
            import cloudpickle  # noqa: F401  (unpickling by-value code needs it importable)

            obj = pickle.loads(store.get_bytes(code["by_value"]))
        elif code.get("script"):
            assert snapshot is not None
            path = snapshot / code["script"]
            module = _loaded_script(path)
            if module is None:
                name = _script_module_name(code["script"])
                mod_spec = importlib.util.spec_from_file_location(name, path)
                if mod_spec is None or mod_spec.loader is None:
                    raise ImportError(f"cannot import {code['script']} from the code snapshot")
                module = importlib.util.module_from_spec(mod_spec)
                sys.modules[name] = module
                mod_spec.loader.exec_module(module)
            obj = _lookup(module, code["qualname"])
        else:
            module = importlib.import_module(code["module"])
            obj = _lookup(module, code["qualname"])
        if spec.get("kind") == "cls":
            phase = "init"
            args, kwargs = (
                pickle.loads(store.get_bytes(spec["init"])) if spec.get("init") else ((), {})
            )
            obj = obj(*args, **kwargs)
    except BaseException as exc:
        sys.path[:] = old_path
        os.environ.clear()
        os.environ.update(old_env)
        for name in set(sys.modules) - before:
            f = getattr(sys.modules[name], "__file__", None) or ""
            if (snapshot is not None and f.startswith(str(snapshot))) or name.startswith(
                "_hotpod_"
            ):
                del sys.modules[name]
        for name, mod in purged.items():  # the previous code keeps its modules and their state
            sys.modules.setdefault(name, mod)
        if previous is not None and previous.snapshot is not None:
            for p in previous.paths:
                if p not in sys.path:
                    sys.path.insert(0, p)
        if snapshot is not None and previous_manifest and previous_manifest != code["manifest"]:
            try:  # the files on disk go back to what the running code was loaded from
                store.update_tree(previous_manifest, snapshot)
            except Exception:
                pass
        what = "importing the code" if phase == "import" else "running __init__"
        raise LoadError(
            phase, f"{what} failed: {type(exc).__name__}: {exc}", traceback.format_exc()
        ) from None
    if workdir is not None:  # the image's WORKDIR, like a container's
        os.chdir(workdir)
    elif snapshot is not None:
        os.chdir(snapshot)
    return Loaded(spec=spec, obj=obj, snapshot=snapshot, paths=paths)
