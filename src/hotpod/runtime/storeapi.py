"""The pod's store endpoints: how a client gives a pod what a launch needs from the store when
the pod keeps a store of its own (on Kubernetes, in the pod's ``emptyDir`` at ``HOTPOD_STORE``).

Endpoints (the service token is required, as everywhere but ``/health``)::

    POST /_hotpod/store/missing        {"blobs": [digest...], "manifests": [id...]}
                                       -> the same lists, holding only what this store lacks
    POST /_hotpod/store/blob/DIGEST    the blob's bytes; written only if they hash to DIGEST
    POST /_hotpod/store/manifest/ID    a manifest's JSON; stored only if it hashes to ID and
                                       every blob it names is in the store already

    GET  /_hotpod/store/blob/DIGEST    the blob's bytes (404 when this store lacks it)
    GET  /_hotpod/store/manifest/ID    the manifest's JSON (404 when this store lacks it)

A store that has a manifest has all of its blobs (the store's rule), so a client uploads the
missing blobs first, then the manifests. Bodies are limited: a query to ``MAX_QUERY`` bytes, a
manifest to ``MAX_MANIFEST``, a blob to the pod's ``HOTPOD_MAX_BODY_BYTES`` (4 GiB).

**Pods that start later** (a pod the cluster replaces, a scale-up): the backend writes the
service's last launch and the pods that served it to ``HOTPOD_LAUNCH_FILE`` (a ConfigMap
mounted in every pod). A pod that starts with no launch of its own reads it
(:func:`cluster_launch`), fetches what it lacks from those peers with the GET endpoints (the
service token from its environment), and loads it, with no client involved.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hotpod import wire
from hotpod.runtime.asgi import (
    HTTPError,
    Receive,
    Scope,
    Send,
    _body_chunks,
    _header,
    _read_body,
    _send_bytes,
    _send_json,
)
from hotpod.runtime.state import PodState, read_json
from hotpod.store import LocalStore, Manifest, Store, StoreError, check_digest

PREFIX = "/_hotpod/store/"
MAX_QUERY = 16 << 20
MAX_MANIFEST = 256 << 20
_MAX_NAMES = 1_000_000


async def handle(state: PodState, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer a request to a path under :data:`PREFIX` (authenticated by the caller)."""
    what, _, name = scope["path"][len(PREFIX) :].partition("/")
    if scope["method"] == "GET" and what in ("blob", "manifest") and name:
        await _serve(state, what, name, send)
        return
    if scope["method"] != "POST":
        raise HTTPError(405, f"use POST {scope['path']} (GET for a blob or a manifest)")
    if what == "missing" and not name:
        await _send_json(send, 200, _missing(state, await _read_body(scope, receive, MAX_QUERY)))
    elif what == "blob" and name:
        _check(name, "digest")
        await _receive_blob(state, name, scope, receive)
        await _send_json(send, 200, {"blob": name})
    elif what == "manifest" and name:
        _check(name, "manifest id")
        _put_manifest(state, name, await _read_body(scope, receive, MAX_MANIFEST))
        await _send_json(send, 200, {"manifest": name})
    else:
        raise HTTPError(
            404,
            f"no endpoint {scope['path']}; the store's are {PREFIX}missing, {PREFIX}blob/DIGEST "
            f"and {PREFIX}manifest/ID",
        )


def _check(name: str, what: str) -> None:
    try:
        check_digest(name, what)
    except StoreError as exc:
        raise HTTPError(400, str(exc)) from None


def _names(doc: dict[str, Any], key: str) -> list[str]:
    names = doc.get(key) or []
    if not isinstance(names, list) or len(names) > _MAX_NAMES:
        raise HTTPError(400, f"'{key}' must be a list of at most {_MAX_NAMES} digests")
    for name in names:
        if not isinstance(name, str):
            raise HTTPError(400, f"'{key}' must hold strings (sha256 hex digests)")
        _check(name, "digest")
    return names


def _missing(state: PodState, body: bytes) -> dict[str, list[str]]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise HTTPError(400, "expected JSON: {'blobs': [...], 'manifests': [...]}") from None
    if not isinstance(doc, dict):
        raise HTTPError(400, "expected a JSON object: {'blobs': [...], 'manifests': [...]}")
    blobs, manifests = _names(doc, "blobs"), _names(doc, "manifests")
    store = state.store
    return {
        "blobs": sorted(store.missing(blobs)),
        "manifests": [m for m in dict.fromkeys(manifests) if not store.has_manifest(m)],
    }


async def _receive_blob(state: PodState, digest: str, scope: Scope, receive: Receive) -> None:
    """Stream the body to a temp file beside the blob's place, hashing it; publish it only when
    it hashes to ``digest``."""
    limit = state.max_body
    declared = _header(scope, b"content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HTTPError(413, f"blob of {declared} bytes exceeds the pod's limit of {limit}")
    store = state.store
    if not isinstance(store, LocalStore):  # (a pod's store is local; anything else: in memory)
        data = await _read_body(scope, receive, limit)
        if hashlib.sha256(data).hexdigest() != digest:
            raise HTTPError(400, f"the body does not hash to {digest}")
        store.put_bytes(data)
        return
    with store.new_blob(digest) as blob:
        async for chunk in _body_chunks(receive, limit, "blob"):
            blob.write(chunk)
        if blob.digest != digest:
            raise HTTPError(
                400, f"the body ({blob.size} bytes) hashes to {blob.digest}, not {digest}"
            )
        blob.commit()


def _put_manifest(state: PodState, manifest_id: str, body: bytes) -> None:
    try:
        manifest = Manifest.from_json(body)
    except StoreError as exc:
        raise HTTPError(400, str(exc)) from None
    if manifest.id != manifest_id:
        raise HTTPError(400, f"the manifest hashes to {manifest.id}, not {manifest_id}")
    lacking = state.store.missing(manifest.digests)
    if lacking:
        raise HTTPError(
            409,
            f"manifest {manifest_id} names {len(lacking)} blob(s) this store lacks (e.g. "
            f"{min(lacking)}); upload them first",
        )
    state.store.put_manifest(manifest)


async def _serve(state: PodState, what: str, name: str, send: Send) -> None:
    """A blob or a manifest of this store, for a peer pod that lacks it."""
    _check(name, "digest" if what == "blob" else "manifest id")
    store = state.store
    if what == "manifest":
        if not store.has_manifest(name):
            raise HTTPError(404, f"this pod's store has no manifest {name}")
        await _send_bytes(send, 200, store.get_manifest(name).to_json().encode(), wire.CT_JSON)
        return
    if store.missing([name]):
        raise HTTPError(404, f"this pod's store has no blob {name}")
    data = await asyncio.get_running_loop().run_in_executor(None, store.get_bytes, name)
    await _send_bytes(send, 200, data, "application/octet-stream")


# -- the client side: what a launch needs, and a new pod fetching it from its peers -----------


def wanted(spec: dict[str, Any]) -> tuple[set[str], list[str]]:
    """The blobs and manifests (ids) a launch spec names directly: the code manifest, the
    by-value object and init args, the manifests of the image's steps."""
    blobs: set[str] = set()
    manifests: list[str] = []
    code = spec.get("code") or {}
    if code.get("manifest"):
        manifests.append(code["manifest"])
    for blob in (code.get("by_value"), spec.get("init")):
        if blob:
            blobs.add(blob)
    for step in (spec.get("image") or {}).get("steps") or []:
        if step.get("manifest"):
            manifests.append(step["manifest"])
        manifests.extend(v for v in (step.get("local") or {}).values() if isinstance(v, str))
    return blobs, list(dict.fromkeys(manifests))


class FetchError(Exception):
    """No peer could give what a launch needs."""


class PeerFetcher:
    """Gets blobs and manifests from the first peer pod that has them (GET endpoints)."""

    def __init__(self, store: Store, token: str, peers: Sequence[str], timeout: float = 60.0):
        import httpx

        self.store = store
        self.peers = list(peers)
        self.http = httpx.Client(
            headers={
                "Authorization": f"Bearer {token}",
                wire.HEADER_PROTOCOL: wire.PROTOCOL_VERSION,
            },
            timeout=timeout,
        )
        self.errors: list[str] = []

    def close(self) -> None:
        self.http.close()

    def _get(self, path: str) -> bytes:
        import httpx

        for peer in list(self.peers):
            try:
                resp = self.http.get(f"http://{peer}{PREFIX}{path}")
            except httpx.HTTPError as exc:  # gone: not asked again
                self.errors.append(f"{peer}: {type(exc).__name__}: {exc}")
                self.peers.remove(peer)
                continue
            if resp.status_code == 200:
                return resp.content
            self.errors.append(f"{peer}: HTTP {resp.status_code}: {resp.text[:200]}")
        raise FetchError(f"no peer has {path}")

    def blob(self, digest: str) -> None:
        data = self._get(f"blob/{digest}")
        if hashlib.sha256(data).hexdigest() != digest:
            raise FetchError(f"a peer's blob {digest} hashes to something else")
        self.store.put_bytes(data)

    def fetch(self, spec: dict[str, Any]) -> int:
        """Bring the store up to the launch; the number of blobs fetched."""
        blobs, manifests = wanted(spec)
        need = set(self.store.missing(blobs))
        lacking = [m for m in manifests if not self.store.has_manifest(m)]
        fetched = []
        for manifest_id in lacking:
            manifest = Manifest.from_json(self._get(f"manifest/{manifest_id}"))
            if manifest.id != manifest_id:
                raise FetchError(f"a peer's manifest {manifest_id} hashes to {manifest.id}")
            fetched.append(manifest)
            need |= self.store.missing(manifest.digests)
        for digest in sorted(need):
            self.blob(digest)
        for manifest in fetched:
            self.store.put_manifest(manifest)
        return len(need)


def own_address() -> str | None:
    """``POD_IP:PORT`` as the backend lists this pod's address, when the pod knows its IP."""
    ip = os.environ.get("HOTPOD_POD_IP")
    return f"{ip}:{os.environ.get('HOTPOD_PORT', '')}" if ip else None


def own_rank(peers: Sequence[str]) -> int:
    """This pod's rank in a distributed pool: its place among the launch's ``peers`` (a pod on
    Kubernetes, whose rank the backend gives only there), else ``HOTPOD_RANK`` (the local
    backend sets it when it starts the pod), else 0."""
    me = own_address()
    if me is not None and me in peers:
        return list(peers).index(me)
    return int(os.environ.get("HOTPOD_RANK", "0"))


def read_cluster_launch() -> dict[str, Any] | None:
    """The service's last launch as the backend recorded it (``HOTPOD_LAUNCH_FILE``)."""
    path = os.environ.get("HOTPOD_LAUNCH_FILE")
    doc = read_json(Path(path)) if path else None
    return doc if doc is not None and isinstance(doc.get("spec"), dict) else None


async def cluster_launch(state: PodState) -> dict[str, Any] | None:
    """For a pod that starts with no launch: the service's last one, its code fetched from the
    pods that served it. None when there is none, when this pod cannot take a place in it (a
    distributed pool whose peers do not list this pod: it joins at the next ``.to()``), or when
    no peer could give the code (said in the pod's log)."""
    doc = read_cluster_launch()
    if doc is None:
        return None
    spec: dict[str, Any] = doc["spec"]
    me = own_address()
    dist = spec.get("distribute")
    if isinstance(dist, dict) and me not in (dist.get("peers") or []):
        print(
            f"hotpod: not loading launch {spec.get('launch_id')}: this pod is not among the "
            "distributed pool's peers; it joins the pool at the next .to()",
            flush=True,
        )
        state.idle_reason = (
            "this pod started after the distributed pool's last .to() (a replaced or an added "
            "pod) and has no rank in it; call .to() again to re-form the pool with it"
        )
        return None
    peers = [p for p in doc.get("peers") or [] if isinstance(p, str) and p != me]
    fetcher = PeerFetcher(state.store, state.token, peers)
    try:
        count = await asyncio.get_running_loop().run_in_executor(None, fetcher.fetch, spec)
    except (FetchError, StoreError) as exc:
        print(
            f"hotpod: could not fetch the code of launch {spec.get('launch_id')} from the "
            f"service's pods ({exc}; {'; '.join(fetcher.errors[-3:]) or 'no peers listed'}); "
            "this pod serves after the next .to()",
            flush=True,
        )
        state.idle_reason = (
            f"this pod could not fetch the code of the service's last launch from its other pods "
            f"({exc}); call .to() again"
        )
        return None
    finally:
        fetcher.close()
    if state.loaded is not None:  # a launch came meanwhile: it is newer
        return None
    print(
        f"hotpod: fetched {count} blob(s) of launch {spec.get('launch_id')} from peers", flush=True
    )
    return spec
