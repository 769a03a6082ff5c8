"""Digests, file entries and manifests: what a tree is, and how its id is computed.

:class:`Manifest` maps relative POSIX paths to :class:`FileEntry`; its id is an additive multiset
hash of the entries, derived in O(changes) by :meth:`Manifest.with_changes` (see
:mod:`hotpod.store` for the design). :class:`StoreError` and the digest helpers live here too,
since every other part of the store builds on them.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring as _encode_str  # what json.dumps uses for str
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

from hotpod.errors import HotpodError

_HEX64 = re.compile(r"[0-9a-f]{64}")
# a relative path is bad if it is absolute, has an empty, "." or ".." part, a backslash or a NUL
_BAD_PATH = re.compile(r"(?:^|/)\.{0,2}(?:/|$)|[\\\x00]")
_CHUNK = 1 << 16  # small enough that tiny files cost no big allocation
_MODES = (0o644, 0o755)
_FORMAT_VERSION = 2  # 2: ids are additive multiset hashes (1: sha256 of the JSON)
_ID_MOD = 1 << 256
_ID_SEED = int.from_bytes(hashlib.sha256(b"hotpod manifest id, additive, v2").digest(), "big")


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
    """The 256-bit integer one entry adds to its manifest's id (see the package docstring)."""
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
        """The additive multiset hash of the entries, 64 hex digits (see the package docstring).
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
