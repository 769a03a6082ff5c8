"""The local store: blobs and manifests in a directory, manifests stored as deltas."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from hotpod.store.base import ManifestWrite, Store
from hotpod.store.manifest import (
    _CHUNK,
    _HEX64,
    FileEntry,
    Manifest,
    ManifestDelta,
    StoreError,
    _apply,
    check_digest,
    check_rel_path,
    hash_bytes,
)
from hotpod.store.memo import _MEMO
from hotpod.store.tree import _atomic_write, _unlink

MAX_DELTA_CHAIN = 16
"""The most deltas between a stored manifest and the full manifest it is based on."""

_DELTA_VERSION = 3
_RESOLVE_LIMIT = 4 * MAX_DELTA_CHAIN  # links followed before a chain is called corrupt (cycles)
_MIN_ENTRY_JSON = len('"x":["' + "0" * 64 + '",420,0],')  # the shortest entry of a full manifest
_DELTA_HEAD = re.compile(rb'\{"base":"[0-9a-f]{64}","depth":([0-9]{1,4}),')
_DELTA_BASE = re.compile(rb'\{"base":"([0-9a-f]{64})"')


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
        with self.new_blob(digest) as blob, open(path, "rb") as src:
            while chunk := src.read(_CHUNK):
                blob.write(chunk)
            if digest is not None and blob.digest != digest:
                raise StoreError(
                    f"{path} hashes to {blob.digest}, not the expected {digest}: it changed "
                    "while being stored. Sync again."
                )
            blob.commit()
        return blob.digest

    @contextmanager
    def new_blob(self, digest: str | None = None) -> Iterator[NewBlob]:
        """A blob written in chunks to a temp file (beside its place when ``digest`` is known,
        else in blobs/), hashed as it goes; ``commit()`` publishes it under the digest it has,
        and what is not committed is deleted."""
        parent = self.blob_path(digest).parent if digest else self._blobs
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=parent)
        blob = NewBlob(self, os.fdopen(fd, "wb"), tmp_name)
        try:
            yield blob
        finally:
            blob.file.close()
            _unlink(tmp_name)  # (nothing there once committed)

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
        """Where a rebased manifest keeps its delta on the previous one (see the package doc)."""
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


class NewBlob:
    """A blob being written (:meth:`LocalStore.new_blob`)."""

    def __init__(self, store: LocalStore, file: IO[bytes], tmp_name: str) -> None:
        self.store = store
        self.file = file
        self.tmp_name = tmp_name
        self.size = 0
        self._hash = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.file.write(chunk)
        self.size += len(chunk)

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()

    def commit(self) -> None:
        """Publish the blob under its digest (read-only, moved into place whole)."""
        self.file.close()
        target = self.store.blob_path(self.digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.tmp_name, 0o444)
        os.replace(self.tmp_name, target)
