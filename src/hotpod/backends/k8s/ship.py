"""Giving pods with a store of their own what a launch needs from the client's store.

A launch spec names content of the store: the code manifest (and every blob in it), the
by-value object and the init args (blobs), and the manifests of the Image's ``copy``,
``sync_package`` and local ``pip_install`` steps. Each pod is asked which of those it lacks
(``POST /_hotpod/store/missing``, see :mod:`hotpod.runtime.storeapi`), then gets only those:
blobs first, then manifests (a store that has a manifest has its blobs). Pods are served in
parallel; a redeploy of a one-file change sends one blob and one manifest per pod.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hotpod import transport, wire
from hotpod.backends.base import PodInfo
from hotpod.errors import DeployError
from hotpod.runtime.storeapi import PREFIX, wanted
from hotpod.store import Store

if TYPE_CHECKING:
    from hotpod.client import PodClient

TIMEOUT = 300.0


class Shipper:
    """Uploads store content to pods with the service's client: its transport (direct, or a
    proxy route), credentials and threads; the connections stay warm for the launch."""

    def __init__(self, store: Store, client: PodClient) -> None:
        self.store = store
        self.client = client
        self.service = client.service

    def _post(self, pod: PodInfo, path: str, body: bytes, ctype: str) -> bytes:
        headers = {**self.client._headers, "Content-Type": ctype}
        try:
            resp = self.client._transport.request(pod.url, PREFIX + path, body, headers, TIMEOUT)
            data = resp.read()
        except (transport.Unreachable, transport.Broken, transport.TimedOut) as exc:
            raise DeployError(
                f"could not send the code to pod {pod.name} of {self.service!r} "
                f"({type(exc).__name__}: {exc}). Run 'hotpod describe {self.service}'."
            ) from None
        if resp.status != 200:
            text = data.decode("utf-8", "replace")
            raise DeployError(
                f"pod {pod.name} of {self.service!r} refused the code ({PREFIX}{path.split('/')[0]}"
                f": HTTP {resp.status}: {text[:500]}). A pod from an older hotpod lacks the store "
                "endpoints: use the same hotpod version in the image."
            )
        return data

    def ship(self, pod: PodInfo, spec: dict[str, Any]) -> tuple[int, int]:
        """Bring one pod's store up to the launch; (blobs, bytes) sent."""
        blobs, manifests = wanted(spec)
        query = json.dumps({"blobs": sorted(blobs), "manifests": manifests}).encode()
        lacking = json.loads(self._post(pod, "missing", query, wire.CT_JSON))
        needed_manifests = [self.store.get_manifest(m) for m in lacking["manifests"]]
        need = set(lacking["blobs"])
        if needed_manifests:  # their blobs too: ask again for those
            digests = set().union(*(m.digests for m in needed_manifests)) - blobs
            if digests:
                again = json.dumps({"blobs": sorted(digests)}).encode()
                need |= set(json.loads(self._post(pod, "missing", again, wire.CT_JSON))["blobs"])
        sent = 0
        for digest in sorted(need):
            data = self.store.get_bytes(digest)
            self._post(pod, f"blob/{digest}", data, "application/octet-stream")
            sent += len(data)
        for manifest in needed_manifests:
            self._post(pod, f"manifest/{manifest.id}", manifest.to_json().encode(), wire.CT_JSON)
        return len(need), sent

    def ship_all(self, pods: Sequence[PodInfo], spec: dict[str, Any]) -> list[tuple[int, int]]:
        if len(pods) <= 1:
            return [self.ship(p, spec) for p in pods]
        return list(self.client.executor(len(pods)).map(lambda p: self.ship(p, spec), pods))


__all__ = ["Shipper", "wanted"]
