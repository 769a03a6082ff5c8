"""Watched trees: what changed since the last sync, from an inotify watcher, in O(changes).

The process keeps, per (root, store, hash cache), the last manifest it stored and the watcher
its walk started (:class:`_Live`); :func:`_changes` turns the watcher's events into the new
manifest, or says a walk is needed (:class:`_WalkNeeded`). A forked child forgets them all.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

from hotpod import watch
from hotpod.codesync.hashcache import _RACY_NS
from hotpod.codesync.ignore import (
    ALWAYS_SKIP,
    IGNORE_FILES,
    SKIP_SUFFIXES,
    _Chain,
    _dir_ignored,
    _ignored,
)
from hotpod.codesync.walk import _check_name, _Found, _hash_stable, _Link, _map
from hotpod.store import RESERVED, FileEntry, Manifest
from hotpod.watch import TreeWatcher

_Probed = tuple[_Found, bool] | None  # see _probe


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
