"""The store seam: the :class:`Store` interface, and the tree-writing it gives every store.

A store implements blobs and manifests; :meth:`Store.materialize` (a new immutable snapshot) and
:meth:`Store.update_tree` (one directory kept current in place) are built on that interface
alone, so a remote store inherits them as they are.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hotpod.store.manifest import (
    _CHUNK,
    FileEntry,
    Manifest,
    ManifestDelta,
    StoreError,
    check_digest,
    hash_bytes,
)
from hotpod.store.tree import (
    _TMP_PREFIX,
    MARKER,
    PENDING,
    RESERVED,
    _atomic_write,
    _drop_bytecode,
    _drop_temps,
    _ensure_dir,
    _holds,
    _intact,
    _prune,
    _read_pending,
    _remove,
    _unlink,
    _write_pending,
    read_marker,
)


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
        completed or redirected by the next call: see the package docstring. Beyond comparing
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
        return self._write(dest, new, manifest_id, current, todo, gone, resuming, t0)

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
        return self._write(dest, new, new.id, current, todo, gone, resuming, t0)

    def _write(
        self,
        dest: Path,
        new: Manifest,
        manifest_id: str,
        current: str | None,
        todo: list[str],
        gone: list[str],
        resuming: bool,
        t0: float,
    ) -> TreeUpdate:
        """Bring ``todo`` to ``new``'s content, remove ``gone``, then write the marker (last)."""
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
