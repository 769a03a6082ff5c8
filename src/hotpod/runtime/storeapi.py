"""The pod's store endpoints: how a client gives a pod what a launch needs from the store when
the pod keeps a store of its own (on Kubernetes, in the pod's ``emptyDir`` at ``HOTPOD_STORE``).

Endpoints (the service token is required, as everywhere but ``/health``)::

    POST /_hotpod/store/missing        {"blobs": [digest...], "manifests": [id...]}
                                       -> the same lists, holding only what this store lacks
    POST /_hotpod/store/blob/DIGEST    the blob's bytes; written only if they hash to DIGEST
    POST /_hotpod/store/manifest/ID    a manifest's JSON; stored only if it hashes to ID and
                                       every blob it names is in the store already

A store that has a manifest has all of its blobs (the store's rule), so a client uploads the
missing blobs first, then the manifests. Bodies are limited: a query to ``MAX_QUERY`` bytes, a
manifest to ``MAX_MANIFEST``, a blob to the pod's ``HOTPOD_MAX_BODY_BYTES`` (4 GiB).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hotpod.runtime.asgi import HTTPError, Receive, Scope, Send, _header, _read_body, _send_json
from hotpod.runtime.state import PodState
from hotpod.store import LocalStore, Manifest, StoreError, check_digest

PREFIX = "/_hotpod/store/"
MAX_QUERY = 16 << 20
MAX_MANIFEST = 256 << 20
_MAX_NAMES = 1_000_000


async def handle(state: PodState, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer a request to a path under :data:`PREFIX` (authenticated by the caller)."""
    if scope["method"] != "POST":
        raise HTTPError(405, f"use POST {scope['path']}")
    what, _, name = scope["path"][len(PREFIX) :].partition("/")
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
    target = store.blob_path(digest)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
    h = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise HTTPError(499, "client disconnected")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise HTTPError(413, f"blob exceeds the pod's limit of {limit} bytes")
                h.update(chunk)
                out.write(chunk)
                if not message.get("more_body"):
                    break
        if h.hexdigest() != digest:
            raise HTTPError(400, f"the body ({size} bytes) hashes to {h.hexdigest()}, not {digest}")
        os.chmod(tmp, 0o444)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            Path(tmp).unlink()


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
