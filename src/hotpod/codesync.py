"""Code sync: turn a project directory into a manifest and upload only what the store lacks.

``sync(root, store)`` walks the project root, skips what ``.gitignore``/``.hotpodignore`` and the
built-in list exclude, hashes the remaining files, uploads the blobs the store is missing and
stores the manifest. Its id is the code reference a pod materializes.

Design choices, and why:

- The walk is a single ``os.scandir`` pass. Ignore files apply to their own directory and below,
  with git's semantics (``pathspec``'s gitignore flavour, negation included); the deepest file
  with a matching pattern decides, and within one directory ``.hotpodignore`` is read after
  ``.gitignore`` so it can override it (``!generated.py`` re-includes a gitignored file). Ignored
  directories are pruned, never descended, which is also why (as in git) a file inside an ignored
  directory cannot be re-included.
- Symlinks: a link to a file inside the root is stored as the target's content; links to
  directories, to files outside the root, and broken links are skipped, so a snapshot depends only
  on files under the root and cannot recurse.
- Hashing is incremental: :class:`HashCache` remembers each file's digest keyed by (size,
  mtime_ns, inode), so a no-change sync only stats files. As in git's "racily clean" rule, a file
  modified within the last couple of seconds is not cached: a second write in the same timestamp
  tick could otherwise go unnoticed and ship stale code.
- The walk counts files and bytes as it goes and stops early past the limits, so pointing hotpod
  at a home directory fails fast with a message that names the chosen root and the largest
  entries, instead of hashing a disk.
- A manifest is stored only after its blobs, so a store that has the manifest has all of its
  blobs: a repeat sync of unchanged code is a walk, a cache lookup and one ``has_manifest``.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hotpod.config import settings
from hotpod.errors import HotpodError
from hotpod.store import MARKER, FileEntry, Manifest, Store, hash_file

if TYPE_CHECKING:
    import pathspec

ROOT_MARKERS = ("pyproject.toml", ".git", "setup.py", "setup.cfg")
IGNORE_FILES = (".gitignore", ".hotpodignore")
ALWAYS_SKIP = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".venv",
        "venv",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        "node_modules",
        ".ipynb_checkpoints",
        ".DS_Store",
    }
)
SKIP_SUFFIXES = (".pyc",)
MAX_FILES = 50_000
MAX_BYTES = 2 * 1024**3

_RACY_NS = 2_000_000_000  # files modified this recently are hashed but not cached
# Threads pay off for big files (hashlib releases the GIL); for many small ones they only add
# contention, as file creation and Python overhead dominate.
_PARALLEL_BYTES = 64 * 1024 * 1024

_T = TypeVar("_T")
_R = TypeVar("_R")


class CodeSyncError(HotpodError):
    """The project could not be synced: too large a root, or files changing while being read."""


@dataclass(frozen=True)
class SyncResult:
    """What a sync did: the manifest id plus how much was found and uploaded."""

    root: Path
    manifest_id: str
    files: int
    total_bytes: int
    uploaded_files: int
    uploaded_bytes: int
    seconds: float


def find_project_root(start: Path) -> Path:
    """The first directory from ``start`` upward holding pyproject.toml, .git, setup.py or
    setup.cfg; ``start``'s own directory if there is none."""
    start = Path(start).resolve()
    here = start if start.is_dir() else start.parent
    for d in (here, *here.parents):
        if any((d / m).exists() for m in ROOT_MARKERS):
            return d
    return here


# ---------------------------------------------------------------------------------------------
# hash cache


class HashCache:
    """sha256 per absolute path, valid while (size, mtime_ns, inode) are unchanged.

    One JSON file, loaded on first use and written atomically by :meth:`save` only when something
    changed. Entries not looked up since loading are dropped on save. A corrupt file is ignored.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._entries: dict[str, list[Any]] | None = None
        self._seen: set[str] = set()
        self._dirty = False

    @classmethod
    def for_root(cls, root: Path, cache_dir: Path | None = None) -> HashCache:
        """The cache for project ``root`` in ``cache_dir`` (default: hotpod's cache dir/hashes)."""
        base = Path(cache_dir) if cache_dir is not None else settings().cache_dir / "hashes"
        name = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()
        return cls(base / f"{name}.json")

    def _load(self) -> dict[str, list[Any]]:
        if self._entries is None:
            self._entries = {}
            try:
                doc = json.loads(self.path.read_bytes())
                if doc.get("version") == 1 and isinstance(doc.get("entries"), dict):
                    self._entries = doc["entries"]
                else:
                    self._dirty = True
            except FileNotFoundError:
                pass
            except (OSError, ValueError, AttributeError):
                self._dirty = True  # corrupt: rebuild it
        return self._entries

    def lookup(self, path: str, st: os.stat_result) -> str | None:
        """The cached digest of ``path`` if its stat still matches, else None."""
        self._seen.add(path)
        entry = self._load().get(path)
        if (
            isinstance(entry, list)
            and len(entry) == 4
            and entry[:3] == [st.st_size, st.st_mtime_ns, st.st_ino]
            and isinstance(entry[3], str)
        ):
            return entry[3]
        return None

    def record(self, path: str, st: os.stat_result, digest: str, now_ns: int) -> None:
        """Remember ``digest`` for ``path`` unless the file was modified too recently to trust."""
        self._seen.add(path)
        entries = self._load()
        if st.st_mtime_ns > now_ns - _RACY_NS:
            if entries.pop(path, None) is not None:
                self._dirty = True
            return
        entry = [st.st_size, st.st_mtime_ns, st.st_ino, digest]
        if entries.get(path) != entry:
            entries[path] = entry
            self._dirty = True

    def save(self) -> None:
        """Write the cache if it changed. Failure to write is ignored: it is only a cache."""
        entries = self._load()
        stale = entries.keys() - self._seen
        if stale:
            for key in stale:
                del entries[key]
            self._dirty = True
        if not self._dirty:
            return
        data = json.dumps({"version": 1, "entries": entries}, separators=(",", ":")).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError:
            return
        self._dirty = False


# ---------------------------------------------------------------------------------------------
# walking


_Chain = tuple[tuple[str, "pathspec.PathSpec"], ...]


@dataclass(frozen=True)
class _Found:
    rel: str
    path: str
    st: os.stat_result


def _read_ignore_spec(directory: str, names: set[str]) -> pathspec.PathSpec | None:
    lines: list[str] = []
    for name in IGNORE_FILES:
        if name in names:
            try:
                with open(os.path.join(directory, name), encoding="utf-8", errors="replace") as f:
                    lines.extend(f.read().splitlines())
            except OSError:
                continue
    if not lines:
        return None
    import pathspec  # lazily: importing it costs ~50 ms, and most directories need none

    return pathspec.GitIgnoreSpec.from_lines(lines)


def _spec_verdict(spec: pathspec.PathSpec, path: str) -> bool | None:
    """True: ignored; False: re-included by a negation; None: no pattern matches."""
    check = getattr(spec, "check_file", None)
    if check is not None:
        return check(path).include
    for pattern in reversed(spec.patterns):  # pathspec without check_file: last match wins
        if pattern.include is not None and pattern.match_file(path) is not None:
            return pattern.include
    return None


def _ignored(rel: str, is_dir: bool, chain: _Chain) -> bool:
    for base, spec in reversed(chain):  # the deepest ignore file with a matching pattern decides
        sub = rel[len(base) :] + ("/" if is_dir else "")
        verdict = _spec_verdict(spec, sub)
        if verdict is not None:
            return verdict
    return False


def _skipped_name(name: str) -> bool:
    return name in ALWAYS_SKIP or name.endswith(SKIP_SUFFIXES)


def _check_name(rel: str, path: str) -> str:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise CodeSyncError(
            f"Cannot sync {shown}: its name is not valid UTF-8. Rename it, or list it in a "
            ".hotpodignore file."
        ) from None
    return rel


def _walk(root: str) -> Iterator[_Found]:
    """Every file under ``root`` that the ignore rules keep, with its stat (targets for links)."""
    real_root = os.path.realpath(root)
    stack: list[tuple[str, str, _Chain]] = [(root, "", ())]
    while stack:
        directory, prefix, chain = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        spec = _read_ignore_spec(directory, {e.name for e in entries})
        if spec is not None:
            chain = (*chain, (prefix, spec))
        subdirs = []
        for entry in entries:
            name = entry.name
            rel = prefix + name
            if _skipped_name(name) or (not prefix and name == MARKER):  # MARKER: see store
                continue
            if entry.is_symlink():
                if _ignored(rel, False, chain):
                    continue
                try:
                    st = os.stat(entry.path)
                except OSError:
                    continue  # broken link
                real = os.path.realpath(entry.path)
                if stat.S_ISREG(st.st_mode) and os.path.commonpath([real_root, real]) == real_root:
                    yield _Found(_check_name(rel, entry.path), entry.path, st)
            elif entry.is_dir(follow_symlinks=False):
                if not _ignored(rel, True, chain):
                    subdirs.append((entry.path, rel + "/", chain))
            elif entry.is_file(follow_symlinks=False) and not _ignored(rel, False, chain):
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # vanished
                yield _Found(_check_name(rel, entry.path), entry.path, st)
        stack.extend(reversed(subdirs))


def _too_big(root: Path, found: list[_Found], what: str) -> CodeSyncError:
    sizes: dict[str, list[int]] = {}
    for f in found:
        top = f.rel.split("/", 1)[0] + ("/" if "/" in f.rel else "")
        agg = sizes.setdefault(top, [0, 0])
        agg[0] += 1
        agg[1] += f.st.st_size
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


# ---------------------------------------------------------------------------------------------
# manifests and sync


def _map(fn: Callable[[_T], _R], items: list[_T], nbytes: int) -> list[_R]:
    """``map`` that uses threads when there is enough data for hashing and I/O to dominate."""
    if nbytes < _PARALLEL_BYTES or len(items) < 2:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(fn, items))


def _hash_stable(found: _Found) -> tuple[str, os.stat_result]:
    """Hash a file and make sure it did not change while being read (retrying a few times)."""
    before = found.st
    for _ in range(3):
        digest = hash_file(Path(found.path))
        try:
            after = os.stat(found.path)
        except OSError as exc:
            raise CodeSyncError(f"{found.path} vanished while being synced: {exc}") from exc
        if (after.st_size, after.st_mtime_ns, after.st_ino) == (
            before.st_size,
            before.st_mtime_ns,
            before.st_ino,
        ):
            return digest, after
        before = after
    raise CodeSyncError(f"{found.path} keeps changing while being synced; sync again later.")


def build_manifest(
    root: Path,
    cache: HashCache | None = None,
    *,
    max_files: int = MAX_FILES,
    max_bytes: int = MAX_BYTES,
) -> tuple[Manifest, dict[str, Path]]:
    """The manifest of ``root`` and, for uploading, each relative path's absolute path."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise CodeSyncError(f"Cannot sync {root}: it is not a directory.")
    found: list[_Found] = []
    total = 0
    for f in _walk(str(root)):
        found.append(f)
        total += f.st.st_size
        if len(found) > max_files:
            raise _too_big(root, found, f"more than {max_files:,} files")
        if total > max_bytes:
            raise _too_big(root, found, f"more than {_human(max_bytes)} of files")
    now_ns = time.time_ns()
    digests: dict[str, str] = {}
    stats = {f.rel: f.st for f in found}
    todo: list[_Found] = []
    for f in found:
        cached = cache.lookup(f.path, f.st) if cache is not None else None
        if cached is not None:
            digests[f.rel] = cached
        else:
            todo.append(f)
    hashed = _map(_hash_stable, todo, sum(f.st.st_size for f in todo))
    for f, (digest, st) in zip(todo, hashed, strict=True):
        digests[f.rel] = digest
        stats[f.rel] = st
        if cache is not None:
            cache.record(f.path, st, digest, now_ns)
    entries = {
        rel: FileEntry(digests[rel], FileEntry.mode_of(st.st_mode), st.st_size)
        for rel, st in stats.items()
    }
    return Manifest(entries), {f.rel: Path(f.path) for f in found}


def sync(
    root: Path,
    store: Store,
    cache_dir: Path | None = None,
    *,
    max_files: int = MAX_FILES,
    max_bytes: int = MAX_BYTES,
) -> SyncResult:
    """Upload ``root``'s files that ``store`` lacks and store the manifest.

    ``cache_dir`` holds the hash cache (default: ``settings().cache_dir / "hashes"``).
    """
    t0 = time.perf_counter()
    root = Path(root).resolve()
    cache = HashCache.for_root(root, cache_dir)
    manifest, paths = build_manifest(root, cache, max_files=max_files, max_bytes=max_bytes)
    cache.save()
    uploads: list[tuple[str, Path, int]] = []
    if not store.has_manifest(manifest.id):  # a stored manifest implies all of its blobs
        first: dict[str, tuple[Path, int]] = {}
        for rel, entry in manifest.items():
            first.setdefault(entry.digest, (paths[rel], entry.size))
        uploads = [(d, *first[d]) for d in sorted(store.missing(first))]
        _map(lambda u: store.put_file(u[1], u[0]), uploads, sum(u[2] for u in uploads))
        store.put_manifest(manifest)
    return SyncResult(
        root=root,
        manifest_id=manifest.id,
        files=len(manifest),
        total_bytes=manifest.total_bytes,
        uploaded_files=len(uploads),
        uploaded_bytes=sum(size for _, _, size in uploads),
        seconds=time.perf_counter() - t0,
    )


__all__ = [
    "ALWAYS_SKIP",
    "MAX_BYTES",
    "MAX_FILES",
    "CodeSyncError",
    "HashCache",
    "SyncResult",
    "build_manifest",
    "find_project_root",
    "sync",
]
