"""Code sync at scale: a 5,000-file project beside a 10-file one, measured in the same run.

For each project, in a temp dir (store and code only: no pods):

- cold sync: an empty store and hash cache, so everything is hashed and uploaded;
- no-change and one-file-changed syncs, each two ways: watched (the process synced the tree
  before, so an inotify watcher says what changed: the fast path, O(changes)) and walked
  (``HOTPOD_SYNC_WATCH=0``: a walk with the hash cache, O(files));
- the one-file-changed sync's bytes uploaded and bytes of the manifest object stored (a delta on
  the previous manifest; every 17th one is a full rebase, shown as the max, with its time), and
  the same sync in a fresh process (nothing memoized, nothing watched: a walk, and the base
  manifest is read from the store);
- ``update_tree`` of a pod's code directory after each change, warm (the updater saw the previous
  manifest, as a long-lived pod does: the delta is applied as is) and fresh; and, for reference,
  ``materialize`` of a new snapshot directory (hard-linking unchanged files from the previous
  one).

Figures are medians of several repetitions; each 5,000-file figure is printed beside the small
project's. Run: ``python bench/sync_scale.py [--files 5000] [--reps 17]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

from hotpod import codesync
from hotpod.codesync import SyncResult, sync
from hotpod.store import MAX_DELTA_CHAIN, LocalStore
from hotpod.store.memo import _MEMO

_T = TypeVar("_T")
Pick = Callable[[list[int]], float]
HOUR_AGO_NS = time.time_ns() - 3600 * 10**9
MODULE = '''"""Module {i} of a generated project."""

import math


def f{i}(x: float) -> float:
    return math.sqrt(x) * {i}


VALUE_{i} = f{i}({i}.0)
'''


def make_project(root: Path, files: int) -> Path:
    """A project of ``files`` files: pyproject, .gitignore, and modules 10 to a directory."""
    root.mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
    (root / ".gitignore").write_text("*.log\nbuild/\n")
    for i in range(files - 2):
        path = root / "pkg" / f"sub{i // 100:03}" / f"m{i // 10 % 10}" / f"mod{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(MODULE.format(i=i))
    for directory, _, names in os.walk(root):  # an existing project: not edited just now
        for name in names:
            os.utime(os.path.join(directory, name), ns=(HOUR_AGO_NS, HOUR_AGO_NS))
    return root


def forget_manifests() -> None:
    """What a fresh process starts with: no manifests memoized, no tree watched."""
    _MEMO.clear()
    codesync.forget_watches()


def walked(fn: Callable[[], _T]) -> _T:
    """``fn()`` with syncs walking the tree (no watcher), as before the fast path."""
    os.environ["HOTPOD_SYNC_WATCH"] = "0"
    try:
        return fn()
    finally:
        del os.environ["HOTPOD_SYNC_WATCH"]


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def timed_sync(root: Path, store: LocalStore, cache: Path) -> tuple[float, SyncResult]:
    t0 = time.perf_counter()
    result = sync(root, store, cache)
    return time.perf_counter() - t0, result


@dataclass
class Figures:
    files: int
    cold: list[float] = field(default_factory=list)
    nochange: list[float] = field(default_factory=list)
    nochange_walk: list[float] = field(default_factory=list)
    change: list[float] = field(default_factory=list)
    change_walk: list[float] = field(default_factory=list)
    rebase: list[float] = field(default_factory=list)
    uploaded: list[int] = field(default_factory=list)
    manifest: list[int] = field(default_factory=list)
    change_fresh: list[float] = field(default_factory=list)
    update: list[float] = field(default_factory=list)
    update_fresh: list[float] = field(default_factory=list)
    snapshot: list[float] = field(default_factory=list)
    full_manifest: int = 0
    first_update: float = 0.0


def measure(work: Path, files: int, reps: int) -> Figures:
    fig = Figures(files)
    root = make_project(work / "project", files)
    changed = next(p for p in sorted((root / "pkg").rglob("*.py")))
    original = changed.read_text()

    for rep in range(3):
        forget_manifests()
        fig.cold.append(
            timed_sync(root, LocalStore(work / f"cold-{rep}"), work / f"cache-{rep}")[0]
        )

    store = LocalStore(work / "store")
    cache = work / "cache"
    first = sync(root, store, cache)
    fig.full_manifest = first.manifest_bytes
    for _ in range(reps):
        fig.nochange.append(timed_sync(root, store, cache)[0])
        fig.nochange_walk.append(walked(partial(timed_sync, root, store, cache))[0])

    pod = work / "pod" / "code"
    fig.first_update = store.update_tree(first.manifest_id, pod).seconds
    snapshots = work / "snapshots"
    previous = store.materialize(first.manifest_id, snapshots / first.manifest_id)
    edit = 0

    def change_one_file() -> None:
        nonlocal edit
        edit += 1
        changed.write_text(f"{original}\nEDIT = {edit}\n")

    sync(root, store, cache)  # the walks above dropped the watcher: start one
    for _ in range(reps):  # warm: the same process synced and updated the previous version
        change_one_file()
        seconds, result = timed_sync(root, store, cache)
        (fig.rebase if result.delta_base is None else fig.change).append(seconds)
        fig.uploaded.append(result.uploaded_bytes)
        fig.manifest.append(result.manifest_bytes)
        fig.update.append(timed(partial(store.update_tree, result.manifest_id, pod)))
        dest = snapshots / result.manifest_id
        fig.snapshot.append(
            timed(partial(store.materialize, result.manifest_id, dest, previous=previous))
        )
        previous = dest

    for _ in range(max(3, reps // 3)):  # walked: a change found by walking the tree
        change_one_file()
        seconds, result = walked(partial(timed_sync, root, store, cache))
        fig.change_walk.append(seconds)
        store.update_tree(result.manifest_id, pod)

    for _ in range(max(3, reps // 3)):  # fresh: nothing memoized, as in a new process
        change_one_file()
        forget_manifests()
        seconds, result = timed_sync(root, store, cache)
        fig.change_fresh.append(seconds)
        forget_manifests()
        fig.update_fresh.append(timed(partial(store.update_tree, result.manifest_id, pod)))
    changed.write_text(original)
    return fig


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:9.1f} ms"


def size(value: float) -> str:
    return f"{value:9,.0f} B "


def report(small: Figures, big: Figures) -> None:
    def row(label: str, a: str, b: str, ratio: float | None) -> None:
        shown = f"{ratio:6.2f}x" if ratio is not None else ""
        print(f"{label:<44}{a:>14}{b:>14}  {shown}")

    def timing(label: str, attr: str) -> None:
        a, b = getattr(small, attr), getattr(big, attr)
        row(label, ms(a), ms(b), statistics.median(b) / statistics.median(a))

    def bytes_row(
        label: str, a: list[int] | int, b: list[int] | int, pick: Pick = statistics.median
    ) -> None:
        va = pick(a) if isinstance(a, list) else a
        vb = pick(b) if isinstance(b, list) else b
        row(label, size(va), size(vb), vb / va if va else None)

    print(f"{'':<44}{f'{small.files:,} files':>14}{f'{big.files:,} files':>14}  ratio")
    timing("cold sync (empty store and cache)", "cold")
    timing("no-change sync, watched (fast path)", "nochange")
    timing("no-change sync, walked", "nochange_walk")
    timing("one-file-changed sync, watched (fast path)", "change")
    timing("one-file-changed sync, walked", "change_walk")
    timing("one-file-changed sync, fresh process", "change_fresh")
    if small.rebase and big.rebase:
        timing("  the one that stored a full manifest (rebase)", "rebase")
    bytes_row("  uploaded bytes", small.uploaded, big.uploaded)
    bytes_row("  manifest bytes (median: a delta)", small.manifest, big.manifest)
    bytes_row("  manifest bytes (max: a full rebase)", small.manifest, big.manifest, max)
    sent_small = [u + m for u, m in zip(small.uploaded, small.manifest, strict=True)]
    sent_big = [u + m for u, m in zip(big.uploaded, big.manifest, strict=True)]
    bytes_row("  bytes sent (uploaded + manifest, median)", sent_small, sent_big)
    bytes_row("  full manifest, for comparison", small.full_manifest, big.full_manifest)
    timing("update_tree after one change (delta applied)", "update")
    timing("update_tree after one change, fresh process", "update_fresh")
    timing("materialize new snapshot (reference)", "snapshot")
    row(
        "first update_tree (writes every file)",
        f"{small.first_update * 1000:9.1f} ms",
        f"{big.first_update * 1000:9.1f} ms",
        big.first_update / small.first_update,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=5000, help="files in the large project")
    parser.add_argument(
        "--reps",
        type=int,
        default=MAX_DELTA_CHAIN + 1,
        help="repetitions (default: one delta chain plus its rebase)",
    )
    args = parser.parse_args()
    print(
        f"hotpod code sync at scale -- Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {platform.system()}; medians of {args.reps} runs "
        f"(cold: 3; fresh process: {max(3, args.reps // 3)})"
    )
    with tempfile.TemporaryDirectory(prefix="hotpod-sync-scale-") as tmp:
        small = measure(Path(tmp) / "small", 10, args.reps)
        big = measure(Path(tmp) / "big", args.files, args.reps)
    report(small, big)


if __name__ == "__main__":
    main()
