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
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

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
                if doc.get("version") == 1 and isinstance(doc.get("entries"), dict):
                    self._entries = doc["entries"]
                    tree = doc.get("tree")
                    self._tree = tree if isinstance(tree, str) and _HEX64.fullmatch(tree) else None
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
        entries = self._load()
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
        doc = {"version": 1, "entries": entries, "tree": tree}
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


def _walk(root: Path, max_files: int, max_bytes: int) -> tuple[list[_Found], int]:
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


def _build(root: Path, cache: HashCache | None, max_files: int, max_bytes: int) -> _Tree:
    """Walk the resolved directory ``root`` and hash what the cache does not know."""
    if not root.is_dir():
        raise CodeSyncError(f"Cannot sync {root}: it is not a directory.")
    found, total = _walk(root, max_files, max_bytes)
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
    """
    t0 = time.perf_counter()
    root = Path(root).resolve()
    cache = HashCache.for_root(root, cache_dir)
    tree = _build(root, cache, max_files, max_bytes)
    key = store.identity
    uploads: list[tuple[str, Path, int]] = []
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
    finally:
        cache.save()
    return SyncResult(
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
