"""From a project directory to a manifest: finding the root, walking it, hashing its files.

The walk is one ``os.scandir`` pass that applies the ignore rules, skips links out of the root,
and stops early past :data:`MAX_FILES` or :data:`MAX_BYTES`; files the hash cache does not
vouch for are hashed (in threads when there is enough data) and checked not to change meanwhile.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hotpod.codesync.hashcache import HashCache
from hotpod.codesync.ignore import (
    ALWAYS_SKIP,
    IGNORE_FILES,
    SKIP_SUFFIXES,
    _Chain,
    _ignored,
    _Quick,
    _quick_checks,
    _read_rules,
)
from hotpod.errors import HotpodError
from hotpod.store import RESERVED, FileEntry, Manifest, hash_file
from hotpod.watch import TreeWatcher

ROOT_MARKERS = ("pyproject.toml", ".git", "setup.py", "setup.cfg")
MAX_FILES = 50_000
MAX_BYTES = 2 * 1024**3

# Threads pay off for big files (hashlib releases the GIL); for many small ones they only add
# contention, as file creation and Python overhead dominate.
_PARALLEL_BYTES = 64 * 1024 * 1024

_T = TypeVar("_T")
_R = TypeVar("_R")


class CodeSyncError(HotpodError):
    """The project could not be synced: too large a root, or files changing while being read."""


def find_project_root(start: Path) -> Path:
    """The first directory from ``start`` upward holding pyproject.toml, .git, setup.py or
    setup.cfg; ``start``'s own directory if there is none."""
    start = Path(start).resolve()
    here = start if start.is_dir() else start.parent
    for d in (here, *here.parents):
        if any((d / m).exists() for m in ROOT_MARKERS):
            return d
    return here


_Found = tuple[str, str, os.stat_result]  # relative path, absolute path, stat (of link targets)
_Link = tuple[str, os.stat_result, int]  # a file that is a symlink: path, target's stat, hashed at


def _check_name(rel: str, path: str) -> str:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise CodeSyncError(
            f"Cannot sync {shown}: its name is not valid UTF-8. Rename it, or list it in a "
            ".hotpodignore file."
        ) from None
    if "\\" in rel:
        raise CodeSyncError(
            f"Cannot sync {path}: its name has a backslash, which is not portable. Rename it, "
            "or list it in a .hotpodignore file."
        )
    return rel


class _Seen:
    """What a walk records for the fast path besides the files: it watches each directory it
    lists (the watch added first, so nothing after the listing is missed), and notes each
    directory's prefix and ignore rules and the files that are symlinks."""

    def __init__(self, watcher: TreeWatcher) -> None:
        self.watcher = watcher
        self.dirs: dict[str, tuple[str, _Chain]] = {}
        self.links: dict[str, _Link] = {}
        self.started_ns = time.time_ns()  # no digest the walk uses was taken after this


def _walk(
    root: Path, max_files: int, max_bytes: int, seen: _Seen | None = None
) -> tuple[list[_Found], int]:
    """Every file under ``root`` that the ignore rules keep, with its stat (targets for links),
    and their total size; :class:`CodeSyncError` as soon as there are too many or too much.

    The hot loop of a no-change sync: per entry it costs a few string operations, the cached
    ``DirEntry`` type checks and one ``stat``; under ignore files, a path costs one regex search
    per ignore file above it, and a pattern match only if some pattern may match it.
    """
    real_root = os.path.realpath(root)
    stack: list[tuple[str, str, _Chain, _Quick]] = [(str(root), "", (), None)]
    skip = ALWAYS_SKIP
    suffixes = SKIP_SUFFIXES
    found: list[_Found] = []
    total = 0
    while stack:
        directory, prefix, chain, quick = stack.pop()
        if seen is not None:
            seen.watcher.add(directory)
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except OSError:
            continue
        if any(e.name in IGNORE_FILES for e in entries):
            rules = _read_rules(directory, prefix)
            if rules is not None:
                chain = (*chain, rules)
                quick = _quick_checks(chain)
        if seen is not None:
            seen.dirs[directory] = (prefix, chain)
        plain = prefix.isascii() and "\\" not in prefix  # else each path below is checked
        subdirs = []
        for entry in entries:
            name = entry.name
            if name in skip or name.endswith(suffixes):
                continue
            rel = prefix + name
            if entry.is_dir(follow_symlinks=False):
                if not chain or not _ignored(rel, True, chain):
                    subdirs.append((entry.path, rel + "/", chain, quick))
                continue
            if chain:  # inlined: most paths match no pattern, one search per ignore file
                maybe = quick is None
                for start, search in quick or ():
                    if search(rel[start:]) is not None:
                        maybe = True
                        break
                if maybe and _ignored(rel, False, chain):
                    continue
            if not prefix and name in RESERVED:
                continue  # a tree's own bookkeeping: see store
            try:
                if entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                elif entry.is_symlink():
                    st = os.stat(entry.path)
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    real = os.path.realpath(entry.path)
                    if os.path.commonpath([real_root, real]) != real_root:
                        continue  # a file outside the root
                    if seen is not None:
                        seen.links[rel] = (entry.path, st, seen.started_ns)
                else:
                    continue  # a fifo, socket or device
            except OSError:
                continue  # vanished, or a broken link
            if not (plain and name.isascii()) or "\\" in name:
                _check_name(rel, entry.path)
            found.append((rel, entry.path, st))
            total += st.st_size
            if total > max_bytes:
                raise _too_big(root, found, f"more than {_human(max_bytes)} of files")
            if len(found) > max_files:
                raise _too_big(root, found, f"more than {max_files:,} files")
        subdirs.sort(reverse=True)  # popped in name order: deterministic walks and messages
        stack.extend(subdirs)
    return found, total


def _too_big(root: Path, found: list[_Found], what: str) -> CodeSyncError:
    sizes: dict[str, list[int]] = {}
    for rel, _, st in found:
        top = rel.split("/", 1)[0] + ("/" if "/" in rel else "")
        agg = sizes.setdefault(top, [0, 0])
        agg[0] += 1
        agg[1] += st.st_size
    largest = sorted(sizes.items(), key=lambda kv: (kv[1][1], kv[1][0]), reverse=True)[:3]
    listing = ", ".join(f"{name} ({n:,} files, {_human(b)})" for name, (n, b) in largest)
    return CodeSyncError(
        f"Refusing to sync {root}: it has {what}. hotpod syncs the project root, the first "
        f"directory upward with {', '.join(ROOT_MARKERS)}; is that the right directory? Largest "
        f"entries so far: {listing}. List data, checkpoints and build output in "
        f"{root / '.hotpodignore'} (same syntax as .gitignore)."
    )


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _map(fn: Callable[[_T], _R], items: list[_T], nbytes: int) -> list[_R]:
    """``map`` that uses threads when there is enough data for hashing and I/O to dominate."""
    if nbytes < _PARALLEL_BYTES or len(items) < 2:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(fn, items))


def _hash_stable(found: _Found) -> tuple[str, os.stat_result]:
    """Hash a file and make sure it did not change while being read (retrying a few times)."""
    _, path, before = found
    for _ in range(3):
        digest = hash_file(Path(path))
        try:
            after = os.stat(path)
        except OSError as exc:
            raise CodeSyncError(f"{path} vanished while being synced: {exc}") from exc
        if (after.st_size, after.st_mtime_ns, after.st_ino) == (
            before.st_size,
            before.st_mtime_ns,
            before.st_ino,
        ):
            return digest, after
        before = after
    raise CodeSyncError(f"{path} keeps changing while being synced; sync again later.")


class _Tree:
    """A walked tree: its files, their digests, and its manifest (built on demand) or its id."""

    def __init__(self, found: list[_Found], digests: list[str], total: int) -> None:
        self.found = found
        self.digests = digests  # sha256 hex, checked: from hashing or a validated cache hit
        self.total_bytes = total
        self.known_id: str | None = None  # vouched for by the hash cache
        self._manifest: Manifest | None = None

    def manifest(self, previous: Manifest | None = None) -> Manifest:
        """The manifest, sharing the entries that equal ``previous``'s (cheaper to build, and
        to diff against it: unchanged entries are the same objects)."""
        if self._manifest is None:
            old = previous.entries if previous is not None else {}
            get = old.get
            unchecked = FileEntry._unchecked
            exec_bit = stat.S_IXUSR
            entries: dict[str, FileEntry] = {}
            for (rel, _, st), digest in zip(self.found, self.digests, strict=True):
                mode = 0o755 if st.st_mode & exec_bit else 0o644
                entry = get(rel)
                if (
                    entry is None
                    or entry.digest != digest
                    or entry.size != st.st_size
                    or entry.mode != mode
                ):
                    entry = unchecked(digest, mode, st.st_size)
                entries[rel] = entry
            # The walk only yields valid, distinct, relative paths of files (not directories).
            self._manifest = Manifest._trusted(entries)
        return self._manifest


def _build(
    root: Path,
    cache: HashCache | None,
    max_files: int,
    max_bytes: int,
    seen: _Seen | None = None,
) -> _Tree:
    """Walk the resolved directory ``root`` and hash what the cache does not know."""
    if not root.is_dir():
        raise CodeSyncError(f"Cannot sync {root}: it is not a directory.")
    found, total = _walk(root, max_files, max_bytes, seen)
    if cache is not None:
        lookup = cache.lookup
        digests = [lookup(path, st) or "" for _, path, st in found]
    else:
        digests = [""] * len(found)
    todo = [i for i, digest in enumerate(digests) if not digest]
    tree = _Tree(found, digests, total)
    if not todo:
        tree.known_id = cache.tree_id(len(found)) if cache is not None else None
        return tree  # with the id known, a no-change sync never builds the manifest
    now_ns = time.time_ns()
    items = [found[i] for i in todo]
    hashed = _map(_hash_stable, items, sum(st.st_size for _, _, st in items))
    for i, (_, path, _), (digest, st) in zip(todo, items, hashed, strict=True):
        digests[i] = digest
        found[i] = (found[i][0], path, st)
        if cache is not None:
            cache.record(path, st, digest, now_ns)
    return tree


def build_manifest(
    root: Path,
    cache: HashCache | None = None,
    *,
    max_files: int = MAX_FILES,
    max_bytes: int = MAX_BYTES,
) -> tuple[Manifest, dict[str, Path]]:
    """The manifest of ``root`` and, for uploading, each relative path's absolute path."""
    root = Path(root).resolve()
    manifest = _build(root, cache, max_files, max_bytes).manifest()
    return manifest, {rel: root / rel for rel in manifest}
