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
  mtime_ns, inode, exec bit), so a no-change sync only stats files. As in git's "racily clean"
  rule, a file modified within the last couple of seconds is not cached: a second write in the
  same timestamp tick could otherwise go unnoticed and ship stale code. When every file is a
  cache hit and the cache was saved as exactly these files, it also vouches for the manifest id,
  and a no-change sync builds no manifest at all: a walk, a dict lookup per file and one
  ``has_manifest`` (about 30 ms for 5,000 files on a 2-core machine).
- The walk is kept cheap: one ``scandir`` and one ``stat`` per file, plain tuples, and ignore
  rules matched per path with one merged regex per ignore file (the alternation of its
  patterns' regexes), so that a path no pattern can match never reaches ``pathspec``.
- Manifest deltas: the cache remembers, per store, the last manifest this root stored there,
  and the next one is stored as a delta on it (``Store.put_manifest(..., base=...)``). A
  one-file change to a 5,000-file project then sends that file and a ~200-byte manifest object
  instead of a ~500 KB manifest. ``SyncResult.manifest_bytes`` says what was written.
- The walk counts files and bytes as it goes and stops early past the limits, so pointing hotpod
  at a home directory fails fast with a message that names the chosen root and the largest
  entries, instead of hashing a disk.
- A manifest is stored only after its blobs, so a store that has the manifest has all of its
  blobs: a repeat sync of unchanged code is a walk, a cache lookup and one ``has_manifest``.
- Watched syncs, O(changes): a process's first sync of a tree to a store walks it as above and,
  on Linux, starts an inotify watcher (``hotpod.watch``) on every directory it lists, adding each
  watch *before* listing the directory, so no change after the listing goes unseen. The process
  keeps, per (root, store, hash cache), the last manifest and that watcher. The next sync reads
  the events queued since (the kernel queues one at the time of each write, so every change
  made before ``sync`` was called is there), looks again at just those paths -- stat, the same
  ignore rules the walk used for their directory, a hash -- plus the files that are symlinks
  (their targets may sit in unwatched directories), derives the new manifest and its id from
  the last in O(changes) (``Manifest.with_changes``), uploads the new blobs and stores the
  manifest as a delta on the last one. What it cannot judge path by path means a walk and a new
  watcher: a directory created, removed or renamed (unless the walk ignores it, like
  ``__pycache__``), any ``.gitignore``/``.hotpodignore`` touched, a full event queue, a watch
  limit reached, the last manifest gone from the store, no inotify (not Linux) or
  ``HOTPOD_SYNC_WATCH=0``. Watched syncs do not update the hash cache's entries (a later
  process's walk rehashes what changed), only the last manifest per store. inotify does not see
  writes through a hard link from outside the tree, through a shared ``mmap``, or by another
  machine on a network file system; set ``HOTPOD_SYNC_WATCH=0`` for such trees. A forked child
  forgets the watchers (it would steal its parent's events) and walks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import stat
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from hotpod import watch
from hotpod.config import settings
from hotpod.errors import HotpodError
from hotpod.store import (
    RESERVED,
    FileEntry,
    Manifest,
    ManifestWrite,
    Store,
    StoreError,
    hash_file,
    recent_manifest,
)
from hotpod.watch import TreeWatcher

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
_CACHE_VERSION = 2  # 2: manifest ids are additive hashes (a version 1 "tree" id is not one)
# Threads pay off for big files (hashlib releases the GIL); for many small ones they only add
# contention, as file creation and Python overhead dominate.
_PARALLEL_BYTES = 64 * 1024 * 1024

_T = TypeVar("_T")
_R = TypeVar("_R")


class CodeSyncError(HotpodError):
    """The project could not be synced: too large a root, or files changing while being read."""


@dataclass(frozen=True)
class SyncResult:
    """What a sync did: the manifest id plus how much was found, uploaded and written."""

    root: Path
    manifest_id: str
    files: int
    total_bytes: int
    uploaded_files: int
    uploaded_bytes: int
    seconds: float
    manifest_bytes: int = 0
    """Bytes of the manifest object stored this time (0 if the store had it): with
    ``uploaded_bytes``, what the sync sent."""
    delta_base: str | None = None
    """The manifest it was stored as a delta on, if it was."""


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
    """sha256 per absolute path, valid while (size, mtime_ns, inode, exec bit) are unchanged.

    One JSON file, loaded on first use and written atomically by :meth:`save` only when something
    changed. Entries not looked up since loading are dropped on save. A corrupt file is ignored.

    Two more things ride along. The id of the manifest the entries describe exactly, when they
    do (:meth:`tree_id`), lets a no-change sync skip building the manifest. And beside the file,
    ``<name>.last.json`` keeps, per store, the id of the last manifest this root stored there:
    the base of the next delta (:meth:`last_manifest`). It is a separate small file so that
    recording it does not rewrite the entries.
    """

    MAX_STORES = 8
    """Stores whose last manifest is remembered (the most recently used)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._entries: dict[str, list[Any]] | None = None
        self._tree: str | None = None  # as loaded
        self._tree_candidate: tuple[str, int] | None = None  # (id, files) to record on save
        self._seen: set[str] = set()
        self._hits = 0
        self._dirty = False
        self._manifests: dict[str, str] | None = None
        self._manifests_dirty = False

    @classmethod
    def for_root(cls, root: Path, cache_dir: Path | None = None) -> HashCache:
        """The cache for project ``root`` in ``cache_dir`` (default: hotpod's cache dir/hashes)."""
        base = Path(cache_dir) if cache_dir is not None else settings().cache_dir / "hashes"
        name = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()
        return cls(base / f"{name}.json")

    @property
    def last_path(self) -> Path:
        """Where the last manifest id per store is kept."""
        return self.path.with_name(f"{self.path.stem}.last.json")

    def _load(self) -> dict[str, list[Any]]:
        if self._entries is None:
            self._entries = {}
            try:
                doc = json.loads(self.path.read_bytes())
                version = doc.get("version")
                if version in (1, _CACHE_VERSION) and isinstance(doc.get("entries"), dict):
                    self._entries = doc["entries"]
                    tree = doc.get("tree") if version == _CACHE_VERSION else None  # 1: old ids
                    self._tree = tree if isinstance(tree, str) and _HEX64.fullmatch(tree) else None
                    self._dirty = version != _CACHE_VERSION
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
        entries = self._entries if self._entries is not None else self._load()
        entry = entries.get(path)
        if (
            type(entry) is list
            and len(entry) == 5
            and entry[0] == st.st_size
            and entry[1] == st.st_mtime_ns
            and entry[2] == st.st_ino
            and entry[4] == (st.st_mode & stat.S_IXUSR)
            and type(digest := entry[3]) is str
            and _HEX64.fullmatch(digest)
        ):
            self._hits += 1
            return digest
        return None

    def record(self, path: str, st: os.stat_result, digest: str, now_ns: int) -> None:
        """Remember ``digest`` for ``path`` unless the file was modified too recently to trust.

        A too recent file's old entry is dropped, but that alone does not make the cache worth
        rewriting: the entry on disk is stale, not wrong (it cannot match the file's new stat).
        """
        self._seen.add(path)
        entries = self._load()
        if st.st_mtime_ns > now_ns - _RACY_NS:
            entries.pop(path, None)
            return
        entry = [st.st_size, st.st_mtime_ns, st.st_ino, digest, st.st_mode & stat.S_IXUSR]
        if entries.get(path) != entry:
            entries[path] = entry
            self._dirty = True

    def tree_id(self, files: int) -> str | None:
        """The id of the manifest of the tree just looked up, if the cache vouches for it: every
        one of its ``files`` was a hit, and the cache was saved as exactly those files' entries
        with that id (:meth:`note_tree`). Nothing needs hashing or building then."""
        entries = self._load()
        if self._tree is not None and self._hits == files == len(entries) == len(self._seen):
            return self._tree
        return None

    def note_tree(self, manifest_id: str, files: int) -> None:
        """Say that the tree just looked up (``files`` files) has manifest ``manifest_id``;
        :meth:`save` records it if the entries then are exactly those files'."""
        self._tree_candidate = (manifest_id, files)

    def _load_manifests(self) -> dict[str, str]:
        if self._manifests is None:
            self._manifests = {}
            try:
                doc = json.loads(self.last_path.read_bytes())
                if isinstance(doc, dict):
                    self._manifests = {
                        k: v
                        for k, v in doc.items()
                        if isinstance(k, str) and isinstance(v, str) and _HEX64.fullmatch(v)
                    }
            except (OSError, ValueError):
                pass
        return self._manifests

    def last_manifest(self, store_key: str) -> str | None:
        """The id of the last manifest :meth:`remember_manifest` recorded for the store."""
        return self._load_manifests().get(store_key)

    def remember_manifest(self, store_key: str, manifest_id: str) -> None:
        """Record ``manifest_id`` as the last manifest stored in the store named ``store_key``."""
        manifests = self._load_manifests()
        if manifests.get(store_key) == manifest_id:
            return
        manifests.pop(store_key, None)
        manifests[store_key] = manifest_id
        while len(manifests) > self.MAX_STORES:
            del manifests[next(iter(manifests))]
        self._manifests_dirty = True

    def save(self) -> None:
        """Write what changed. Failure to write is ignored: it is only a cache."""
        manifests = self._manifests
        if self._manifests_dirty and manifests is not None:
            self._manifests_dirty = not _write_quietly(
                self.last_path, json.dumps(manifests).encode()
            )
        if self._entries is None:
            return  # never looked at (a sync that knew what changed): nothing to update
        entries = self._entries
        stale = entries.keys() - self._seen
        if stale:
            for key in stale:
                del entries[key]
            self._dirty = True
        candidate = self._tree_candidate
        tree = candidate[0] if candidate is not None and candidate[1] == len(entries) else None
        if tree is not None and tree != self._tree:
            self._dirty = True  # worth writing: the next no-change sync can skip the manifest
        if not self._dirty:
            return  # the file on disk still holds consistent entries and tree
        self._tree = tree
        doc = {"version": _CACHE_VERSION, "entries": entries, "tree": tree}
        if _write_quietly(self.path, json.dumps(doc, separators=(",", ":")).encode()):
            self._dirty = False


def _write_quietly(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically; False (and nothing raised) if that failed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# walking


class _Rules(NamedTuple):
    """The ignore patterns of one directory: its prefix ("" or "pkg/"), the spec, and a regex
    that matches every path some pattern could match (None: no such shortcut, ask the spec)."""

    base: str
    spec: pathspec.PathSpec
    quick: re.Pattern[str] | None


_Chain = tuple[_Rules, ...]
_Quick = list[tuple[int, Callable[[str], object]]] | None  # see _quick_checks
_Found = tuple[str, str, os.stat_result]  # relative path, absolute path, stat (of link targets)
_Link = tuple[str, os.stat_result, int]  # a file that is a symlink: path, target's stat, hashed at
_Probed = tuple[_Found, bool] | None  # see _probe

_NAMED_GROUP = re.compile(r"\(\?P<[A-Za-z_][A-Za-z0-9_]*>")
_UNSAFE_TO_MERGE = re.compile(r"\\[1-9]|\(\?P=|\(\?\(")  # back references, conditionals
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _read_rules(directory: str, prefix: str) -> _Rules | None:
    lines: list[str] = []
    for name in IGNORE_FILES:
        try:
            with open(os.path.join(directory, name), encoding="utf-8", errors="replace") as f:
                lines.extend(f.read().splitlines())
        except OSError:
            continue
    if not lines:
        return None
    import pathspec  # lazily: importing it costs ~50 ms, and most directories need none

    spec = pathspec.GitIgnoreSpec.from_lines(lines)
    return _Rules(prefix, spec, _quick_regex(spec))


def _quick_regex(spec: pathspec.PathSpec) -> re.Pattern[str] | None:
    """One regex matching a path iff some pattern of ``spec`` that includes or excludes matches
    it (the alternation of their regexes, named groups made plain), so that the common case of
    a path no pattern touches costs one regex search instead of a call per pattern. None if a
    pattern is not a plain regex this can merge; the spec is then asked for every path."""
    parts: list[str] = []
    for pattern in spec.patterns:
        if pattern.include is None:
            continue
        regex = getattr(pattern, "regex", None)
        if not isinstance(regex, re.Pattern) or not isinstance(regex.pattern, str):
            return None
        if regex.flags != re.UNICODE or _UNSAFE_TO_MERGE.search(regex.pattern):
            return None
        parts.append(_NAMED_GROUP.sub("(?:", regex.pattern))
    try:
        return re.compile("|".join(f"(?:{part})" for part in parts) if parts else "(?!)")
    except re.error:
        return None


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
    for base, spec, quick in reversed(chain):  # the deepest ignore file that matches decides
        sub = rel[len(base) :] + "/" if is_dir else rel[len(base) :]
        if quick is not None and quick.search(sub) is None:
            continue
        verdict = _spec_verdict(spec, sub)
        if verdict is not None:
            return verdict
    return False


def _quick_checks(chain: _Chain) -> _Quick:
    """(prefix length, search) per rule set of ``chain`` if all have a quick regex, else None."""
    if not chain or any(rules.quick is None for rules in chain):
        return None
    return [(len(rules.base), rules.quick.search) for rules in chain if rules.quick is not None]


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


def _stored(store: Store, manifest_id: str | None) -> Manifest | None:
    """The manifest if ``store`` holds it (from memory if this process saw it lately), else None."""
    if manifest_id is None or not store.has_manifest(manifest_id):
        return None
    manifest = recent_manifest(manifest_id)
    if manifest is not None:
        return manifest
    try:
        return store.get_manifest(manifest_id)
    except StoreError:
        return None


def _upload(
    root: Path, store: Store, tree: _Tree, previous: Manifest | None
) -> list[tuple[str, Path, int]]:
    """Upload the tree's blobs that ``store`` lacks; return (digest, path, size) of each.

    ``previous`` is a manifest the store holds: its blobs are there, so only the digests new
    since it are asked about (a stat each for a local store, one request for a remote one).
    """
    candidates = set(tree.digests)
    if previous is not None:
        candidates -= previous.digest_set
    lacking = store.missing(candidates) if candidates else set()
    if not lacking:
        return []
    first: dict[str, tuple[Path, int]] = {}
    for (rel, _, st), digest in zip(tree.found, tree.digests, strict=True):
        if digest in lacking and digest not in first:
            first[digest] = (root / rel, st.st_size)
    uploads = [(d, *first[d]) for d in sorted(lacking)]
    _map(lambda u: store.put_file(u[1], u[0]), uploads, sum(u[2] for u in uploads))
    return uploads


# ---------------------------------------------------------------------------------------------
# the fast path: what changed, from the watcher


@dataclass
class _Live:
    """What this process knows about a tree it synced to a store: the last manifest it stored
    there, the watcher started by the walk that built it, and what the walk saw."""

    manifest: Manifest
    watcher: TreeWatcher
    dirs: dict[str, tuple[str, _Chain]]  # absolute directory -> (prefix, ignore rules in force)
    links: dict[str, _Link]  # the files that are symlinks, by relative path
    total: int
    real_root: str
    lock: threading.Lock

    def close(self) -> None:
        self.watcher.close()


_LiveKey = tuple[str, str, str]  # (root, store identity, hash cache path)
_LIVE: OrderedDict[_LiveKey, _Live] = OrderedDict()
_LIVE_LOCK = threading.Lock()
_LIVE_MAX = 8  # trees watched at once (each holds an inotify instance: 128 per user by default)


def _live_get(key: _LiveKey) -> _Live | None:
    with _LIVE_LOCK:
        live = _LIVE.get(key)
        if live is not None:
            _LIVE.move_to_end(key)
        return live


def _live_put(key: _LiveKey, live: _Live | None) -> None:
    """Remember ``live`` for ``key`` (None: forget it), closing what it replaces or evicts."""
    dropped: list[_Live] = []
    with _LIVE_LOCK:
        old = _LIVE.pop(key, None)
        if old is not None and old is not live:
            dropped.append(old)
        if live is not None:
            _LIVE[key] = live
            while len(_LIVE) > _LIVE_MAX:
                dropped.append(_LIVE.popitem(last=False)[1])
    for item in dropped:
        item.close()


def forget_watches() -> None:
    """Drop every tree's watcher and last manifest: the next sync of each walks (as a new
    process's first sync does)."""
    with _LIVE_LOCK:
        items = list(_LIVE.values())
        _LIVE.clear()
    for item in items:
        item.close()


def _forget_after_fork() -> None:
    # The child shares the parent's inotify queues: reading them would steal the parent's events.
    # (No locking: a lock another thread held at the fork stays held in the child forever.)
    global _LIVE_LOCK
    _LIVE_LOCK = threading.Lock()
    _LIVE.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def _watching() -> bool:
    """Whether syncs keep watchers (Linux, unless ``HOTPOD_SYNC_WATCH=0``)."""
    return os.environ.get("HOTPOD_SYNC_WATCH", "1") != "0" and watch.available()


def _dir_ignored(prefix: str, chain: _Chain, name: str) -> bool:
    """Whether the walk skips a directory named ``name`` in a directory with these rules."""
    if name in ALWAYS_SKIP or name.endswith(SKIP_SUFFIXES):
        return True
    return bool(chain) and _ignored(prefix + name, True, chain)


class _WalkNeeded(Exception):
    """The fast path cannot tell what changed: walk."""


def _probe(real_root: str, directory: str, prefix: str, chain: _Chain, name: str) -> _Probed:
    """``name`` in a walked directory as the walk would take it now: its :data:`_Found` and
    whether it is a symlink, if the walk would list it as a file; None if the walk would skip
    it (ignored, gone, a link out of the root, not a file). :class:`_WalkNeeded` if it is a
    directory the walk would descend into."""
    if name in ALWAYS_SKIP or name.endswith(SKIP_SUFFIXES):
        return None
    rel = prefix + name
    path = os.path.join(directory, name)
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        if chain and _ignored(rel, True, chain):
            return None
        raise _WalkNeeded
    if chain and _ignored(rel, False, chain):
        return None
    if not prefix and name in RESERVED:
        return None
    link = stat.S_ISLNK(st.st_mode)
    if link:
        try:
            st = os.stat(path)
        except OSError:
            return None  # broken
        if not stat.S_ISREG(st.st_mode):
            return None
        real = os.path.realpath(path)
        if os.path.commonpath([real_root, real]) != real_root:
            return None
    elif not stat.S_ISREG(st.st_mode):
        return None
    if not rel.isascii() or "\\" in rel:
        _check_name(rel, path)
    return (rel, path, st), link


class _Delta(NamedTuple):
    """What the fast path found: the new manifest and what goes with it."""

    manifest: Manifest
    found: dict[str, _Found]  # files (re)hashed, by relative path
    links: dict[str, _Link]
    total: int


def _changes(live: _Live, max_files: int, max_bytes: int) -> _Delta:
    """The tree's manifest now, from the last one and the watcher's events: only the paths
    touched are looked at, and the files reached through symlinks (whose targets may be in
    directories nobody watches). :class:`_WalkNeeded` when a walk is needed: a directory or an
    ignore file changed, the watcher cannot tell, or a limit may be crossed."""
    events = live.watcher.changes()
    if events is None:
        raise _WalkNeeded
    dirs = live.dirs
    for path in events.dirs:
        parent, name = os.path.split(path)
        info = dirs.get(parent)
        if info is None or not _dir_ignored(info[0], info[1], name):
            raise _WalkNeeded  # a directory came, went or changed (or the root itself)
    old = live.manifest
    found: dict[str, _Found] = {}
    links_found: set[str] = set()
    gone: set[str] = set()

    def look(path: str) -> None:
        parent, name = os.path.split(path)
        info = dirs.get(parent)
        if info is None or name in IGNORE_FILES:
            raise _WalkNeeded  # not a directory the walk listed, or the ignore rules changed
        probed = _probe(live.real_root, parent, info[0], info[1], name)
        rel = info[0] + name
        if probed is None:
            gone.add(rel)
        else:
            found[rel] = probed[0]
            if probed[1]:
                links_found.add(rel)

    for path in events.files:
        look(path)
    links = live.links
    for rel, (path, before, hashed_ns) in links.items():
        if rel in found or rel in gone:
            continue
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if (
            st is not None
            and (st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode)
            == (before.st_size, before.st_mtime_ns, before.st_ino, before.st_mode)
            and st.st_mtime_ns <= hashed_ns - _RACY_NS
        ):
            continue  # unchanged, and old enough for its stat to say so
        look(path)
    now_ns = time.time_ns()
    todo = list(found.values())
    hashed = _map(_hash_stable, todo, sum(st.st_size for _, _, st in todo))
    changed: dict[str, FileEntry] = {}
    total = live.total
    new_links = {rel: link for rel, link in links.items() if rel not in found and rel not in gone}
    for (rel, path, _), (digest, st) in zip(todo, hashed, strict=True):
        found[rel] = (rel, path, st)
        entry = FileEntry._unchecked(
            digest, 0o755 if st.st_mode & stat.S_IXUSR else 0o644, st.st_size
        )
        before_entry = old.lookup(rel)
        if before_entry != entry:
            changed[rel] = entry
            total += entry.size - (before_entry.size if before_entry is not None else 0)
        if rel in links_found:
            new_links[rel] = (path, st, now_ns)
    removed = [rel for rel in gone if rel in old]
    for rel in removed:
        total -= old[rel].size
    manifest = live.manifest
    if changed or removed:
        if len(manifest) + len(changed) > max_files or total > max_bytes:
            raise _WalkNeeded  # maybe too big: the walk says so, naming what is largest
        manifest = manifest.with_changes(changed, removed)
    return _Delta(manifest, found, new_links, total)


def _sync_fast(
    live: _Live, root: Path, store: Store, cache: HashCache, max_files: int, max_bytes: int
) -> SyncResult | None:
    """Sync from the watcher's events (O(changes)); None when a walk is needed."""
    t0 = time.perf_counter()
    base = live.manifest
    if not live.watcher.ok or not store.has_manifest(base.id):
        return None  # the base of the delta (and so its blobs) must still be there
    try:
        delta = _changes(live, max_files, max_bytes)
    except _WalkNeeded:
        return None
    manifest = delta.manifest
    uploads: list[tuple[str, Path, int]] = []
    written = ManifestWrite(manifest.id, 0)
    if manifest is not base and not store.has_manifest(manifest.id):
        origin = manifest.origin
        digests = {e.digest for e in origin.changed.values()} if origin is not None else set()
        lacking = store.missing(digests) if digests else set()
        if lacking:
            first: dict[str, tuple[Path, int]] = {}
            for rel, path, st in delta.found.values():
                digest = manifest[rel].digest
                if digest in lacking and digest not in first:
                    first[digest] = (Path(path), st.st_size)
            uploads = [(d, *first[d]) for d in sorted(lacking)]
            _map(lambda u: store.put_file(u[1], u[0]), uploads, sum(u[2] for u in uploads))
        written = store.write_manifest(manifest, base.id)
    live.manifest = manifest
    live.links = delta.links
    live.total = delta.total
    cache.remember_manifest(store.identity, manifest.id)
    cache.save()
    return SyncResult(
        root=root,
        manifest_id=manifest.id,
        files=len(manifest),
        total_bytes=delta.total,
        uploaded_files=len(uploads),
        uploaded_bytes=sum(size for _, _, size in uploads),
        seconds=time.perf_counter() - t0,
        manifest_bytes=written.bytes_written,
        delta_base=written.base,
    )


def sync(
    root: Path,
    store: Store,
    cache_dir: Path | None = None,
    *,
    max_files: int = MAX_FILES,
    max_bytes: int = MAX_BYTES,
) -> SyncResult:
    """Upload ``root``'s files that ``store`` lacks and store the manifest.

    ``cache_dir`` holds the hash cache (default: ``settings().cache_dir / "hashes"``), which also
    remembers the last manifest this root stored in each store: the next manifest is passed to
    :meth:`Store.put_manifest` as a delta on it, so a small change to a large tree sends the
    changed files and a small manifest delta.

    The first sync of a tree to a store in a process walks it; on Linux it also starts an
    inotify watcher on the directories it walked, and the next syncs in this process look only
    at the paths the watcher reports touched (O(changes), not O(files)), falling back to a walk
    when a directory or an ignore file changed or the watcher cannot tell. A change made before
    ``sync`` is called is always seen: the kernel queued its event when it happened.
    """
    t0 = time.perf_counter()
    root = Path(root).resolve()
    cache = HashCache.for_root(root, cache_dir)
    watching = _watching()
    key = (str(root), store.identity, str(cache.path))
    live = _live_get(key) if watching else None
    if live is not None:
        with live.lock:
            try:
                fast = _sync_fast(live, root, store, cache, max_files, max_bytes)
            except BaseException:
                _live_put(key, None)  # its events were read: the next sync must walk
                raise
            if fast is not None:
                return dataclasses.replace(fast, seconds=time.perf_counter() - t0)
        _live_put(key, None)
    seen = _Seen(TreeWatcher(str(root))) if watching else None
    try:
        result, manifest = _sync_walk(root, store, cache, max_files, max_bytes, seen)
    except BaseException:
        if seen is not None:
            seen.watcher.close()
        raise
    if seen is not None:
        if seen.watcher.ok and manifest is not None:
            live = _Live(
                manifest=manifest,
                watcher=seen.watcher,
                dirs=seen.dirs,
                links=seen.links,
                total=result.total_bytes,
                real_root=os.path.realpath(root),
                lock=threading.Lock(),
            )
            _live_put(key, live)
        else:
            seen.watcher.close()
    return dataclasses.replace(result, seconds=time.perf_counter() - t0)


def _sync_walk(
    root: Path,
    store: Store,
    cache: HashCache,
    max_files: int,
    max_bytes: int,
    seen: _Seen | None,
) -> tuple[SyncResult, Manifest | None]:
    """The sync that walks the tree; the manifest too when ``seen`` (the fast path's base)."""
    t0 = time.perf_counter()
    tree = _build(root, cache, max_files, max_bytes, seen)
    key = store.identity
    uploads: list[tuple[str, Path, int]] = []
    manifest: Manifest | None = None
    try:
        base = cache.last_manifest(key)
        manifest_id = tree.known_id
        if manifest_id is None:
            manifest_id = tree.manifest(recent_manifest(base) if base else None).id
        written = ManifestWrite(manifest_id, 0)
        cache.note_tree(manifest_id, len(tree.found))
        if not store.has_manifest(manifest_id):  # a stored manifest implies all of its blobs
            previous = _stored(store, base)
            uploads = _upload(root, store, tree, previous)
            written = store.write_manifest(tree.manifest(previous), base)
        cache.remember_manifest(key, manifest_id)
        if seen is not None and seen.watcher.ok:
            manifest = recent_manifest(manifest_id)
            if manifest is None:
                manifest = tree.manifest(recent_manifest(base) if base else None)
                if tree.known_id is not None:
                    manifest._sum = int(tree.known_id, 16)  # vouched for by the hash cache
    finally:
        cache.save()
    result = SyncResult(
        root=root,
        manifest_id=manifest_id,
        files=len(tree.found),
        total_bytes=tree.total_bytes,
        uploaded_files=len(uploads),
        uploaded_bytes=sum(size for _, _, size in uploads),
        seconds=time.perf_counter() - t0,
        manifest_bytes=written.bytes_written,
        delta_base=written.base,
    )
    return result, manifest


__all__ = [
    "ALWAYS_SKIP",
    "MAX_BYTES",
    "MAX_FILES",
    "CodeSyncError",
    "HashCache",
    "SyncResult",
    "build_manifest",
    "find_project_root",
    "forget_watches",
    "sync",
]
