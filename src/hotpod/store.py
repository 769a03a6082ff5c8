"""The content-addressed store: blobs named by their sha256, and manifests of file trees.

A blob is a file's bytes, stored once under its sha256 hex digest. A :class:`Manifest` maps
relative POSIX paths to :class:`FileEntry` (digest, mode, size) and is itself named by a hash of
its entries (see "Manifest ids" below), so equal trees get equal ids on every machine and a
manifest id pins code exactly. Code sync (``hotpod.codesync``) uploads only the blobs a store lacks; a pod turns a
manifest id back into a directory with :meth:`Store.materialize` (a new snapshot) or
:meth:`Store.update_tree` (one directory kept current in place).

:class:`Store` is the seam: :class:`LocalStore` keeps everything in a directory
(``root/blobs/ab/abcdef…``, ``root/manifests/<id>.json``); a remote store speaks the same
interface over HTTP and inherits ``materialize`` and ``update_tree`` as they are, since they only
need ``get_manifest``, ``has_manifest`` and ``open_blob``/``copy_blob``.

Design choices, and why:

- Writes go to a temp file in the destination directory and are published with ``os.replace``,
  so readers never see a partial blob and concurrent writers of the same blob are harmless (the
  bytes are identical; the last rename wins). What was written is hashed while writing and must
  match the digest, else :class:`StoreError`. Blobs are made read-only. Nothing is fsynced: a
  power cut may lose recent blobs, which the next sync uploads again.
- Digests and manifest ids are validated as 64 lowercase hex characters before they touch a path,
  and manifest paths must be relative, normalized POSIX paths, so no input can escape the store or
  the snapshot directory.
- A snapshot (a materialized manifest) is immutable: it is built in a temp sibling and renamed into
  place, with a ``.hotpod-manifest`` marker holding its manifest id, so an existing snapshot with
  the marker is complete and reused at once. Files are *copied* from blobs, never hard-linked, so
  user code writing to its files cannot corrupt the store. A re-materialize hard-links unchanged
  files (same digest and mode) from a ``previous`` snapshot, which makes a small code change cost
  one copy plus a link per file. A previous file is trusted only if its size, mode and mtime show
  it was not modified after its snapshot was completed (mtime not newer than the marker); hard
  links do mean that an in-place write to a shared file shows in both snapshots.
- Manifest ids are an additive multiset hash, so that a changed manifest's id follows from the
  old id and the changed entries alone (O(changes), not O(files)): each entry ``(path, digest,
  mode, size)`` is hashed to a 256-bit integer ``h = sha256(path NUL digest NUL mode NUL size)``
  (injective: paths hold no NUL, the other fields are fixed-format), and the id is the 64-hex-digit
  form of ``(SEED + sum of h over the entries) mod 2**256``, with ``SEED`` a fixed constant.
  Adding an entry adds its ``h``, removing one subtracts it (:meth:`Manifest.with_changes`,
  delta resolution, :meth:`Store.update_tree` all do this); :meth:`Manifest.recompute_id` is the
  full O(files) computation, used to verify. Collisions: paths are distinct, so two different
  manifests differ by a sum of some ``h`` values with coefficients +1 and -1; with sha256 taken
  as a random function that sum is uniform mod ``2**256``, so two given different manifests
  share an id with probability ``2**-256``, and among ``n`` manifests ever made with probability
  below ``n**2 / 2**257`` -- as for sha256 itself. That argument is for manifests nobody crafts
  to collide: unlike sha256, a modular sum of hashes is not collision resistant against an
  adversary (generalized-birthday and lattice attacks find entry sets with equal sums far
  faster than ``2**128``), which is acceptable because a manifest id only names code that its
  owner uploaded to their own store; blobs stay named by their sha256, which is verified.
- Manifest deltas: ``put_manifest(manifest, base=...)`` stores a manifest as a delta on a stored
  base (the base id, the entries set and the paths removed) when that is smaller than the full
  manifest, so a one-file change to a large tree stores (and, for a remote store, sends) a few
  hundred bytes. A manifest derived with :meth:`Manifest.with_changes` remembers what it changed
  (:attr:`Manifest.origin`), so storing it as a delta on that base costs O(changes) too.
  ``get_manifest`` resolves chains transparently and verifies the result against the id. A chain
  holds at most :data:`MAX_DELTA_CHAIN` deltas: the next manifest is stored in full (a rebase),
  which bounds the files read to resolve one, and its delta is kept beside it
  (``<id>.delta.json``) for readers that hold the base. Verified manifests are memoized
  in-process (by id, which names content on every store), so resolving a delta on a recently
  used base costs only the delta: the entries are copied (a dict copy) but nothing is hashed or
  compared beyond the changed entries.
- In-place trees (:meth:`Store.update_tree`) are the mutable sibling of snapshots: one directory
  brought from manifest to manifest by writing only the changed files (each atomically: a temp
  file beside it and ``os.replace``) and removing deleted ones, with the marker rewritten last.
  Before touching anything the target id is appended to a ``.hotpod-manifest.next`` note, so a
  run cut short is repaired by the next one, whatever manifest that one asks for: the files in
  question are those that differ between the marker's manifest, the noted ones and the new one,
  and a file already at its new content is detected by size, mode and digest. When nothing is
  pending and the new manifest was resolved as a delta on the marker's manifest (the usual
  redeploy), the delta itself says what to write and remove: no full diff.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring as _encode_str  # what json.dumps uses for str
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, NamedTuple

from hotpod.errors import HotpodError

MARKER = ".hotpod-manifest"
"""Name of the file inside a snapshot directory that records its manifest id."""
PENDING = ".hotpod-manifest.next"
"""Name of the file inside an in-place tree that lists the manifest ids an update is heading to."""
RESERVED = frozenset({MARKER, PENDING})
"""Top-level names a manifest may not use: they hold a tree's own bookkeeping."""

MAX_DELTA_CHAIN = 16
"""The most deltas between a stored manifest and the full manifest it is based on."""

_HEX64 = re.compile(r"[0-9a-f]{64}")
# a relative path is bad if it is absolute, has an empty, "." or ".." part, a backslash or a NUL
_BAD_PATH = re.compile(r"(?:^|/)\.{0,2}(?:/|$)|[\\\x00]")
_CHUNK = 1 << 16  # small enough that tiny files cost no big allocation
_MODES = (0o644, 0o755)
_FORMAT_VERSION = 2  # 2: ids are additive multiset hashes (1: sha256 of the JSON)
_DELTA_VERSION = 3
_ID_MOD = 1 << 256
_ID_SEED = int.from_bytes(hashlib.sha256(b"hotpod manifest id, additive, v2").digest(), "big")
_RESOLVE_LIMIT = 4 * MAX_DELTA_CHAIN  # links followed before a chain is called corrupt (cycles)
_MIN_ENTRY_JSON = len('"x":["' + "0" * 64 + '",420,0],')  # the shortest entry of a full manifest
_TMP_PREFIX = ".hotpod-tmp-"
_DELTA_HEAD = re.compile(rb'\{"base":"[0-9a-f]{64}","depth":([0-9]{1,4}),')
_DELTA_BASE = re.compile(rb'\{"base":"([0-9a-f]{64})"')


class StoreError(HotpodError):
    """The store lacks what was asked for, holds something corrupt, or was given a bad name."""


# ---------------------------------------------------------------------------------------------
# digests


def check_digest(digest: str, what: str = "digest") -> str:
    """Return ``digest`` if it is a sha256 hex digest (64 lowercase hex chars), else raise."""
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise StoreError(
            f"Invalid {what} {digest!r}: expected a sha256 hex digest (64 lowercase hex characters)."
        )
    return digest


def hash_bytes(data: bytes) -> str:
    """The sha256 hex digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def hash_file(path: Path) -> str:
    """The sha256 hex digest of the file at ``path``, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# manifests


@dataclass(frozen=True)
class FileEntry:
    """One file of a manifest: content digest, mode (0o644 or 0o755) and size in bytes."""

    digest: str
    mode: int = 0o644
    size: int = 0

    def __post_init__(self) -> None:
        if type(self.digest) is not str or not _HEX64.fullmatch(self.digest):
            check_digest(self.digest)  # raises, naming the digest
        if self.mode not in _MODES:
            raise StoreError(f"Invalid file mode {oct(self.mode)}: expected 0o644 or 0o755.")
        if type(self.size) is not int or self.size < 0:
            raise StoreError(f"Invalid file size {self.size!r}: expected an int >= 0.")

    @classmethod
    def _unchecked(cls, digest: str, mode: int, size: int) -> FileEntry:
        """An entry from values already known to be valid (a fresh hash, a checked cache)."""
        entry = cls.__new__(cls)
        fields = entry.__dict__
        fields["digest"] = digest
        fields["mode"] = mode
        fields["size"] = size
        return entry

    @staticmethod
    def mode_of(st_mode: int) -> int:
        """The manifest mode for a file with ``st_mode``: 0o755 if user-executable, else 0o644."""
        return 0o755 if st_mode & stat.S_IXUSR else 0o644


def check_rel_path(path: str) -> str:
    """Return ``path`` if it is a relative, normalized POSIX path inside its root, else raise."""
    if not isinstance(path, str) or _BAD_PATH.search(path):
        raise StoreError(
            f"Invalid manifest path {path!r}: paths must be relative POSIX paths without "
            "'.', '..', empty parts or backslashes."
        )
    return path


def _entry_hash(path: str, entry: FileEntry) -> int:
    """The 256-bit integer one entry adds to its manifest's id (see the module docstring)."""
    data = f"{path}\0{entry.digest}\0{entry.mode}\0{entry.size}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(data).digest(), "big")


def _full_sum(entries: Mapping[str, FileEntry]) -> int:
    """The id of a manifest with ``entries``, as an integer: O(entries)."""
    sha256 = hashlib.sha256
    from_bytes = int.from_bytes
    total = sum(
        [
            from_bytes(
                sha256(
                    f"{p}\0{e.digest}\0{e.mode}\0{e.size}".encode("utf-8", "surrogatepass")
                ).digest(),
                "big",
            )
            for p, e in entries.items()
        ]
    )
    return (_ID_SEED + total) % _ID_MOD


class ManifestDelta(NamedTuple):
    """How a manifest follows from the manifest ``base``: entries set and paths removed (only
    those that differ from the base)."""

    base: str
    changed: Mapping[str, FileEntry]
    removed: tuple[str, ...]


class Manifest(Mapping[str, FileEntry]):
    """An immutable mapping of relative POSIX path -> :class:`FileEntry`, named by :attr:`id`."""

    # _entries is in path order when _ordered (always, unless derived with new paths: then it is
    # put in order on first iteration); _keys, when known, is the sorted list of paths.
    __slots__ = ("_digests", "_entries", "_id", "_keys", "_ordered", "_origin", "_sum")

    def __init__(self, entries: Mapping[str, FileEntry] | Iterable[tuple[str, FileEntry]] = ()):
        items = dict(entries)
        for path, entry in items.items():
            check_rel_path(path)
            if type(entry) is not FileEntry and not isinstance(entry, FileEntry):
                raise StoreError(f"Manifest entry for {path!r} is not a FileEntry: {entry!r}.")
        dirs: set[str] = set()
        for path in items:
            parent = path.rpartition("/")[0]
            while parent and parent not in dirs:
                dirs.add(parent)
                parent = parent.rpartition("/")[0]
        clash = sorted(dirs.intersection(items))
        if clash:
            raise StoreError(f"Manifest path {clash[0]!r} is both a file and a directory.")
        self._entries = dict(sorted(items.items()))
        self._ordered = True
        self._keys: list[str] | None = None
        self._id: str | None = None
        self._sum: int | None = None
        self._digests: frozenset[str] | None = None
        self._origin: ManifestDelta | None = None

    @classmethod
    def _trusted(
        cls,
        entries: dict[str, FileEntry],
        *,
        sort: bool = True,
        id_sum: int | None = None,
        ordered: bool = True,
        keys: list[str] | None = None,
    ) -> Manifest:
        """A manifest of ``entries`` known to be valid (skips the checks; sorts unless told).
        ``id_sum``: its id as an integer, when known (else computed on first use of the id).
        ``ordered=False``: ``entries`` are not in path order (put in order when iterated);
        ``keys``: the sorted paths, if known (never modified: shared between manifests)."""
        manifest = cls.__new__(cls)
        manifest._entries = dict(sorted(entries.items())) if sort else entries
        manifest._ordered = sort or ordered
        manifest._keys = keys
        manifest._id = None
        manifest._sum = id_sum
        manifest._digests = None
        manifest._origin = None
        return manifest

    def _in_order(self) -> dict[str, FileEntry]:
        """The entries, in path order (put in order now if they were not)."""
        if not self._ordered:
            entries = self._entries
            self._entries = {path: entries[path] for path in self._sorted_keys()}
            self._ordered = True
        return self._entries

    def _sorted_keys(self) -> list[str]:
        """The paths in order, computed once (do not modify the list)."""
        if self._keys is None:
            self._keys = list(self._entries) if self._ordered else sorted(self._entries)
        return self._keys

    def lookup(self, path: str) -> FileEntry | None:
        """The entry for ``path``, or None: one dict lookup."""
        return self._entries.get(path)

    def __getitem__(self, path: str) -> FileEntry:
        return self._entries[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._in_order())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, path: object) -> bool:
        return path in self._entries

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Manifest):
            return self._entries == other._entries
        return super().__eq__(other)

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"Manifest(id={self.id[:12]}…, files={len(self)}, bytes={self.total_bytes})"

    @property
    def id(self) -> str:
        """The additive multiset hash of the entries, 64 hex digits (see the module docstring).
        Computed once (O(files)), or derived from the base's id (O(changes))."""
        if self._id is None:
            if self._sum is None:
                self._sum = _full_sum(self._entries)
            self._id = f"{self._sum:064x}"
        return self._id

    def recompute_id(self) -> str:
        """The id computed from every entry, ignoring what is cached or was derived: to verify."""
        return f"{_full_sum(self._entries):064x}"

    @property
    def origin(self) -> ManifestDelta | None:
        """How this manifest was derived, when it was: from :meth:`with_changes` (on ``self``),
        or resolved from a delta chain (on the manifest the chain was applied to)."""
        return self._origin

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self._entries.values())

    @property
    def digests(self) -> set[str]:
        return set(self.digest_set)

    @property
    def entries(self) -> Mapping[str, FileEntry]:
        """A read-only view of the entries (its ``get`` is a plain dict lookup), in path order."""
        return MappingProxyType(self._in_order())

    @property
    def digest_set(self) -> frozenset[str]:
        """The distinct digests, computed once."""
        if self._digests is None:
            self._digests = frozenset(e.digest for e in self._entries.values())
        return self._digests

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace, ``{"files": {path: [digest, mode, size]}}``.

        Written out by hand (the entries are kept sorted, digests are hex and modes and sizes
        plain ints), which is twice as fast as ``json.dumps`` and gives the same text:
        ``json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``.
        """
        files = ",".join(
            [
                f'{_encode_str(p)}:["{e.digest}",{e.mode},{e.size}]'
                for p, e in self._in_order().items()
            ]
        )
        return f'{{"files":{{{files}}},"version":{_FORMAT_VERSION}}}'

    def changes_since(self, base: Manifest) -> tuple[dict[str, FileEntry], tuple[str, ...]]:
        """What turns ``base`` into this manifest: (entries added or changed, paths removed).

        O(changes) when this manifest was derived from ``base`` (:attr:`origin`), else a full
        comparison."""
        origin = self._origin
        if origin is not None and origin.base == base.id:
            return dict(origin.changed), origin.removed
        theirs = base._entries
        changed = {
            path: entry
            for path, entry in self._in_order().items()
            if (old := theirs.get(path)) is not entry and old != entry
        }
        mine = self._entries
        removed = tuple(path for path in base._in_order() if path not in mine)
        return changed, removed

    def with_changes(
        self, changed: Mapping[str, FileEntry], removed: Iterable[str] = ()
    ) -> Manifest:
        """This manifest with ``changed`` entries set and ``removed`` paths dropped.

        Only what changes is validated (new paths, entries, file/directory clashes) and hashed:
        the new id is derived from this one in O(changes); the entries are copied (a dict copy).
        The result remembers the changes (:attr:`origin`). A removed path must be present.
        """
        return _apply(self, [(changed, removed)])

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            doc = json.loads(text)
            if doc.get("version") != _FORMAT_VERSION:
                raise StoreError(f"unsupported manifest format version {doc.get('version')!r}")
            return cls(
                (path, FileEntry(digest, mode, size))
                for path, (digest, mode, size) in doc["files"].items()
            )
        except StoreError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise StoreError(f"Malformed manifest JSON: {exc}") from exc


def _apply(
    base: Manifest, steps: Iterable[tuple[Mapping[str, FileEntry], Iterable[str]]]
) -> Manifest:
    """``base`` with each step's (changed entries, removed paths) applied in turn.

    The id is derived from the base's (its hash minus the entries replaced or removed plus the
    new ones), and the result's :attr:`Manifest.origin` is the net change from ``base``.
    """
    base_id = base.id
    acc = base._sum if base._sum is not None else int(base_id, 16)
    base_entries = base._entries
    entries = dict(base_entries)
    appended = False  # a path was (re)inserted: the dict is no longer in path order
    touched: dict[str, None] = {}  # an ordered set
    for changed, removed in steps:
        for path in removed:
            old = entries.pop(path, None)
            if old is None:
                raise StoreError(f"Cannot remove {path!r} from a manifest that has no such file.")
            acc -= _entry_hash(path, old)
            touched[path] = None
        for path, entry in changed.items():
            if not isinstance(entry, FileEntry):
                raise StoreError(f"Manifest entry for {path!r} is not a FileEntry: {entry!r}.")
            old = entries.get(path)
            if old is None:
                check_rel_path(path)
                appended = True
            elif old is entry or old == entry:
                continue
            else:
                acc -= _entry_hash(path, old)
            acc += _entry_hash(path, entry)
            entries[path] = entry
            touched[path] = None
    acc %= _ID_MOD
    net: dict[str, FileEntry] = {}
    gone: list[str] = []
    added: list[str] = []
    for path in touched:
        now = entries.get(path)
        was = base_entries.get(path)
        if now is None:
            if was is not None:
                gone.append(path)
        elif was is None or (was is not now and was != now):
            net[path] = now
            if was is None:
                added.append(path)
    keys = base._keys
    if added or gone:
        if keys is not None or added:  # the sorted paths: kept up to date by bisection
            keys = list(base._sorted_keys())
            for path in gone:
                del keys[bisect.bisect_left(keys, path)]
            for path in added:
                bisect.insort(keys, path)
        for path in added:
            parent = path.rpartition("/")[0]
            while parent:
                if parent in entries:
                    raise StoreError(f"Manifest path {parent!r} is both a file and a directory.")
                parent = parent.rpartition("/")[0]
            below = path + "/"
            assert keys is not None
            i = bisect.bisect_left(keys, below)
            if i < len(keys) and keys[i].startswith(below):
                raise StoreError(f"Manifest path {path!r} is both a file and a directory.")
    manifest = Manifest._trusted(
        entries,
        sort=False,
        id_sum=acc,
        ordered=base._ordered and not appended,
        keys=keys,
    )
    manifest._origin = ManifestDelta(base_id, net, tuple(sorted(gone)))
    return manifest


# ---------------------------------------------------------------------------------------------
# recently used manifests


class _Memo:
    """Verified manifests by id, least recently used dropped first (bounded by total entries).

    Shared by every store in the process: a manifest id names content, not a place, so a manifest
    verified once is the right answer for that id everywhere. Stores still check that they hold
    the id before answering from here.
    """

    def __init__(self, max_manifests: int = 8, max_entries: int = 100_000) -> None:
        self._items: OrderedDict[str, Manifest] = OrderedDict()
        self._lock = threading.Lock()
        self._max_manifests = max_manifests
        self._max_entries = max_entries

    def get(self, manifest_id: str) -> Manifest | None:
        with self._lock:
            manifest = self._items.get(manifest_id)
            if manifest is not None:
                self._items.move_to_end(manifest_id)
            return manifest

    def put(self, manifest: Manifest) -> None:
        if len(manifest) > self._max_entries:
            return
        with self._lock:
            self._items[manifest.id] = manifest
            self._items.move_to_end(manifest.id)
            total = sum(len(m) for m in self._items.values())
            while len(self._items) > self._max_manifests or total > self._max_entries:
                _, dropped = self._items.popitem(last=False)
                total -= len(dropped)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


_MEMO = _Memo()


def recent_manifest(manifest_id: str) -> Manifest | None:
    """The manifest with ``manifest_id`` if this process stored or loaded it recently, else None.

    It is verified (its content hashes to the id) but says nothing about which stores hold it.
    """
    return _MEMO.get(manifest_id)


# ---------------------------------------------------------------------------------------------
# the store seam


@dataclass(frozen=True)
class ManifestWrite:
    """What storing a manifest wrote: its id, the bytes written (0 if the store already had it)
    and the base id when it was stored as a delta (None when stored in full or already there)."""

    manifest_id: str
    bytes_written: int
    base: str | None = None


@dataclass(frozen=True)
class TreeUpdate:
    """What :meth:`Store.update_tree` did to a directory.

    ``changed``: the new manifest's paths that were brought to their new content or mode (those
    that differ from the previous manifest; every path the first time). ``removed``: the paths
    deleted because the new manifest lacks them. ``previous_id``: the manifest the directory
    held before, or None.
    """

    manifest_id: str
    previous_id: str | None
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    seconds: float


class Store(ABC):
    """Blobs by sha256 digest plus manifests by id. Subclasses implement storage and transport."""

    @property
    def identity(self) -> str:
        """A stable name for this store, the same across processes (used to key caches)."""
        return repr(self)

    @abstractmethod
    def missing(self, digests: Iterable[str]) -> set[str]:
        """The digests among ``digests`` that this store lacks."""

    @abstractmethod
    def put_bytes(self, data: bytes) -> str:
        """Store ``data``; return its digest."""

    @abstractmethod
    def put_file(self, path: Path, digest: str | None = None) -> str:
        """Store the file at ``path`` (streamed); return its digest.

        When ``digest`` is given and the store already has it, the file is not read; otherwise
        what was read must hash to ``digest``.
        """

    @abstractmethod
    def open_blob(self, digest: str) -> IO[bytes]:
        """A binary file object reading the blob."""

    @abstractmethod
    def write_manifest(self, manifest: Manifest, base: str | None = None) -> ManifestWrite:
        """Store ``manifest`` and say what was written; see :meth:`put_manifest`."""

    def put_manifest(self, manifest: Manifest, base: str | None = None) -> str:
        """Store ``manifest``; return its id.

        Its blobs must already be stored: a store that has a manifest has all of its blobs, which
        lets a repeat sync stop at ``has_manifest``. With ``base``, the id of a stored manifest
        (typically the previous version of the same tree), the manifest may be stored as a delta
        on it: what changed and what was removed, when that is smaller.
        """
        return self.write_manifest(manifest, base).manifest_id

    @abstractmethod
    def get_manifest(self, manifest_id: str) -> Manifest:
        """The manifest with ``manifest_id``; :class:`StoreError` naming the id if absent."""

    @abstractmethod
    def has_manifest(self, manifest_id: str) -> bool:
        """Whether the store holds the manifest."""

    def get_bytes(self, digest: str) -> bytes:
        """The blob's bytes, verified against ``digest``."""
        with self.open_blob(digest) as f:
            data = f.read()
        if hash_bytes(data) != digest:
            raise StoreError(f"Blob {digest} is corrupt: its content hashes to {hash_bytes(data)}.")
        return data

    def copy_blob(self, digest: str, target: Path) -> None:
        """Write the blob to a new file ``target``, verifying the digest while copying."""
        h = hashlib.sha256()
        with self.open_blob(digest) as src, open(target, "xb") as dst:
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                dst.write(chunk)
        if h.hexdigest() != digest:
            raise StoreError(f"Blob {digest} is corrupt: its content hashes to {h.hexdigest()}.")

    def materialize(self, manifest_id: str, dest: Path, previous: Path | None = None) -> Path:
        """Write the manifest's tree to ``dest`` (atomically) and return ``dest``.

        ``dest`` then holds exactly the manifest's files with their modes, plus the
        ``.hotpod-manifest`` marker. If ``dest`` already is that snapshot it is returned at once.
        ``previous``, a snapshot of another manifest, lends its unchanged files as hard links.
        """
        check_digest(manifest_id, "manifest id")
        dest = Path(dest)
        existing = read_marker(dest)
        if existing == manifest_id:
            return dest
        if existing is None and dest.is_dir() and not dest.is_symlink():
            try:
                dest.rmdir()  # an empty placeholder directory is fine to replace
            except OSError:
                pass
        if existing is not None or os.path.lexists(dest):
            existing = read_marker(dest)
            if existing == manifest_id:  # completed concurrently since the first look
                return dest
            what = f"a snapshot of manifest {existing}" if existing else "something else"
            raise StoreError(
                f"Cannot materialize manifest {manifest_id} at {dest}: it already holds {what}. "
                "Snapshots are immutable; use a directory named after the manifest id."
            )
        manifest = self.get_manifest(manifest_id)
        if MARKER in manifest:
            raise StoreError(f"Manifest {manifest_id} contains the reserved path {MARKER!r}.")
        donors = self._donors(previous)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        try:
            os.chmod(tmp, 0o755)  # mkdtemp makes it 0o700
            self._fill(manifest, tmp, donors)
            (tmp / MARKER).write_text(manifest_id)
            try:
                os.rename(tmp, dest)
            except OSError:
                if read_marker(dest) != manifest_id:  # not a concurrent twin: a real failure
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest

    def _donors(self, previous: Path | None) -> dict[tuple[str, int], Path]:
        """(digest, mode) -> file in ``previous`` that still holds that content, per its marker."""
        if previous is None:
            return {}
        prev_id = read_marker(previous)
        if prev_id is None or not self.has_manifest(prev_id):
            return {}
        try:
            marker_mtime = (previous / MARKER).stat().st_mtime_ns
        except OSError:
            return {}
        donors: dict[tuple[str, int], Path] = {}
        for path, entry in self.get_manifest(prev_id).items():
            key = (entry.digest, entry.mode)
            if key not in donors and _intact(previous / path, entry, marker_mtime):
                donors[key] = previous / path
        return donors

    def _fill(self, manifest: Manifest, root: Path, donors: dict[tuple[str, int], Path]) -> None:
        made: set[str] = set()
        for path, entry in manifest.items():
            parent = path.rpartition("/")[0]
            if parent and parent not in made:
                (root / parent).mkdir(parents=True, exist_ok=True)
                made.add(parent)
            target = root / path
            donor = donors.get((entry.digest, entry.mode))
            if donor is not None:
                try:
                    os.link(donor, target)
                    continue
                except OSError:
                    pass  # other filesystem, no hard links: copy from the store instead
            self.copy_blob(entry.digest, target)
            size = target.stat().st_size
            if size != entry.size:
                raise StoreError(
                    f"Blob {entry.digest} for {path!r} has {size} bytes; the manifest says "
                    f"{entry.size}. The store is corrupt; remove the blob and sync again."
                )
            os.chmod(target, entry.mode)

    def update_tree(self, manifest_id: str, dest: Path) -> TreeUpdate:
        """Bring the directory ``dest`` to the manifest in place; say what changed.

        Unlike :meth:`materialize`, ``dest`` is one mutable directory: only the files that differ
        from the manifest it holds (named by its ``.hotpod-manifest`` marker) are written, each
        atomically (a temp file beside it, its mode, ``os.replace``), so a reader sees either the
        old or the new file; then files the new manifest lacks are removed, with directories
        left empty (or holding only ``__pycache__``), and the marker is rewritten last. Stale
        bytecode of changed and removed modules is dropped. Files are copied from blobs, never
        linked, so writes to them cannot reach the store.

        Without a marker (the first time), every file is written; what else ``dest`` holds is
        left alone, as by ``COPY`` into an existing directory. Only files of manifests it
        held are ever removed: if the store no longer has the marker's manifest, every file is
        checked and rewritten as needed, but files that manifest alone had cannot be told from
        others' and stay. Calling it again is a no-op, and a run cut short (crash, error) is
        completed or redirected by the next call: see the module docstring. Beyond comparing
        manifests, the work is proportional to the files that changed; and when nothing is
        pending and the new manifest resolves as a delta on the marker's manifest (which this
        process holds, e.g. because it made the last update), there is no comparison either:
        the delta's entries are written and its removed paths deleted, O(changes). One caller at
        a time per directory.
        """
        t0 = time.perf_counter()
        check_digest(manifest_id, "manifest id")
        dest = Path(dest)
        current = read_marker(dest)
        pending = _read_pending(dest)
        if current == manifest_id and all(p == manifest_id for p in pending):
            if pending:
                _unlink(str(dest / PENDING))
            return TreeUpdate(manifest_id, current, (), (), time.perf_counter() - t0)
        # the old one first: the new one is likely a delta on it, then resolved from memory
        old = Manifest() if current is None else self._known(current)
        noted = [self._known(i) for i in pending if i not in (current, manifest_id)]
        new = self.get_manifest(manifest_id)
        reserved = [name for name in RESERVED if name in new]
        if reserved:
            raise StoreError(
                f"Manifest {manifest_id} contains the reserved path {min(reserved)!r}."
            )
        try:
            dest.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise StoreError(
                f"Cannot update {dest} to manifest {manifest_id}: it is not a directory."
            ) from None
        _write_pending(dest, [*pending, manifest_id])

        # A path needs writing if it may hold anything but its new content: it differs from the
        # new manifest in the marker's manifest or in one an unfinished run was heading to.
        todo: list[str]
        gone: list[str]
        if not noted and old is not None and current is not None:
            delta = self._delta_from(old, new)
            if delta is not None:  # the usual redeploy: the delta on the marker's manifest
                return self._apply_delta(dest, new, current, delta, bool(pending), t0)
        befores = [m for m in (old, *noted) if m is not None]
        diffs = [new.changes_since(m) for m in befores]
        unknown = len(befores) < 1 + len(noted)  # a manifest no longer in the store
        if unknown:
            todo = list(new)  # any file may be anything: each is checked
            gone = sorted({p for _, removed in diffs for p in removed})
        elif len(diffs) == 1:
            todo, gone = list(diffs[0][0]), list(diffs[0][1])
        else:
            todo = sorted({p for changed, _ in diffs for p in changed})
            gone = sorted({p for _, removed in diffs for p in removed})
        resuming = bool(pending) or unknown
        if resuming:
            _drop_temps(dest, [*todo, *gone])
        made: set[str] = set()
        for path in todo:
            entry = new[path]
            if resuming and _holds(dest / path, entry):
                continue
            self._place(dest, path, entry, made)
        for path in gone:
            _remove(dest, path)
        _prune(dest, gone)
        _atomic_write(dest / MARKER, manifest_id.encode(), mode=0o644)
        _unlink(str(dest / PENDING))
        return TreeUpdate(manifest_id, current, tuple(todo), tuple(gone), time.perf_counter() - t0)

    def _apply_delta(
        self,
        dest: Path,
        new: Manifest,
        current: str,
        delta: ManifestDelta,
        resuming: bool,
        t0: float,
    ) -> TreeUpdate:
        """:meth:`update_tree` from the marker's manifest ``current`` to ``new``, which is
        ``current`` changed by ``delta``: write its entries, remove its removed paths."""
        todo = sorted(delta.changed)
        gone = list(delta.removed)
        if resuming:
            _drop_temps(dest, [*todo, *gone])
        made: set[str] = set()
        for path in todo:
            entry = new[path]
            if resuming and _holds(dest / path, entry):
                continue
            self._place(dest, path, entry, made)
        for path in gone:
            _remove(dest, path)
        _prune(dest, gone)
        _atomic_write(dest / MARKER, new.id.encode(), mode=0o644)
        _unlink(str(dest / PENDING))
        return TreeUpdate(new.id, current, tuple(todo), tuple(gone), time.perf_counter() - t0)

    def _delta_from(self, old: Manifest, new: Manifest) -> ManifestDelta | None:
        """What turns ``old`` into ``new`` without comparing them whole: how ``new`` was derived
        (:attr:`Manifest.origin`), or the delta it is stored as; None if neither is on ``old``.
        A stored delta is checked against the ids (O(changes))."""
        origin = new.origin
        if origin is not None and origin.base == old.id:
            return origin
        stored = self._stored_delta(new.id)
        if stored is None or stored.base != old.id:
            return None
        try:
            derived = old.with_changes(stored.changed, stored.removed)
        except StoreError:
            return None
        return derived.origin if derived.id == new.id else None

    def _stored_delta(self, manifest_id: str) -> ManifestDelta | None:
        """The delta the manifest is stored as (or kept beside it, for a rebase), if any."""
        return None

    def _known(self, manifest_id: str) -> Manifest | None:
        """The manifest if the store has it, else None."""
        try:
            return self.get_manifest(manifest_id) if self.has_manifest(manifest_id) else None
        except StoreError:
            return None

    def _place(self, root: Path, path: str, entry: FileEntry, made: set[str]) -> None:
        """Write one file of an in-place tree atomically, replacing whatever is at its path."""
        parent_rel, _, name = path.rpartition("/")
        parent = _ensure_dir(root, parent_rel, made)
        target = parent / name
        try:
            if stat.S_ISDIR(os.lstat(target).st_mode):  # the new manifest makes it a file
                shutil.rmtree(target)
        except FileNotFoundError:
            pass
        tmp = parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            self.copy_blob(entry.digest, tmp)
            size = os.stat(tmp).st_size
            if size != entry.size:
                raise StoreError(
                    f"Blob {entry.digest} for {path!r} has {size} bytes; the manifest says "
                    f"{entry.size}. The store is corrupt; remove the blob and sync again."
                )
            os.chmod(tmp, entry.mode)
            os.replace(tmp, target)
        except BaseException:
            _unlink(str(tmp))
            raise
        if name.endswith(".py"):
            _drop_bytecode(parent, name[:-3])


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


# ---------------------------------------------------------------------------------------------
# the local store


class LocalStore(Store):
    """A store in a directory: ``root/blobs/ab/abcdef…`` and ``root/manifests/<id>.json``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self._blobs = self.root / "blobs"
        self._manifests = self.root / "manifests"

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    @property
    def identity(self) -> str:
        return f"local:{self.root}"

    def blob_path(self, digest: str) -> Path:
        """Where the blob lives (whether or not it exists)."""
        check_digest(digest)
        return self._blobs / digest[:2] / digest

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def missing(self, digests: Iterable[str]) -> set[str]:
        blobs = str(self._blobs)
        isfile = os.path.isfile
        lacking = set()
        for digest in set(digests):
            if type(digest) is not str or not _HEX64.fullmatch(digest):
                check_digest(digest)  # raises
            if not isfile(f"{blobs}/{digest[:2]}/{digest}"):
                lacking.add(digest)
        return lacking

    def put_bytes(self, data: bytes) -> str:
        digest = hash_bytes(data)
        target = self.blob_path(digest)
        if not target.exists():
            _atomic_write(target, data, mode=0o444)
        return digest

    def put_file(self, path: Path, digest: str | None = None) -> str:
        if digest is not None and self.has_blob(digest):
            return digest
        return self._put_stream(Path(path), digest)

    def _put_stream(self, path: Path, digest: str | None) -> str:
        # With the digest unknown, the temp file goes in blobs/ and is renamed by content.
        parent = self.blob_path(digest).parent if digest else self._blobs
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=parent)
        try:
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
            actual = h.hexdigest()
            if digest is not None and actual != digest:
                raise StoreError(
                    f"{path} hashes to {actual}, not the expected {digest}: it changed while "
                    "being stored. Sync again."
                )
            target = self.blob_path(actual)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp_name, 0o444)
            os.replace(tmp_name, target)
            return actual
        except BaseException:
            _unlink(tmp_name)
            raise

    def open_blob(self, digest: str) -> IO[bytes]:
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError:
            raise StoreError(f"Blob {digest} is not in the store at {self.root}.") from None

    def copy_blob(self, digest: str, target: Path) -> None:
        # Local blobs were verified when written; a plain copy (copy_file_range/sendfile) is fast.
        src = self.blob_path(digest)
        if not src.is_file():
            raise StoreError(f"Blob {digest} is not in the store at {self.root}.")
        if target.exists():
            raise StoreError(f"Cannot write blob {digest}: {target} already exists.")
        shutil.copyfile(src, target)

    def _manifest_path(self, manifest_id: str) -> Path:
        check_digest(manifest_id, "manifest id")
        return self._manifests / f"{manifest_id}.json"

    def _side_path(self, manifest_id: str) -> Path:
        """Where a rebased manifest keeps its delta on the previous one (see the module doc)."""
        return self._manifests / f"{manifest_id}.delta.json"

    def write_manifest(self, manifest: Manifest, base: str | None = None) -> ManifestWrite:
        manifest_id = manifest.id
        target = self._manifest_path(manifest_id)
        if target.exists():
            return ManifestWrite(manifest_id, 0)
        data: bytes | None = None
        side: bytes | None = None
        needed: Iterable[str] | None = None
        if base is not None and check_digest(base, "manifest id") != manifest_id:
            delta = self._delta(manifest, base)
            if delta is not None:
                encoded, needed, rebase = delta
                if rebase:
                    side = encoded  # kept beside the full manifest, for readers holding the base
                else:
                    data = encoded
        if data is None:
            base = None
            data = manifest.to_json().encode()
            if needed is None:
                needed = manifest.digest_set
        # a stored base has all of its own blobs already: only a delta's new ones are checked
        lacking = self.missing(needed or ())
        if lacking:
            raise StoreError(
                f"Cannot store manifest {manifest_id}: {len(lacking)} of its blobs are not "
                f"in the store (e.g. {min(lacking)}). Upload the files first."
            )
        if side is not None:
            try:
                _atomic_write(self._side_path(manifest_id), side, mode=0o444)
            except OSError:
                pass  # only a shortcut
        _atomic_write(target, data, mode=0o444)
        _MEMO.put(manifest)
        return ManifestWrite(manifest_id, len(data), base)

    def _delta(self, manifest: Manifest, base: str) -> tuple[bytes, set[str], bool] | None:
        """The delta encoding of ``manifest`` on ``base``, the digests it adds, and whether the
        chain is long enough to store the manifest in full (a rebase) -- if the base is stored
        and the delta is smaller than the full manifest. O(changes) when ``manifest`` was
        derived from ``base`` (:attr:`Manifest.origin`), else a full comparison."""
        depth = self._depth(base)
        if depth is None:
            return None  # not stored (or unreadable)
        origin = manifest.origin
        if origin is not None and origin.base == base:
            changed, removed = origin.changed, origin.removed
        else:
            try:
                base_manifest = self.get_manifest(base)
            except StoreError:
                return None
            changed, removed = manifest.changes_since(base_manifest)
        doc = {
            "base": base,
            "depth": depth + 1,
            "removed": list(removed),
            "set": {p: [e.digest, e.mode, e.size] for p, e in changed.items()},
            "version": _DELTA_VERSION,
        }
        data = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        # every full entry takes at least _MIN_ENTRY_JSON bytes: encode the full one only if close
        if len(data) >= _MIN_ENTRY_JSON * len(manifest) and len(data) >= len(
            manifest.to_json().encode()
        ):
            return None
        return data, {e.digest for e in changed.values()}, depth >= MAX_DELTA_CHAIN

    def _depth(self, manifest_id: str) -> int | None:
        """How many deltas lie between the stored manifest and a full one (0: it is full);
        None if it is not stored or not readable. Reads only the head of the file."""
        try:
            with open(self._manifest_path(manifest_id), "rb") as f:
                head = f.read(160)
        except OSError:
            return None
        if head.startswith(b'{"files":'):
            return 0
        match = _DELTA_HEAD.match(head)
        return int(match.group(1)) if match else None

    def has_manifest(self, manifest_id: str) -> bool:
        return self._manifest_path(manifest_id).is_file()

    def get_manifest(self, manifest_id: str) -> Manifest:
        path = self._manifest_path(manifest_id)
        memo = _MEMO.get(manifest_id)
        if memo is not None and path.is_file():
            return memo
        deltas: list[dict[str, Any]] = []
        wanted = manifest_id
        while True:
            memo = _MEMO.get(wanted) if deltas else None
            if memo is not None and path.is_file():
                base = memo
                break
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                if not deltas:
                    raise StoreError(
                        f"Manifest {manifest_id} is not in the store at {self.root}. "
                        "Sync the code again (it uploads the manifest) and retry."
                    ) from None
                raise StoreError(
                    f"Manifest {manifest_id} is stored as a delta on manifest {wanted}, which is "
                    f"not in the store at {self.root}. Sync the code again and retry."
                ) from None
            if not data.startswith(b'{"base":'):
                side = self._side_delta(wanted)
                if side is not None:  # a rebase whose base this process holds: read the delta
                    data = side
                else:
                    base = Manifest.from_json(data)
                    if deltas:  # a base of a chain: worth remembering, once verified
                        if base.id != wanted:
                            raise StoreError(
                                f"Manifest {wanted} is corrupt: its content has id {base.id}."
                            )
                        _MEMO.put(base)
                    break
            doc = _parse_delta(data, wanted)
            deltas.append(doc)
            if len(deltas) > _RESOLVE_LIMIT:
                raise StoreError(
                    f"Manifest {manifest_id} is corrupt: its delta chain is longer than "
                    f"{_RESOLVE_LIMIT} links (or loops)."
                )
            wanted = doc["base"]
            path = self._manifest_path(wanted)
        if not deltas:
            manifest = base
        else:
            try:
                manifest = _apply(base, [(d["set"], d["removed"]) for d in reversed(deltas)])
            except StoreError as exc:
                raise StoreError(f"Manifest {manifest_id} is corrupt: {exc}") from None
        if manifest.id != manifest_id:
            raise StoreError(
                f"Manifest {manifest_id} is corrupt: its content has id {manifest.id}."
            )
        _MEMO.put(manifest)
        return manifest

    def _stored_delta(self, manifest_id: str) -> ManifestDelta | None:
        for path in (self._manifest_path(manifest_id), self._side_path(manifest_id)):
            try:
                with open(path, "rb") as f:
                    head = f.read(8)
                    if head != b'{"base":':
                        continue
                    data = head + f.read()
            except OSError:
                continue
            try:
                doc = _parse_delta(data, manifest_id)
            except StoreError:
                return None
            return ManifestDelta(doc["base"], doc["set"], tuple(doc["removed"]))
        return None

    def _side_delta(self, manifest_id: str) -> bytes | None:
        """The delta kept beside the full manifest ``manifest_id``, if there is one and its base
        is a manifest this process holds (and the store still has)."""
        if not _MEMO:
            return None
        try:
            data = self._side_path(manifest_id).read_bytes()
        except OSError:
            return None
        match = _DELTA_BASE.match(data)
        if match is None:
            return None
        base = match.group(1).decode()
        if _MEMO.get(base) is None or not self._manifest_path(base).is_file():
            return None
        return data


def _parse_delta(data: bytes, manifest_id: str) -> dict[str, Any]:
    """A delta document with its entries as :class:`FileEntry` objects, or :class:`StoreError`."""
    try:
        doc = json.loads(data)
        if doc.get("version") != _DELTA_VERSION:
            raise StoreError(f"unsupported manifest delta version {doc.get('version')!r}")
        return {
            "base": check_digest(doc["base"], "manifest id"),
            "removed": [check_rel_path(p) for p in doc["removed"]],
            "set": {
                path: FileEntry(digest, mode, size)
                for path, (digest, mode, size) in doc["set"].items()
            },
        }
    except (ValueError, TypeError, KeyError, AttributeError, StoreError) as exc:
        raise StoreError(f"Manifest {manifest_id} is corrupt: malformed delta ({exc}).") from None


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


__all__ = [
    "MARKER",
    "MAX_DELTA_CHAIN",
    "PENDING",
    "RESERVED",
    "FileEntry",
    "LocalStore",
    "Manifest",
    "ManifestDelta",
    "ManifestWrite",
    "Store",
    "StoreError",
    "TreeUpdate",
    "check_digest",
    "check_rel_path",
    "hash_bytes",
    "hash_file",
    "read_marker",
    "recent_manifest",
]
