"""The content-addressed store: blobs named by their sha256, and manifests of file trees.

A blob is a file's bytes, stored once under its sha256 hex digest. A :class:`Manifest` maps
relative POSIX paths to :class:`FileEntry` (digest, mode, size) and is itself named by the sha256
of its canonical JSON, so equal trees get equal ids on every machine and a manifest id pins code
exactly. Code sync (``hotpod.codesync``) uploads only the blobs a store lacks; a pod turns a
manifest id back into a directory with :meth:`Store.materialize`.

:class:`Store` is the seam: :class:`LocalStore` keeps everything in a directory
(``root/blobs/ab/abcdef…``, ``root/manifests/<id>.json``); a remote store speaks the same
interface over HTTP and inherits ``materialize`` as is, since it only needs ``open_blob``.

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
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hotpod.errors import HotpodError

MARKER = ".hotpod-manifest"
"""Name of the file inside a snapshot directory that records its manifest id."""

_HEX64 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 16  # small enough that tiny files cost no big allocation
_MODES = (0o644, 0o755)
_FORMAT_VERSION = 1


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
        check_digest(self.digest)
        if self.mode not in _MODES:
            raise StoreError(f"Invalid file mode {oct(self.mode)}: expected 0o644 or 0o755.")
        if not isinstance(self.size, int) or self.size < 0:
            raise StoreError(f"Invalid file size {self.size!r}: expected an int >= 0.")

    @staticmethod
    def mode_of(st_mode: int) -> int:
        """The manifest mode for a file with ``st_mode``: 0o755 if user-executable, else 0o644."""
        return 0o755 if st_mode & stat.S_IXUSR else 0o644


def check_rel_path(path: str) -> str:
    """Return ``path`` if it is a relative, normalized POSIX path inside its root, else raise."""
    bad = (
        not isinstance(path, str)
        or path.startswith("/")
        or "\\" in path
        or "\0" in path
        or any(part in ("", ".", "..") for part in path.split("/"))
    )
    if bad:
        raise StoreError(
            f"Invalid manifest path {path!r}: paths must be relative POSIX paths without "
            "'.', '..', empty parts or backslashes."
        )
    return path


class Manifest(Mapping[str, FileEntry]):
    """An immutable mapping of relative POSIX path -> :class:`FileEntry`, named by :attr:`id`."""

    __slots__ = ("_entries", "_id")

    def __init__(self, entries: Mapping[str, FileEntry] | Iterable[tuple[str, FileEntry]] = ()):
        items = dict(entries)
        for path, entry in items.items():
            check_rel_path(path)
            if not isinstance(entry, FileEntry):
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
        self._id: str | None = None

    def __getitem__(self, path: str) -> FileEntry:
        return self._entries[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

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
        """sha256 of the canonical JSON encoding (:meth:`to_json`)."""
        if self._id is None:
            self._id = hash_bytes(self.to_json().encode())
        return self._id

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self._entries.values())

    @property
    def digests(self) -> set[str]:
        return {e.digest for e in self._entries.values()}

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace, ``{"files": {path: [digest, mode, size]}}``."""
        doc = {
            "files": {p: [e.digest, e.mode, e.size] for p, e in self._entries.items()},
            "version": _FORMAT_VERSION,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

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


# ---------------------------------------------------------------------------------------------
# the store seam


class Store(ABC):
    """Blobs by sha256 digest plus manifests by id. Subclasses implement storage and transport."""

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
    def put_manifest(self, manifest: Manifest) -> str:
        """Store ``manifest``; return its id.

        Its blobs must already be stored: a store that has a manifest has all of its blobs, which
        lets a repeat sync stop at ``has_manifest``.
        """

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

    def blob_path(self, digest: str) -> Path:
        """Where the blob lives (whether or not it exists)."""
        check_digest(digest)
        return self._blobs / digest[:2] / digest

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def missing(self, digests: Iterable[str]) -> set[str]:
        return {d for d in set(digests) if not self.has_blob(d)}

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

    def put_manifest(self, manifest: Manifest) -> str:
        target = self._manifest_path(manifest.id)
        if not target.exists():
            lacking = self.missing(manifest.digests)
            if lacking:
                raise StoreError(
                    f"Cannot store manifest {manifest.id}: {len(lacking)} of its blobs are not "
                    f"in the store (e.g. {min(lacking)}). Upload the files first."
                )
            _atomic_write(target, manifest.to_json().encode(), mode=0o444)
        return manifest.id

    def has_manifest(self, manifest_id: str) -> bool:
        return self._manifest_path(manifest_id).is_file()

    def get_manifest(self, manifest_id: str) -> Manifest:
        try:
            data = self._manifest_path(manifest_id).read_bytes()
        except FileNotFoundError:
            raise StoreError(
                f"Manifest {manifest_id} is not in the store at {self.root}. "
                "Sync the code again (it uploads the manifest) and retry."
            ) from None
        manifest = Manifest.from_json(data)
        if manifest.id != manifest_id:
            raise StoreError(
                f"Manifest {manifest_id} is corrupt: its content has id {manifest.id}."
            )
        return manifest


def _atomic_write(target: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``target`` via a temp file in its directory and ``os.replace``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_name = str(target.parent / f".tmp-{uuid.uuid4().hex}")
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
    "FileEntry",
    "LocalStore",
    "Manifest",
    "Store",
    "StoreError",
    "check_digest",
    "check_rel_path",
    "hash_bytes",
    "hash_file",
    "read_marker",
]
