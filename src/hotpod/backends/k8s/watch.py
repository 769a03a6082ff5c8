"""The pods of a service kept current by watching the API (list, then watch from there).

``.to()`` asks the backend about its pods about once a second while it waits; with a watch
running those answers come from memory and are as fresh as the API server's last event. The
watch thread ends by itself once nobody has asked for a while, and a broken watch is listed and
watched again.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from hotpod.backends.k8s.kube import Kube, collection

WATCH_SECONDS = 30  # each watch request's timeoutSeconds; then it is renewed
IDLE_SECONDS = 60.0  # a watch nobody asked about for this long stops


class PodWatch:
    """The pods matching ``selector`` in ``namespace``."""

    def __init__(self, kube: Kube, namespace: str, selector: str) -> None:
        self.kube = kube
        self.path = collection("v1", "Pod", namespace)
        self.selector = selector
        self._pods: dict[str, dict[str, Any]] = {}
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._used = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="hotpod-k8s-watch", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def pods(self, wait: float = 2.0) -> list[dict[str, Any]] | None:
        """The pods as last seen; None when the watch has not listed them (yet)."""
        self._used = time.monotonic()
        if not self._synced.wait(wait) or not self.alive:
            return None
        return list(self._pods.values())

    def stop(self) -> None:
        self._stop.set()

    def _idle(self) -> bool:
        return self._stop.is_set() or time.monotonic() - self._used > IDLE_SECONDS

    def _run(self) -> None:
        while not self._idle():
            try:
                listed = self.kube.get(self.path, labelSelector=self.selector)
                self._pods = {
                    p["metadata"]["name"]: p for p in listed.get("items") or [] if p.get("metadata")
                }
                self._synced.set()
                version = (listed.get("metadata") or {}).get("resourceVersion")
                query = {
                    "watch": "true",
                    "labelSelector": self.selector,
                    "resourceVersion": version,
                    "timeoutSeconds": WATCH_SECONDS,
                    "allowWatchBookmarks": "false",
                }
                for line in self.kube.stream(self.path, query, read_timeout=WATCH_SECONDS + 10):
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":  # e.g. 410 Gone: list again
                        break
                    name = (obj.get("metadata") or {}).get("name")
                    if not name:
                        continue
                    if kind == "DELETED":
                        self._pods.pop(name, None)
                    elif kind in ("ADDED", "MODIFIED"):
                        self._pods[name] = obj
                    if self._idle():
                        return
            except Exception:  # the API is away or the stream broke: list again shortly
                self._synced.clear()
                self._stop.wait(0.5)
        self._stop.set()


__all__ = ["PodWatch"]
