"""Code sync: turn a project directory into a manifest and upload only what the store lacks.

``sync(root, store)`` walks the project root, skips what ``.gitignore``/``.hotpodignore`` and the
built-in list exclude, hashes the remaining files, uploads the blobs the store is missing and
stores the manifest. Its id is the code reference a pod materializes.

Design choices, and why:

- The walk is a single ``os.scandir`` pass. Ignore files apply to their own directory and below,
  with git's semantics (``pathspec``'s gitignore flavour, negation included); the deepest file
  with a matching pattern decides, and within one directory ``.hotpodignore`` is read after
  ``.gitignore`` so it can override it (``!generated.py`` re-includes a gitignored file). Ignored
  directories are pruned, never descended, which is also why (as in git) a file inside an ignored
  directory cannot be re-included.
- Symlinks: a link to a file inside the root is stored as the target's content; links to
  directories, to files outside the root, and broken links are skipped, so a snapshot depends only
  on files under the root and cannot recurse.
- Hashing is incremental: :class:`HashCache` remembers each file's digest keyed by (size,
  mtime_ns, inode, exec bit), so a no-change sync only stats files. As in git's "racily clean"
  rule, a file modified within the last couple of seconds is not cached: a second write in the
  same timestamp tick could otherwise go unnoticed and ship stale code. When every file is a
  cache hit and the cache was saved as exactly these files, it also vouches for the manifest id,
  and a no-change sync builds no manifest at all: a walk, a dict lookup per file and one
  ``has_manifest`` (about 30 ms for 5,000 files on a 2-core machine).
- The walk is kept cheap: one ``scandir`` and one ``stat`` per file, plain tuples, and ignore
  rules matched per path with one merged regex per ignore file (the alternation of its
  patterns' regexes), so that a path no pattern can match never reaches ``pathspec``.
- Manifest deltas: the cache remembers, per store, the last manifest this root stored there,
  and the next one is stored as a delta on it (``Store.put_manifest(..., base=...)``). A
  one-file change to a 5,000-file project then sends that file and a ~200-byte manifest object
  instead of a ~500 KB manifest. ``SyncResult.manifest_bytes`` says what was written.
- The walk counts files and bytes as it goes and stops early past the limits, so pointing hotpod
  at a home directory fails fast with a message that names the chosen root and the largest
  entries, instead of hashing a disk.
- A manifest is stored only after its blobs, so a store that has the manifest has all of its
  blobs: a repeat sync of unchanged code is a walk, a cache lookup and one ``has_manifest``.
- Watched syncs, O(changes): a process's first sync of a tree to a store walks it as above and,
  on Linux, starts an inotify watcher (``hotpod.watch``) on every directory it lists, adding each
  watch *before* listing the directory, so no change after the listing goes unseen. The process
  keeps, per (root, store, hash cache), the last manifest and that watcher. The next sync reads
  the events queued since (the kernel queues one at the time of each write, so every change
  made before ``sync`` was called is there), looks again at just those paths -- stat, the same
  ignore rules the walk used for their directory, a hash -- plus the files that are symlinks
  (their targets may sit in unwatched directories), derives the new manifest and its id from
  the last in O(changes) (``Manifest.with_changes``), uploads the new blobs and stores the
  manifest as a delta on the last one. What it cannot judge path by path means a walk and a new
  watcher: a directory created, removed or renamed (unless the walk ignores it, like
  ``__pycache__``), any ``.gitignore``/``.hotpodignore`` touched, a full event queue, a watch
  limit reached, the last manifest gone from the store, no inotify (not Linux) or
  ``HOTPOD_SYNC_WATCH=0``. Watched syncs do not update the hash cache's entries (a later
  process's walk rehashes what changed), only the last manifest per store. inotify does not see
  writes through a hard link from outside the tree, through a shared ``mmap``, or by another
  machine on a network file system; set ``HOTPOD_SYNC_WATCH=0`` for such trees. A forked child
  forgets the watchers (it would steal its parent's events) and walks.
"""

from __future__ import annotations

from hotpod.codesync.hashcache import HashCache
from hotpod.codesync.ignore import ALWAYS_SKIP
from hotpod.codesync.ignore import IGNORE_FILES as IGNORE_FILES
from hotpod.codesync.ignore import SKIP_SUFFIXES as SKIP_SUFFIXES
from hotpod.codesync.upload import SyncResult, sync
from hotpod.codesync.walk import (
    MAX_BYTES,
    MAX_FILES,
    CodeSyncError,
    build_manifest,
    find_project_root,
)
from hotpod.codesync.walk import ROOT_MARKERS as ROOT_MARKERS
from hotpod.codesync.watched import forget_watches

__all__ = [
    "ALWAYS_SKIP",
    "MAX_BYTES",
    "MAX_FILES",
    "CodeSyncError",
    "HashCache",
    "SyncResult",
    "build_manifest",
    "find_project_root",
    "forget_watches",
    "sync",
]
