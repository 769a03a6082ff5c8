from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotpod import codesync, watch
from hotpod.codesync import (
    CodeSyncError,
    HashCache,
    SyncResult,
    build_manifest,
    find_project_root,
    ignore,
    sync,
    walk,
)
from hotpod.config import reload_settings
from hotpod.errors import HotpodError
from hotpod.store import LocalStore, read_marker
from hotpod.store.memo import _MEMO

PAST = time.time_ns() - 3600 * 10**9  # an hour ago: old enough for the hash cache to trust


def write(root: Path, rel: str, data: str | bytes = "x", *, exec_bit: bool = False) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    if exec_bit:
        path.chmod(0o755)
    return path


def age(root: Path) -> None:
    """Backdate every file so the hash cache does not treat it as racily modified."""
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            os.utime(p, ns=(PAST, PAST))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    write(root, "pyproject.toml", "[project]\nname='demo'\n")
    write(root, "main.py", "import pkg\n")
    write(root, "pkg/__init__.py", "")
    write(root, "pkg/model.py", "class Model: ...\n")
    write(root, "scripts/run.sh", "#!/bin/sh\n", exec_bit=True)
    return root


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def fresh_watches() -> Iterator[None]:
    """Each test starts as a fresh process would: no tree watched (and leaves none open)."""
    codesync.forget_watches()
    yield
    codesync.forget_watches()


@pytest.fixture
def walk_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every sync walks (no watcher): for tests of the walk, the hash cache and its files."""
    monkeypatch.setenv("HOTPOD_SYNC_WATCH", "0")


def paths_of(root: Path) -> set[str]:
    manifest, _ = build_manifest(root)
    return set(manifest)


# -- project root -----------------------------------------------------------------------------


@pytest.mark.parametrize("marker", ["pyproject.toml", ".git", "setup.py", "setup.cfg"])
def test_find_project_root(tmp_path: Path, marker: str) -> None:
    root = tmp_path / "repo"
    if marker == ".git":
        (root / ".git").mkdir(parents=True)
    else:
        write(root, marker, "")
    script = write(root, "src/pkg/sub/mod.py", "")
    assert find_project_root(script) == root
    assert find_project_root(script.parent) == root
    assert find_project_root(root) == root


def test_find_project_root_nearest_wins(tmp_path: Path) -> None:
    write(tmp_path / "outer", ".git/HEAD", "")
    inner = tmp_path / "outer/libs/inner"
    write(inner, "setup.py", "")
    assert find_project_root(write(inner, "a/b.py", "")) == inner


def test_find_project_root_without_markers(tmp_path: Path) -> None:
    script = write(tmp_path, "loose/dir/script.py", "")
    if any((d / m).exists() for d in tmp_path.parents for m in codesync.ROOT_MARKERS):
        pytest.skip("the temp dir lies inside a project")
    assert find_project_root(script) == script.parent
    assert find_project_root(script.parent) == script.parent


# -- walking and ignore rules -----------------------------------------------------------------


def test_manifest_files_modes_and_paths(project: Path) -> None:
    manifest, paths = build_manifest(project)
    assert set(manifest) == {
        "pyproject.toml",
        "main.py",
        "pkg/__init__.py",
        "pkg/model.py",
        "scripts/run.sh",
    }
    assert manifest["scripts/run.sh"].mode == 0o755
    assert manifest["main.py"].mode == 0o644
    assert manifest["main.py"].size == len("import pkg\n")
    assert paths["pkg/model.py"] == project / "pkg/model.py"


def test_default_skips(project: Path) -> None:
    for rel in [
        ".git/config",
        ".hg/store",
        ".svn/entries",
        ".venv/lib/site.py",
        "venv/bin/python",
        "pkg/__pycache__/model.cpython-311.pyc",
        "stray.pyc",
        ".mypy_cache/x.json",
        ".pytest_cache/v",
        ".ruff_cache/c",
        "web/node_modules/left-pad/index.js",
        "nb/.ipynb_checkpoints/a.ipynb",
        ".DS_Store",
        "pkg/.DS_Store",
    ]:
        write(project, rel)
    assert paths_of(project) == {
        "pyproject.toml",
        "main.py",
        "pkg/__init__.py",
        "pkg/model.py",
        "scripts/run.sh",
    }


def test_gitignore_root_nested_and_negation(project: Path) -> None:
    write(project, ".gitignore", "*.log\n!keep.log\nbuild/\n/data.csv\n# comment\n")
    write(project, "app.log")
    write(project, "keep.log")
    write(project, "pkg/debug.log")
    write(project, "build/out.py")
    write(project, "pkg/build/gen.py")  # "build/" matches at any depth
    write(project, "data.csv")  # anchored to the root
    write(project, "pkg/data.csv")  # ... so this one stays
    write(project, "pkg/.gitignore", "secret.py\n/local.cfg\n!important.log\n")
    write(project, "pkg/secret.py")
    write(project, "pkg/sub/secret.py")  # nested pattern applies below its directory
    write(project, "pkg/local.cfg")
    write(project, "pkg/sub/local.cfg")  # anchored to pkg/
    write(project, "secret.py")  # outside pkg/: the nested file does not apply
    write(project, "pkg/important.log")  # re-included by the deeper file

    got = paths_of(project)
    assert {
        ".gitignore",
        "keep.log",
        "pkg/data.csv",
        "pkg/.gitignore",
        "pkg/sub/local.cfg",
        "secret.py",
        "pkg/important.log",
    } <= got
    for gone in [
        "app.log",
        "pkg/debug.log",
        "build/out.py",
        "pkg/build/gen.py",
        "data.csv",
        "pkg/secret.py",
        "pkg/sub/secret.py",
        "pkg/local.cfg",
    ]:
        assert gone not in got


def test_hotpodignore_and_override_of_gitignore(project: Path) -> None:
    write(project, ".gitignore", "generated.py\n")
    write(project, ".hotpodignore", "data/\n*.ckpt\n!generated.py\n")
    write(project, "data/train.csv")
    write(project, "model.ckpt")
    write(project, "generated.py")
    write(project, "pkg/.hotpodignore", "fixtures/\n")
    write(project, "pkg/fixtures/big.json")
    write(project, "fixtures/small.json")
    got = paths_of(project)
    assert "generated.py" in got  # .hotpodignore re-includes what .gitignore excludes
    assert "fixtures/small.json" in got
    assert not {"data/train.csv", "model.ckpt", "pkg/fixtures/big.json"} & got


def test_ignored_directories_are_pruned(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(project, ".gitignore", "outputs/\n")
    write(project, "outputs/run1/big.bin")
    write(project, "node_modules/x/y.js")
    scanned: list[str] = []
    real_scandir = os.scandir

    def spy(path: str):  # type: ignore[no-untyped-def]
        scanned.append(os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", spy)
    build_manifest(project)
    assert not [p for p in scanned if "outputs" in p or "node_modules" in p]
    assert str(project / "pkg") in scanned


def test_cannot_reinclude_inside_ignored_directory(project: Path) -> None:
    write(project, ".gitignore", "out/\n!out/keep.py\n")
    write(project, "out/keep.py")
    assert "out/keep.py" not in paths_of(project)


def test_symlinks(project: Path, tmp_path: Path) -> None:
    target = write(project, "pkg/real.py", "REAL = 1\n")
    (project / "alias.py").symlink_to(target)
    (project / "rel_alias.py").symlink_to("pkg/real.py")
    (project / "pkg_link").symlink_to(project / "pkg", target_is_directory=True)
    (project / "loop").symlink_to(project, target_is_directory=True)
    (project / "broken.py").symlink_to(project / "nowhere.py")
    outside = write(tmp_path, "outside/secret.txt", "s")
    (project / "outside.txt").symlink_to(outside)

    manifest, _ = build_manifest(project)
    assert manifest["alias.py"] == manifest["pkg/real.py"]
    assert manifest["rel_alias.py"] == manifest["pkg/real.py"]
    assert not {"broken.py", "outside.txt"} & set(manifest)
    assert not [p for p in manifest if p.startswith(("pkg_link", "loop"))]


def test_non_utf8_names_are_a_clear_error_unless_ignored(project: Path) -> None:
    bad = os.fsencode(project) + b"/data-\xff.bin"
    try:
        with open(bad, "wb") as f:
            f.write(b"x")
    except OSError:
        pytest.skip("the filesystem rejects non-UTF-8 names")
    with pytest.raises(CodeSyncError, match="not valid UTF-8"):
        build_manifest(project)
    write(project, ".hotpodignore", "data-*\n")
    assert "main.py" in paths_of(project)


def test_missing_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CodeSyncError, match="not a directory"):
        build_manifest(tmp_path / "missing")


# -- sync -------------------------------------------------------------------------------------


def test_sync_uploads_then_nothing_then_one_file(
    project: Path, store: LocalStore, cache_dir: Path
) -> None:
    write(project, "pkg/dup.py", "class Model: ...\n")  # same content as pkg/model.py
    first = sync(project, store, cache_dir)
    assert isinstance(first, SyncResult)
    assert first.root == project.resolve()
    assert first.files == 6
    assert first.uploaded_files == 5  # duplicates are uploaded once
    assert first.uploaded_bytes == first.total_bytes - len("class Model: ...\n")
    assert store.has_manifest(first.manifest_id)
    assert first.seconds >= 0

    again = sync(project, store, cache_dir)
    assert again.manifest_id == first.manifest_id
    assert (again.uploaded_files, again.uploaded_bytes) == (0, 0)

    new_text = "class Model:\n    version = 2\n"
    write(project, "pkg/model.py", new_text)
    third = sync(project, store, cache_dir)
    assert third.manifest_id != first.manifest_id
    assert (third.uploaded_files, third.uploaded_bytes) == (1, len(new_text))
    assert (
        store.get_manifest(third.manifest_id)["pkg/dup.py"].digest
        in store.get_manifest(first.manifest_id).digests
    )


def test_mode_change_alone_changes_manifest_without_upload(
    project: Path, store: LocalStore, cache_dir: Path
) -> None:
    first = sync(project, store, cache_dir)
    (project / "main.py").chmod(0o755)
    second = sync(project, store, cache_dir)
    assert second.manifest_id != first.manifest_id
    assert second.uploaded_files == 0
    assert store.get_manifest(second.manifest_id)["main.py"].mode == 0o755


def test_snapshot_does_not_follow_later_edits(
    project: Path, store: LocalStore, cache_dir: Path, tmp_path: Path
) -> None:
    v1 = sync(project, store, cache_dir)
    snap1 = store.materialize(v1.manifest_id, tmp_path / "snaps" / v1.manifest_id)
    assert (snap1 / "pkg/model.py").read_text() == "class Model: ...\n"
    assert os.access(snap1 / "scripts/run.sh", os.X_OK)

    write(project, "pkg/model.py", "class Model: pass  # edited\n")
    (project / "main.py").unlink()
    assert (snap1 / "pkg/model.py").read_text() == "class Model: ...\n"
    assert (snap1 / "main.py").exists()

    v2 = sync(project, store, cache_dir)
    snap2 = store.materialize(v2.manifest_id, tmp_path / "snaps" / v2.manifest_id, previous=snap1)
    assert (snap2 / "pkg/model.py").read_text() == "class Model: pass  # edited\n"
    assert not (snap2 / "main.py").exists()
    assert os.path.samefile(snap1 / "pkg/__init__.py", snap2 / "pkg/__init__.py")
    assert read_marker(snap1) == v1.manifest_id and read_marker(snap2) == v2.manifest_id


def test_sync_default_cache_dir_uses_hotpod_home(
    project: Path, store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOTPOD_HOME", str(tmp_path / "home"))
    reload_settings()
    try:
        age(project)
        sync(project, store)
        assert list((tmp_path / "home" / "cache" / "hashes").glob("*.json"))
    finally:
        monkeypatch.undo()
        reload_settings()


def test_big_trees_hash_and_upload_in_parallel(
    project: Path, store: LocalStore, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(walk, "_PARALLEL_BYTES", 1000)
    for i in range(40):
        write(project, f"gen/m{i:03}.py", f"N = {i}\n" * 10)
    result = sync(project, store, cache_dir)
    assert (result.files, result.uploaded_files) == (45, 45)
    manifest = store.get_manifest(result.manifest_id)
    assert store.get_bytes(manifest["gen/m007.py"].digest) == b"N = 7\n" * 10
    assert store.missing(manifest.digests) == set()


# -- hash cache -------------------------------------------------------------------------------


@pytest.fixture
def hash_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = walk.hash_file

    def counting(path: Path) -> str:
        calls.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(walk, "hash_file", counting)
    return calls


def test_hash_cache_avoids_rereading(
    project: Path, store: LocalStore, cache_dir: Path, hash_calls: list[str], walk_only: None
) -> None:
    age(project)
    first = sync(project, store, cache_dir)
    assert len(hash_calls) == first.files
    cache_file = HashCache.for_root(project, cache_dir).path
    before = cache_file.stat()

    hash_calls.clear()
    assert sync(project, store, cache_dir).manifest_id == first.manifest_id
    assert hash_calls == []  # stat only
    after = cache_file.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten

    path = write(project, "pkg/model.py", "class Model: changed = True\n")
    os.utime(path, ns=(PAST + 10**9, PAST + 10**9))
    result = sync(project, store, cache_dir)
    assert hash_calls == ["model.py"]
    assert result.uploaded_files == 1


def test_recently_modified_files_are_not_trusted_to_the_cache(
    project: Path, store: LocalStore, cache_dir: Path, hash_calls: list[str], walk_only: None
) -> None:
    age(project)
    write(project, "fresh.py", "just written\n")  # mtime is now: could change again this tick
    sync(project, store, cache_dir)
    hash_calls.clear()
    sync(project, store, cache_dir)
    assert hash_calls == ["fresh.py"]


def test_hash_cache_keyed_by_size_mtime_inode(tmp_path: Path) -> None:
    path = write(tmp_path, "f.txt", "abc")
    os.utime(path, ns=(PAST, PAST))
    cache = HashCache(tmp_path / "c.json")
    st = path.stat()
    assert cache.lookup(str(path), st) is None
    cache.record(str(path), st, "d" * 64, time.time_ns())
    assert cache.lookup(str(path), st) == "d" * 64
    cache.save()
    fresh = HashCache(tmp_path / "c.json")
    assert fresh.lookup(str(path), st) == "d" * 64
    os.utime(path, ns=(PAST + 1, PAST + 1))
    assert fresh.lookup(str(path), path.stat()) is None


@pytest.mark.parametrize(
    "content", [b"not json{", b"[]", b'{"version": 99}', b'{"version":1,"entries":{"x":5}}']
)
def test_corrupt_hash_cache_is_rebuilt(
    project: Path, store: LocalStore, cache_dir: Path, content: bytes
) -> None:
    age(project)
    expected = build_manifest(project)[0].id
    cache_file = HashCache.for_root(project, cache_dir).path
    cache_file.parent.mkdir(parents=True)
    cache_file.write_bytes(content)
    assert sync(project, store, cache_dir).manifest_id == expected
    doc = json.loads(cache_file.read_bytes())
    assert doc["version"] == 2 and len(doc["entries"]) == 5


def test_stale_cache_entries_are_dropped(
    project: Path, store: LocalStore, cache_dir: Path, walk_only: None
) -> None:
    age(project)
    sync(project, store, cache_dir)
    (project / "main.py").unlink()
    sync(project, store, cache_dir)
    doc = json.loads(HashCache.for_root(project, cache_dir).path.read_bytes())
    assert str(project / "main.py") not in doc["entries"]
    assert len(doc["entries"]) == 4


# -- guards -----------------------------------------------------------------------------------


def test_file_count_guard(project: Path, store: LocalStore, cache_dir: Path) -> None:
    for i in range(10):
        write(project, f"data/f{i}.txt")
    with pytest.raises(CodeSyncError) as info:
        sync(project, store, cache_dir, max_files=8)
    message = str(info.value)
    assert isinstance(info.value, HotpodError)
    assert str(project) in message
    assert ".hotpodignore" in message
    assert "more than 8 files" in message
    assert "data/" in message  # names the largest entries
    write(project, ".hotpodignore", "data/\n")
    assert sync(project, store, cache_dir, max_files=8).files == 6


def test_byte_guard(project: Path, store: LocalStore, cache_dir: Path) -> None:
    write(project, "weights.bin", b"\0" * 4096)
    with pytest.raises(CodeSyncError, match=r"more than 2\.0 KiB"):
        sync(project, store, cache_dir, max_bytes=2048)


# -- ignore-rule shortcut ---------------------------------------------------------------------

IGNORE_LINES = [
    "*.log",
    "build/",
    "!keep.log",
    "/top.py",
    "a/**/b",
    "docs/*.md",
    "[abc]?.txt",
    "\\#hash",
    "**/cache/",
    "x?y",
    "!important/**",
    "sub/dir/",
    "*.tmp",
    "!/root_only.tmp",
]
PATHS = [
    "run.log",
    "keep.log",
    "deep/keep.log",
    "build/",
    "src/build/",
    "build",
    "top.py",
    "pkg/top.py",
    "a/b",
    "a/x/y/b",
    "a/b/",
    "docs/readme.md",
    "docs/sub/readme.md",
    "a1.txt",
    "ab.txt",
    "d1.txt",
    "#hash",
    "cache/",
    "x/cache/",
    "cache",
    "xzy",
    "x/y",
    "important/a.log",
    "sub/dir/",
    "other/sub/dir/",
    "f.tmp",
    "root_only.tmp",
    "n/root_only.tmp",
    "plain.py",
    "pkg/mod.py",
]


@pytest.mark.parametrize("lines", [IGNORE_LINES, IGNORE_LINES[:3], ["!*.py"], ["# comment", ""]])
def test_quick_regex_agrees_with_pathspec(lines: list[str]) -> None:
    import pathspec

    spec = pathspec.GitIgnoreSpec.from_lines(lines)
    quick = ignore._quick_regex(spec)
    assert quick is not None
    for path in PATHS:
        verdict = ignore._spec_verdict(spec, path)
        if quick.search(path) is None:
            assert verdict is None, path  # the shortcut may only skip paths nothing matches
        fast = ignore._ignored(path.rstrip("/"), path.endswith("/"), ((_rules(spec, quick)),))
        slow = ignore._ignored(path.rstrip("/"), path.endswith("/"), ((_rules(spec, None)),))
        assert fast == slow, path


def _rules(spec: object, quick: object) -> ignore._Rules:
    return ignore._Rules("", spec, quick)  # type: ignore[arg-type]


def test_ignore_rules_under_subdirectories_use_the_shortcut(project: Path) -> None:
    write(project, ".gitignore", "*.log\n")
    write(project, "pkg/.gitignore", "gen_*.py\n!gen_keep.py\n")
    for rel in ["a.log", "pkg/gen_x.py", "pkg/gen_keep.py", "pkg/sub/gen_y.py", "pkg/sub/z.log"]:
        write(project, rel)
    got = paths_of(project)
    assert "pkg/gen_keep.py" in got
    assert not {"a.log", "pkg/gen_x.py", "pkg/sub/gen_y.py", "pkg/sub/z.log"} & got


def test_backslash_names_are_a_clear_error(project: Path) -> None:
    write(project, "odd\\name.py")
    with pytest.raises(CodeSyncError, match="backslash"):
        build_manifest(project)
    write(project, ".hotpodignore", "odd*\n")
    assert "main.py" in paths_of(project)


def test_bad_directory_names_are_caught_through_their_files(project: Path) -> None:
    write(project, "odd\\dir/plain.py")
    with pytest.raises(CodeSyncError, match="backslash"):
        build_manifest(project)
    bad = os.fsencode(project) + b"/dir-\xff"
    try:
        os.mkdir(bad)
    except OSError:
        pytest.skip("the filesystem rejects non-UTF-8 names")
    with open(bad + b"/plain.py", "wb") as f:
        f.write(b"x")
    write(project, ".hotpodignore", "odd*\n")
    with pytest.raises(CodeSyncError, match="not valid UTF-8"):
        build_manifest(project)


def test_tree_bookkeeping_names_are_skipped_at_the_root(project: Path) -> None:
    write(project, ".hotpod-manifest", "0" * 64)
    write(project, ".hotpod-manifest.next", "0" * 64)
    write(project, "pkg/.hotpod-manifest.next", "kept below the root")
    got = paths_of(project)
    assert ".hotpod-manifest" not in got and ".hotpod-manifest.next" not in got
    assert "pkg/.hotpod-manifest.next" in got


# -- manifest deltas and the last manifest ----------------------------------------------------


@pytest.fixture
def big_project(tmp_path: Path) -> Path:
    root = tmp_path / "big"
    write(root, "pyproject.toml", "[project]\nname='big'\n")
    for i in range(500):
        write(root, f"pkg/sub{i // 50:02}/mod{i:03}.py", f"X = {i}\n")
    age(root)
    return root


def test_one_file_change_sends_the_file_and_a_small_delta(
    big_project: Path, store: LocalStore, cache_dir: Path
) -> None:
    first = sync(big_project, store, cache_dir)
    full = len(store.get_manifest(first.manifest_id).to_json().encode())
    assert first.manifest_bytes == full and first.delta_base is None

    again = sync(big_project, store, cache_dir)
    assert (again.uploaded_bytes, again.manifest_bytes) == (0, 0)

    new_text = "X = 'changed'\n"
    write(big_project, "pkg/sub03/mod170.py", new_text)
    changed = sync(big_project, store, cache_dir)
    assert changed.delta_base == first.manifest_id
    assert changed.uploaded_bytes == len(new_text)
    assert 0 < changed.manifest_bytes < full / 50
    assert changed.manifest_bytes < 400  # the base id, one entry and framing
    _MEMO.clear()
    got = store.get_manifest(changed.manifest_id)
    assert store.get_bytes(got["pkg/sub03/mod170.py"].digest) == new_text.encode()
    assert len(got) == 501

    (big_project / "pkg/sub00/mod000.py").unlink()
    removed = sync(big_project, store, cache_dir)
    assert removed.delta_base == changed.manifest_id and removed.uploaded_bytes == 0
    assert 0 < removed.manifest_bytes < 400


def test_sync_remembers_the_last_manifest_per_store(
    project: Path, store: LocalStore, cache_dir: Path, tmp_path: Path
) -> None:
    first = sync(project, store, cache_dir)
    cache = HashCache.for_root(project, cache_dir)
    assert cache.last_path.is_file()
    assert cache.last_manifest(store.identity) == first.manifest_id

    other = LocalStore(tmp_path / "other-store")
    write(project, "main.py", "import pkg  # v2\n")
    in_other = sync(project, other, cache_dir)
    assert in_other.delta_base is None  # the other store never had the first manifest
    fresh = HashCache.for_root(project, cache_dir)
    assert fresh.last_manifest(store.identity) == first.manifest_id
    assert fresh.last_manifest(other.identity) == in_other.manifest_id

    for i in range(HashCache.MAX_STORES + 2):
        fresh.remember_manifest(f"store-{i}", first.manifest_id)
    fresh.save()
    kept = json.loads(fresh.last_path.read_bytes())
    assert len(kept) == HashCache.MAX_STORES and "store-0" not in kept


def test_lost_base_falls_back_to_a_full_manifest(
    big_project: Path, store: LocalStore, cache_dir: Path
) -> None:
    first = sync(big_project, store, cache_dir)
    path = store.root / "manifests" / f"{first.manifest_id}.json"
    path.chmod(0o644)
    path.unlink()
    write(big_project, "pkg/sub00/mod001.py", "X = 'v2'\n")
    second = sync(big_project, store, cache_dir)
    assert second.delta_base is None and second.manifest_bytes > 10_000
    assert store.get_manifest(second.manifest_id)["pkg/sub00/mod001.py"].size == 9


def test_corrupt_last_manifest_file_is_ignored(
    project: Path, store: LocalStore, cache_dir: Path, walk_only: None
) -> None:
    first = sync(project, store, cache_dir)
    cache = HashCache.for_root(project, cache_dir)
    cache.last_path.write_text("{not json")
    write(project, "main.py", "v2\n")
    second = sync(project, store, cache_dir)
    assert second.delta_base is None and second.manifest_id != first.manifest_id
    assert HashCache.for_root(project, cache_dir).last_manifest(store.identity) == (
        second.manifest_id
    )


# -- the no-change fast path ------------------------------------------------------------------


def test_no_change_sync_skips_building_the_manifest(
    project: Path,
    store: LocalStore,
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    walk_only: None,
) -> None:
    age(project)
    first = sync(project, store, cache_dir)
    built: list[int] = []
    real = walk._Tree.manifest

    def spy(self: walk._Tree, previous: object = None) -> object:
        built.append(1)
        return real(self, previous)  # type: ignore[arg-type]

    monkeypatch.setattr(walk._Tree, "manifest", spy)
    assert sync(project, store, cache_dir).manifest_id == first.manifest_id
    assert built == []  # the cache vouched for the id

    (project / "main.py").chmod(0o755)  # a mode change alone must be seen
    chmod = sync(project, store, cache_dir)
    assert chmod.manifest_id != first.manifest_id and built
    assert store.get_manifest(chmod.manifest_id)["main.py"].mode == 0o755

    built.clear()
    (project / "pkg/model.py").unlink()
    gone = sync(project, store, cache_dir)
    assert "pkg/model.py" not in store.get_manifest(gone.manifest_id) and built

    built.clear()
    old = write(project, "pkg/added.py", "A = 1\n")
    os.utime(old, ns=(PAST, PAST))
    added = sync(project, store, cache_dir)
    assert "pkg/added.py" in store.get_manifest(added.manifest_id) and built
    built.clear()
    assert sync(project, store, cache_dir).manifest_id == added.manifest_id
    assert built == []


def test_racy_change_is_hashed_until_it_settles(
    project: Path, store: LocalStore, cache_dir: Path, hash_calls: list[str], walk_only: None
) -> None:
    age(project)
    first = sync(project, store, cache_dir)
    cache_file = HashCache.for_root(project, cache_dir).path
    before = cache_file.read_bytes()

    write(project, "pkg/model.py", "class Model: v = 2\n")  # just written: not trusted yet
    hash_calls.clear()
    second = sync(project, store, cache_dir)
    assert hash_calls == ["model.py"] and second.manifest_id != first.manifest_id
    assert cache_file.read_bytes() == before  # only forgetting one entry: not rewritten
    hash_calls.clear()
    assert sync(project, store, cache_dir).manifest_id == second.manifest_id
    assert hash_calls == ["model.py"]  # still racy: hashed again, never the stale id

    os.utime(project / "pkg/model.py", ns=(PAST + 10**9, PAST + 10**9))
    hash_calls.clear()
    assert sync(project, store, cache_dir).manifest_id == second.manifest_id
    assert hash_calls == ["model.py"]
    hash_calls.clear()
    assert sync(project, store, cache_dir).manifest_id == second.manifest_id
    assert hash_calls == []


def test_sync_result_fields_default_for_old_callers() -> None:
    result = SyncResult(Path("/x"), "0" * 64, 1, 1, 0, 0, 0.0)
    assert (result.manifest_bytes, result.delta_base) == (0, None)


# -- the watched fast path against a full walk ------------------------------------------------


def test_watched_syncs_equal_a_full_walk_after_random_edits(
    project: Path, store: LocalStore, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import random

    if not watch.available():
        pytest.skip("inotify is Linux-only")
    rng = random.Random(4242)
    write(project, ".gitignore", "*.log\nbuild/\n")
    walks: list[int] = []
    real_walk = walk._walk

    def counting(*args: object) -> object:
        walks.append(1)
        return real_walk(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(walk, "_walk", counting)
    dirs = ["", "pkg/", "scripts/"]

    def files() -> list[Path]:
        return sorted(
            p
            for p in project.rglob("*")
            if (p.is_file() or p.is_symlink()) and p.name not in codesync.IGNORE_FILES
        )

    def edit() -> bool:
        """One random edit; True if it should make the next sync walk."""
        op = rng.choice(
            [
                "modify",
                "modify",
                "same-size",
                "create",
                "delete",
                "rename",
                "chmod",
                "ignored",
                "link",
                "mkdir",
                "rules",
            ]
        )
        present = files()
        if op in ("modify", "same-size", "delete", "rename", "chmod") and not present:
            op = "create"
        if op == "modify":
            target = rng.choice(present)
            if target.is_symlink() and not target.exists():
                target.unlink()
            else:
                target.write_text(f"v{rng.randrange(10**6)}\n" * rng.randrange(1, 4))
        elif op == "same-size":  # same size, same second: only the content tells
            target = rng.choice(present)
            if target.exists():
                size = target.stat().st_size
                target.write_bytes(bytes(rng.choice(b"abc") for _ in range(size)))
        elif op == "create":
            write(project, f"{rng.choice(dirs)}f{rng.randrange(100)}.py", f"C = {rng.random()}\n")
        elif op == "delete":
            rng.choice(present).unlink()
        elif op == "rename":
            source = rng.choice(present)
            source.rename(project / f"{rng.choice(dirs)}r{rng.randrange(100)}.py")
        elif op == "chmod":
            target = rng.choice(present)
            if target.exists():
                target.chmod(target.stat().st_mode ^ 0o100)
        elif op == "ignored":
            write(project, rng.choice(["debug.log", "build/x.py", "pkg/__pycache__/m.pyc"]))
        elif op == "link":
            link = project / f"{rng.choice(dirs)}l{rng.randrange(20)}.py"
            if not link.exists() and not link.is_symlink() and present:
                link.symlink_to(rng.choice(present))
        elif op == "mkdir":
            new_dir = f"d{rng.randrange(1000)}/"
            dirs.append(new_dir)
            write(project, f"{new_dir}m.py", "M = 1\n")
            return True
        elif op == "rules":
            write(
                project, rng.choice([".hotpodignore", "pkg/.gitignore"]), f"r{rng.randrange(9)}*\n"
            )
            return True
        return False

    sync(project, store, cache_dir)
    fast = 0
    for _ in range(80):
        must_walk = False
        for _ in range(rng.randrange(1, 4)):
            must_walk |= edit()
        before = len(walks)
        result = sync(project, store, cache_dir)
        walked = len(walks) > before
        if must_walk:
            assert walked
        fast += not walked
        expected, _ = build_manifest(project)  # a full walk, no hash cache
        assert result.manifest_id == expected.id, "the watched sync missed a change"
        assert store.get_manifest(result.manifest_id) == expected
        assert (result.files, result.total_bytes) == (len(expected), expected.total_bytes)
    assert fast >= 40  # most syncs knew what changed without walking
