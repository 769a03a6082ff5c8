"""Directories that hold a manifest's files: their markers and the helpers that edit them.

A snapshot or in-place tree records its manifest id in :data:`MARKER`; an in-place update notes
where it is heading in :data:`PENDING`. The functions here write files atomically, check and
remove files, prune emptied directories and stale bytecode, for :meth:`Store.materialize` and
:meth:`Store.update_tree` (:mod:`hotpod.store.base`) and for :class:`LocalStore`.
"""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from collections.abc import Iterable
from pathlib import Path

from hotpod.store.manifest import _HEX64, FileEntry, hash_file

MARKER = ".hotpod-manifest"
"""Name of the file inside a snapshot directory that records its manifest id."""
PENDING = ".hotpod-manifest.next"
"""Name of the file inside an in-place tree that lists the manifest ids an update is heading to."""
RESERVED = frozenset({MARKER, PENDING})
"""Top-level names a manifest may not use: they hold a tree's own bookkeeping."""
_TMP_PREFIX = ".hotpod-tmp-"


def _read_pending(tree: Path) -> list[str]:
    try:
        text = (Path(tree) / PENDING).read_text()
    except (OSError, UnicodeDecodeError):
        return []
    return [line for line in text.split() if _HEX64.fullmatch(line)]


def _write_pending(tree: Path, ids: list[str]) -> None:
    _atomic_write(tree / PENDING, "\n".join(dict.fromkeys(ids)).encode(), mode=0o644)


def _holds(target: Path, entry: FileEntry) -> bool:
    """Whether ``target`` is a regular file with the entry's size, mode and content."""
    try:
        st = os.lstat(target)
    except OSError:
        return False
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_size == entry.size
        and stat.S_IMODE(st.st_mode) == entry.mode
        and hash_file(target) == entry.digest
    )


def _ensure_dir(root: Path, rel: str, made: set[str]) -> Path:
    """``root / rel`` as a real directory: created, or replacing a file or link in the way."""
    if not rel:
        return root
    here = root / rel
    if rel in made:
        return here
    so_far = ""
    step = root
    for part in rel.split("/"):
        so_far = f"{so_far}/{part}" if so_far else part
        step = step / part
        if so_far in made:
            continue
        try:
            if not stat.S_ISDIR(os.lstat(step).st_mode):
                os.unlink(step)
                os.mkdir(step)
        except FileNotFoundError:
            os.mkdir(step)
        made.add(so_far)
    return here


def _remove(root: Path, path: str) -> None:
    """Remove a file the new manifest lacks; a directory now at its path belongs to the new one."""
    target = root / path
    try:
        if stat.S_ISDIR(os.lstat(target).st_mode):
            return
        os.unlink(target)
    except (FileNotFoundError, NotADirectoryError):
        return
    if path.endswith(".py"):
        _drop_bytecode(target.parent, target.name[:-3])


def _prune(root: Path, removed: Iterable[str]) -> None:
    """Remove the directories of ``removed`` paths that are now empty (or hold only bytecode)."""
    dirs: set[str] = set()
    for path in removed:
        parent = path.rpartition("/")[0]
        while parent and parent not in dirs:
            dirs.add(parent)
            parent = parent.rpartition("/")[0]
    for rel in sorted(dirs, key=lambda d: (-d.count("/"), d)):  # deepest first
        here = root / rel
        try:
            os.rmdir(here)
            continue
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            pass
        try:
            if os.listdir(here) != ["__pycache__"]:
                continue
            shutil.rmtree(here / "__pycache__")
            os.rmdir(here)
        except OSError:
            continue


def _drop_bytecode(directory: Path, stem: str) -> None:
    """Delete ``__pycache__/<stem>.*.pyc``: a rewrite within the same second and of the same size
    would otherwise leave bytecode that Python's mtime+size check still takes as current."""
    cache = directory / "__pycache__"
    try:
        names = os.listdir(cache)
    except OSError:
        return
    prefix = stem + "."
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".pyc")):
            continue
        parts = name[len(prefix) : -4].split(".")  # "cpython-311" or "cpython-311", "opt-1"
        if len(parts) == 1 or (len(parts) == 2 and parts[1].startswith("opt-")):
            _unlink(str(cache / name))


def _drop_temps(root: Path, paths: Iterable[str]) -> None:
    """Delete temp files a run cut short left in the directories of ``paths``."""
    for rel in {p.rpartition("/")[0] for p in paths}:
        here = root / rel if rel else root
        try:
            names = os.listdir(here)
        except OSError:
            continue
        for name in names:
            if name.startswith(_TMP_PREFIX):
                _unlink(str(here / name))


def read_marker(snapshot: Path) -> str | None:
    """The manifest id recorded in ``snapshot``'s marker, or None if it is not a snapshot."""
    try:
        text = (Path(snapshot) / MARKER).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if _HEX64.fullmatch(text) else None


def _intact(path: Path, entry: FileEntry, marker_mtime_ns: int) -> bool:
    """Whether a snapshot file still looks as materialized: type, size, mode, not modified since."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_size == entry.size
        and st.st_mode & 0o777 == entry.mode
        and st.st_mtime_ns <= marker_mtime_ns
    )


def _atomic_write(target: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``target`` via a temp file in its directory and ``os.replace``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_name = str(target.parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}")
    try:
        with open(tmp_name, "xb") as f:
            f.write(data)
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, target)
    except BaseException:
        _unlink(tmp_name)
        raise


def _unlink(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass
