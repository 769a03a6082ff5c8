"""Where the user's function or class comes from, so a pod can load the same object.

Three cases, tried in order:

* defined in a module under the project root: imported on the pod by module name, with the
  module's import root (``src/`` in a src layout) on ``sys.path``;
* defined in the ``__main__`` script: the script is imported on the pod by file path under a
  name other than ``__main__`` (so its ``if __name__ == "__main__":`` block does not run);
* anything else (a REPL, a notebook, a nested function): sent by value with cloudpickle.
"""

from __future__ import annotations

import functools
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotpod.codesync import find_project_root


@dataclass(frozen=True)
class CodeRef:
    root: Path | None  # project root to sync; None: nothing to sync
    paths: tuple[str, ...]  # import roots relative to the project root ("" is the root)
    module: str | None
    script: str | None  # path of the __main__ script relative to the root
    qualname: str
    by_value: bytes | None  # cloudpickle of the object when it cannot be imported by name

    def spec(self, manifest: str | None, by_value_digest: str | None) -> dict[str, Any]:
        return {
            "manifest": manifest,
            "paths": list(self.paths),
            "module": self.module,
            "script": self.script,
            "qualname": self.qualname,
            "by_value": by_value_digest,
        }


def _source_file(obj: Any) -> Path | None:
    try:
        f = inspect.getsourcefile(obj) or inspect.getfile(obj)
    except (TypeError, OSError):
        return None
    if not f or f.startswith("<"):
        return None
    p = Path(f).absolute()
    return p if p.is_file() else None


def _importable(module: Any, qualname: str, obj: Any) -> bool:
    if "<locals>" in qualname:
        return False
    target = module
    try:
        for part in qualname.split("."):
            target = getattr(target, part)
    except AttributeError:
        return False
    return target is obj or getattr(target, "__wrapped__", None) is obj


def _by_value(obj: Any, root: Path | None) -> CodeRef:
    import cloudpickle

    return CodeRef(
        root=root,
        paths=("",),
        module=None,
        script=None,
        qualname=getattr(obj, "__qualname__", "obj"),
        by_value=cloudpickle.dumps(obj, protocol=5),
    )


def _cwd_project() -> Path | None:
    """The project around the working directory, if there is one (for by-value code)."""
    cwd = Path.cwd()
    root = find_project_root(cwd)
    markers = ("pyproject.toml", ".git", "setup.py", "setup.cfg")
    return root if any((root / m).exists() for m in markers) else None


@functools.lru_cache(maxsize=1)
def _install_dirs() -> tuple[Path, ...]:
    import sysconfig

    paths = sysconfig.get_paths()
    keys = ("stdlib", "platstdlib", "purelib", "platlib")
    return tuple(Path(paths[k]).absolute() for k in keys if paths.get(k))


def _installed(file: Path) -> bool:
    """True for files of the Python installation (stdlib, site-packages): pods have them."""
    if any(file.is_relative_to(base) for base in _install_dirs()):
        return True
    return "site-packages" in file.parts or "dist-packages" in file.parts


def resolve(obj: Any) -> CodeRef:
    """Find how a pod can load ``obj`` (a function or class)."""
    module_name = getattr(obj, "__module__", None)
    qualname = str(getattr(obj, "__qualname__", None) or getattr(obj, "__name__", ""))
    module = sys.modules.get(module_name or "")
    file = _source_file(obj)
    importable = module is not None and _importable(module, qualname, obj)
    installed = file is None or _installed(file)  # a builtin or an installed package's object
    if importable and installed and module_name != "__main__":
        return CodeRef(None, (), module_name, None, qualname, None)
    if module is None or file is None or not _importable(module, qualname, obj):
        return _by_value(obj, _cwd_project())
    root = find_project_root(file)
    try:
        rel = file.relative_to(root)
    except ValueError:
        return _by_value(obj, _cwd_project())
    if module_name == "__main__":
        return CodeRef(
            root=root,
            paths=(rel.parent.as_posix() if rel.parent != Path(".") else "",),
            module=None,
            script=rel.as_posix(),
            qualname=qualname,
            by_value=None,
        )
    # the import root: strip the module's dotted path from the file's path
    parts = module_name.split(".")  # type: ignore[union-attr]
    depth = len(parts) if file.stem != "__init__" else len(parts) + 1
    import_root = file.parents[depth - 1]
    try:
        import_rel = import_root.relative_to(root).as_posix()
    except ValueError:
        return _by_value(obj, _cwd_project())
    return CodeRef(
        root=root,
        paths=("" if import_rel == "." else import_rel,),
        module=module_name,
        script=None,
        qualname=qualname,
        by_value=None,
    )
