"""The content-addressed store: blobs named by their sha256, and manifests of file trees.

A blob is a file's bytes, stored once under its sha256 hex digest. A :class:`Manifest` maps
relative POSIX paths to :class:`FileEntry` (digest, mode, size) and is itself named by a hash of
its entries (see "Manifest ids" below), so equal trees get equal ids on every machine and a
manifest id pins code exactly. Code sync (``hotpod.codesync``) uploads only the blobs a store lacks; a pod turns a
manifest id back into a directory with :meth:`Store.materialize` (a new snapshot) or
:meth:`Store.update_tree` (one directory kept current in place).

:class:`Store` is the seam: :class:`LocalStore` keeps everything in a directory
(``root/blobs/ab/abcdef…``, ``root/manifests/<id>.json``); a remote store speaks the same
interface over HTTP and inherits ``materialize`` and ``update_tree`` as they are, since they only
need ``get_manifest``, ``has_manifest`` and ``open_blob``/``copy_blob``.

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
- Manifest ids are an additive multiset hash, so that a changed manifest's id follows from the
  old id and the changed entries alone (O(changes), not O(files)): each entry ``(path, digest,
  mode, size)`` is hashed to a 256-bit integer ``h = sha256(path NUL digest NUL mode NUL size)``
  (injective: paths hold no NUL, the other fields are fixed-format), and the id is the 64-hex-digit
  form of ``(SEED + sum of h over the entries) mod 2**256``, with ``SEED`` a fixed constant.
  Adding an entry adds its ``h``, removing one subtracts it (:meth:`Manifest.with_changes`,
  delta resolution, :meth:`Store.update_tree` all do this); :meth:`Manifest.recompute_id` is the
  full O(files) computation, used to verify. Collisions: paths are distinct, so two different
  manifests differ by a sum of some ``h`` values with coefficients +1 and -1; with sha256 taken
  as a random function that sum is uniform mod ``2**256``, so two given different manifests
  share an id with probability ``2**-256``, and among ``n`` manifests ever made with probability
  below ``n**2 / 2**257`` -- as for sha256 itself. That argument is for manifests nobody crafts
  to collide: unlike sha256, a modular sum of hashes is not collision resistant against an
  adversary (generalized-birthday and lattice attacks find entry sets with equal sums far
  faster than ``2**128``), which is acceptable because a manifest id only names code that its
  owner uploaded to their own store; blobs stay named by their sha256, which is verified.
- Manifest deltas: ``put_manifest(manifest, base=...)`` stores a manifest as a delta on a stored
  base (the base id, the entries set and the paths removed) when that is smaller than the full
  manifest, so a one-file change to a large tree stores (and, for a remote store, sends) a few
  hundred bytes. A manifest derived with :meth:`Manifest.with_changes` remembers what it changed
  (:attr:`Manifest.origin`), so storing it as a delta on that base costs O(changes) too.
  ``get_manifest`` resolves chains transparently and verifies the result against the id. A chain
  holds at most :data:`MAX_DELTA_CHAIN` deltas: the next manifest is stored in full (a rebase),
  which bounds the files read to resolve one, and its delta is kept beside it
  (``<id>.delta.json``) for readers that hold the base. Verified manifests are memoized
  in-process (by id, which names content on every store), so resolving a delta on a recently
  used base costs only the delta: the entries are copied (a dict copy) but nothing is hashed or
  compared beyond the changed entries.
- In-place trees (:meth:`Store.update_tree`) are the mutable sibling of snapshots: one directory
  brought from manifest to manifest by writing only the changed files (each atomically: a temp
  file beside it and ``os.replace``) and removing deleted ones, with the marker rewritten last.
  Before touching anything the target id is appended to a ``.hotpod-manifest.next`` note, so a
  run cut short is repaired by the next one, whatever manifest that one asks for: the files in
  question are those that differ between the marker's manifest, the noted ones and the new one,
  and a file already at its new content is detected by size, mode and digest. When nothing is
  pending and the new manifest was resolved as a delta on the marker's manifest (the usual
  redeploy), the delta itself says what to write and remove: no full diff.
"""

from __future__ import annotations

from hotpod.store.base import ManifestWrite, Store, TreeUpdate
from hotpod.store.local import MAX_DELTA_CHAIN, LocalStore
from hotpod.store.manifest import (
    FileEntry,
    Manifest,
    ManifestDelta,
    StoreError,
    check_digest,
    check_rel_path,
    hash_bytes,
    hash_file,
)
from hotpod.store.memo import recent_manifest
from hotpod.store.tree import MARKER, PENDING, RESERVED, read_marker

__all__ = [
    "MARKER",
    "MAX_DELTA_CHAIN",
    "PENDING",
    "RESERVED",
    "FileEntry",
    "LocalStore",
    "Manifest",
    "ManifestDelta",
    "ManifestWrite",
    "Store",
    "StoreError",
    "TreeUpdate",
    "check_digest",
    "check_rel_path",
    "hash_bytes",
    "hash_file",
    "read_marker",
    "recent_manifest",
]
