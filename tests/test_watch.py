"""The inotify watcher, and code sync's fast path on it: which changes it handles itself (files
created, modified, deleted, renamed, chmodded) and which send the sync back to a walk (a new or
removed directory, an ignore file, an overflowed queue, no inotify)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotpod import codesync, watch
from hotpod.codesync import build_manifest, sync, walk, watched
from hotpod.store import LocalStore
from hotpod.watch import TreeWatcher

pytestmark = pytest.mark.skipif(not watch.available(), reason="inotify is Linux-only")


def write(root: Path, rel: str, data: str = "x") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    return path


# -- the watcher ------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    write(root, "a.py")
    write(root, "pkg/b.py")
    return root


@pytest.fixture
def watcher(tree: Path) -> Iterator[TreeWatcher]:
    w = TreeWatcher(str(tree), [str(tree), str(tree / "pkg")])
    yield w
    w.close()


def test_watcher_reports_file_changes(tree: Path, watcher: TreeWatcher) -> None:
    assert watcher.changes() == (set(), set())
    write(tree, "pkg/b.py", "modified")
    write(tree, "new.py")
    (tree / "a.py").unlink()
    changes = watcher.changes()
    assert changes is not None
    assert changes.files == {str(tree / "pkg/b.py"), str(tree / "new.py"), str(tree / "a.py")}
    assert changes.dirs == set()
    assert watcher.changes() == (set(), set())  # read once

    os.rename(tree / "new.py", tree / "pkg/moved.py")
    os.chmod(tree / "pkg/b.py", 0o755)
    changes = watcher.changes()
    assert changes is not None
    assert changes.files == {
        str(tree / "new.py"),
        str(tree / "pkg/moved.py"),
        str(tree / "pkg/b.py"),
    }


def test_watcher_reports_directories_apart(tree: Path, watcher: TreeWatcher) -> None:
    (tree / "newdir").mkdir()
    (tree / "pkg/b.py").unlink()
    (tree / "pkg").rmdir()
    changes = watcher.changes()
    assert changes is not None
    assert changes.files == {str(tree / "pkg/b.py")}
    assert changes.dirs == {str(tree / "newdir"), str(tree / "pkg")}
    assert watcher.watched == 1  # the kernel dropped the removed directory's watch


def test_watcher_overflow_means_walk(tree: Path, watcher: TreeWatcher) -> None:
    try:
        limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    except OSError:
        limit = 16384
    if limit > 100_000:
        pytest.skip("the event queue is too long to overflow quickly")
    a, b = tree / "a.py", tree / "pkg/b.py"
    for _ in range(limit // 2 + 2):  # alternate: the kernel merges identical consecutive events
        os.utime(a)
        os.utime(b)
    assert watcher.changes() is None
    assert not watcher.ok and watcher.changes() is None  # stays broken


def test_watcher_without_inotify_is_broken(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "_lib", lambda: None)
    w = TreeWatcher(str(tree), [str(tree)])
    assert not w.ok and w.changes() is None


def test_watcher_limits(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "MAX_DIRS", 1)
    w = TreeWatcher(str(tree), [str(tree)])
    assert w.ok
    assert not w.add(str(tree / "pkg")) and w.changes() is None
    w.close()
    gone = TreeWatcher(str(tree), [str(tree / "absent")])  # vanished before it was watched
    assert gone.ok and gone.watched == 0
    gone.close()


# -- the sync fast path -----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh_watches() -> Iterator[None]:
    codesync.forget_watches()
    yield
    codesync.forget_watches()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    write(root, "pyproject.toml", "[project]\nname='demo'\n")
    write(root, ".gitignore", "*.log\nbuild/\n")
    write(root, "main.py", "import pkg\n")
    write(root, "pkg/__init__.py", "")
    write(root, "pkg/model.py", "class Model: ...\n")
    write(root, "pkg/sub/deep.py", "D = 1\n")
    return root


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


class Syncer:
    """Syncs ``root``, counting walks, and checks each result against a fresh full walk."""

    def __init__(self, root: Path, store: LocalStore, cache: Path, walks: list[int]) -> None:
        self.root, self.store, self.cache, self._walks = root, store, cache, walks

    def __call__(self, *, walked: bool) -> codesync.SyncResult:
        before = len(self._walks)
        result = sync(self.root, self.store, self.cache)
        assert (len(self._walks) > before) == walked, "walked" if not walked else "did not walk"
        expected, _ = build_manifest(self.root)
        assert result.manifest_id == expected.id
        assert self.store.get_manifest(result.manifest_id) == expected
        assert (result.files, result.total_bytes) == (len(expected), expected.total_bytes)
        return result


@pytest.fixture
def synced(
    project: Path, store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Syncer:
    walks: list[int] = []
    real = walk._walk

    def counting(*args: object, **kwargs: object) -> object:
        walks.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(walk, "_walk", counting)
    syncer = Syncer(project, store, tmp_path / "cache", walks)
    first = syncer(walked=True)  # a process's first sync walks, and starts watching
    assert first.uploaded_files == 6
    return syncer


def test_file_changes_need_no_walk(project: Path, synced: Syncer) -> None:
    assert synced(walked=False).uploaded_files == 0  # nothing changed

    write(project, "pkg/model.py", "class Model: v = 2\n")
    result = synced(walked=False)
    assert (result.uploaded_files, result.uploaded_bytes) == (1, len("class Model: v = 2\n"))
    assert result.delta_base is not None and result.manifest_bytes < 400

    write(project, "pkg/sub/new.py", "N = 1\n")  # created
    synced(walked=False)
    (project / "main.py").unlink()  # deleted
    synced(walked=False)
    os.rename(project / "pkg/sub/new.py", project / "pkg/renamed.py")  # renamed across dirs
    synced(walked=False)
    (project / "pkg/renamed.py").chmod(0o755)  # mode only
    assert synced(walked=False).uploaded_files == 0
    write(project, "debug.log", "ignored by .gitignore")
    write(project, "pkg/mod.pyc", "never synced")
    synced(walked=False)
    write(project, "main.py", "back\n")
    write(project, "main.py", "twice in a row\n")  # the last content counts
    synced(walked=False)


def test_new_directory_walks_once_then_is_watched(project: Path, synced: Syncer) -> None:
    write(project, "extra/mod.py", "E = 1\n")
    synced(walked=True)
    write(project, "extra/mod.py", "E = 2\n")
    synced(walked=False)


def test_ignored_directories_come_and_go_without_a_walk(project: Path, synced: Syncer) -> None:
    write(project, "build/out.py", "generated\n")
    write(project, "pkg/__pycache__/model.cpython-311.pyc", "bytecode")
    synced(walked=False)
    write(project, "build/out.py", "generated again\n")  # not watched at all
    synced(walked=False)
    (project / "build/out.py").unlink()
    (project / "build").rmdir()
    synced(walked=False)


def test_removed_or_renamed_directory_walks(project: Path, synced: Syncer) -> None:
    os.rename(project / "pkg/sub", project / "pkg/moved")
    synced(walked=True)
    (project / "pkg/moved/deep.py").unlink()
    (project / "pkg/moved").rmdir()
    synced(walked=True)


@pytest.mark.parametrize("name", [".gitignore", ".hotpodignore", "pkg/.gitignore"])
def test_ignore_file_change_walks(project: Path, synced: Syncer, name: str) -> None:
    write(project, "notes.txt", "kept for now")
    synced(walked=False)
    write(project, name, "*.txt\nsub/\n")
    synced(walked=True)  # and equal to a full walk under the new rules (Syncer checks)
    write(project, name, "")
    synced(walked=True)


def test_overflow_walks(project: Path, synced: Syncer) -> None:
    live = next(iter(watched._LIVE.values()))
    live.watcher.broken = True  # as after IN_Q_OVERFLOW (see test_watcher_overflow_means_walk)
    write(project, "main.py", "changed while the queue overflowed\n")
    synced(walked=True)
    write(project, "main.py", "and after\n")
    synced(walked=False)  # the walk started a new watcher


def test_lost_base_manifest_walks(project: Path, synced: Syncer, store: LocalStore) -> None:
    last = synced(walked=False).manifest_id
    path = store.root / "manifests" / f"{last}.json"
    path.chmod(0o644)
    path.unlink()
    write(project, "main.py", "v3\n")
    assert synced(walked=True).delta_base is None


def test_without_inotify_every_sync_walks(
    project: Path, store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch, "_lib", lambda: None)
    walks: list[int] = []
    real = walk._walk

    def counting(*args: object) -> object:
        walks.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(walk, "_walk", counting)
    syncer = Syncer(project, store, tmp_path / "cache", walks)
    syncer(walked=True)
    write(project, "main.py", "v2\n")
    syncer(walked=True)
    assert not watched._LIVE


def test_symlinked_file_whose_target_is_not_watched(project: Path, synced: Syncer) -> None:
    target = write(project, "build/real.py", "R = 1\n")  # an ignored directory: never watched
    (project / "pkg/link.py").symlink_to(target)
    synced(walked=False)  # the link is a new file of a watched directory
    target.write_text("R = 22\n")  # no event reaches the watcher
    synced(walked=False)
    target.unlink()  # now a broken link: skipped, as by the walk
    synced(walked=False)


def test_a_file_that_becomes_a_directory_walks(project: Path, synced: Syncer) -> None:
    (project / "main.py").unlink()
    write(project, "main.py/inside.py", "I = 1\n")
    synced(walked=True)


def test_forked_child_does_not_share_the_watcher(project: Path, synced: Syncer) -> None:
    assert watched._LIVE
    pid = os.fork()
    if pid == 0:  # the child: its state must be gone, or it would read the parent's events
        os._exit(0 if not watched._LIVE else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    write(project, "main.py", "after the fork\n")
    synced(walked=False)


@pytest.mark.skipif(sys.platform != "linux", reason="Linux")
def test_watching_can_be_turned_off(
    project: Path, synced: Syncer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOTPOD_SYNC_WATCH", "0")
    write(project, "main.py", "walked\n")
    synced(walked=True)
