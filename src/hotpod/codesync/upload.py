"""``sync()``: bring a store up to date with a project tree, by the watcher or by a walk.

Either way only the blobs the store lacks are uploaded, and the manifest is stored after them,
as a delta on the last one this root stored there.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from hotpod.codesync.hashcache import HashCache
from hotpod.codesync.walk import MAX_BYTES, MAX_FILES, _build, _map, _Seen, _Tree
from hotpod.codesync.watched import _changes, _Live, _live_get, _live_put, _WalkNeeded, _watching
from hotpod.store import Manifest, ManifestWrite, Store, StoreError, recent_manifest
from hotpod.watch import TreeWatcher


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
