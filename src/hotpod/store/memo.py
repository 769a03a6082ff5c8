"""The in-process memo of recently verified manifests, shared by every store."""

from __future__ import annotations

import threading
from collections import OrderedDict

from hotpod.store.manifest import Manifest


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
