"""The hash cache: each file's digest, kept while its stat is unchanged, plus the last
manifest id per store (the base of the next delta)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

from hotpod.config import settings

_RACY_NS = 2_000_000_000  # files modified this recently are hashed but not cached
_CACHE_VERSION = 2  # 2: manifest ids are additive hashes (a version 1 "tree" id is not one)
_HEX64 = re.compile(r"[0-9a-f]{64}")


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
