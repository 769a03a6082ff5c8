from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from hotpod.errors import HotpodError
from hotpod.store import (
    MARKER,
    FileEntry,
    LocalStore,
    Manifest,
    Store,
    StoreError,
    read_marker,
)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put_tree(store: LocalStore, files: dict[str, bytes | tuple[bytes, int]]) -> Manifest:
    entries = {}
    for path, value in files.items():
        data, mode = value if isinstance(value, tuple) else (value, 0o644)
        entries[path] = FileEntry(store.put_bytes(data), mode, len(data))
    manifest = Manifest(entries)
    store.put_manifest(manifest)
    return manifest


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
        for p in root.rglob("*")
        if p.is_file() and p.name != MARKER
    }


# -- blobs ------------------------------------------------------------------------------------


def test_store_is_a_store_and_errors_are_hotpod_errors(store: LocalStore) -> None:
    assert isinstance(store, Store)
    assert issubclass(StoreError, HotpodError)


def test_put_get_bytes_round_trip(store: LocalStore) -> None:
    digest = store.put_bytes(b"hello")
    assert digest == sha(b"hello")
    assert store.get_bytes(digest) == b"hello"
    with store.open_blob(digest) as f:
        assert f.read() == b"hello"
    path = store.blob_path(digest)
    assert path == store.root / "blobs" / digest[:2] / digest
    assert not path.stat().st_mode & 0o222  # read-only
    assert store.put_bytes(b"hello") == digest  # idempotent


def test_put_file_streams_large_file(store: LocalStore, tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # several chunks
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    digest = store.put_file(src)
    assert digest == sha(data)
    assert store.get_bytes(digest) == data
    assert store.put_file(src, digest) == digest


def test_put_file_with_wrong_digest_fails_and_leaves_nothing(
    store: LocalStore, tmp_path: Path
) -> None:
    src = tmp_path / "a.txt"
    src.write_bytes(b"actual")
    wrong = sha(b"expected")
    with pytest.raises(StoreError, match="changed while"):
        store.put_file(src, wrong)
    assert store.missing([wrong, sha(b"actual")]) == {wrong, sha(b"actual")}
    assert not [p for p in (store.root / "blobs").rglob("*") if p.is_file()]


def test_missing(store: LocalStore) -> None:
    have = store.put_bytes(b"a")
    lack = sha(b"b")
    assert store.missing([have, lack, lack]) == {lack}
    assert store.missing([]) == set()


def test_missing_blob_is_a_clear_error(store: LocalStore) -> None:
    digest = sha(b"nope")
    with pytest.raises(StoreError, match=digest):
        store.get_bytes(digest)


def test_corrupt_blob_detected(store: LocalStore) -> None:
    digest = store.put_bytes(b"good")
    path = store.blob_path(digest)
    path.chmod(0o644)
    path.write_bytes(b"evil")
    with pytest.raises(StoreError, match="corrupt"):
        store.get_bytes(digest)


def test_concurrent_put_of_same_blob(store: LocalStore, tmp_path: Path) -> None:
    data = os.urandom(256 * 1024)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    barrier = threading.Barrier(16)
    results: list[str] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results.append(store.put_bytes(data) if i % 2 else store.put_file(src))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert set(results) == {sha(data)}
    assert store.get_bytes(sha(data)) == data
    leftovers = [p.name for p in (store.root / "blobs").rglob("*") if p.name.startswith(".tmp")]
    assert leftovers == []


BAD_DIGESTS = [
    "",
    "abc",
    "../../etc/passwd",
    "A" * 64,
    "g" * 64,
    "0" * 63,
    "0" * 65,
    "../" + "0" * 61,
    "0" * 62 + "/x",
    "0" * 64 + "\n",
]


@pytest.mark.parametrize("bad", BAD_DIGESTS)
def test_malformed_digests_rejected(store: LocalStore, bad: str, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="Invalid"):
        store.blob_path(bad)
    with pytest.raises(StoreError):
        store.get_bytes(bad)
    with pytest.raises(StoreError):
        store.missing([bad])
    with pytest.raises(StoreError):
        store.has_manifest(bad)
    with pytest.raises(StoreError):
        store.get_manifest(bad)
    with pytest.raises(StoreError):
        store.materialize(bad, tmp_path / "dest")
    with pytest.raises(StoreError):
        FileEntry(bad)


# -- manifests --------------------------------------------------------------------------------


def test_manifest_round_trip_and_canonical_id(store: LocalStore) -> None:
    a = FileEntry(sha(b"a"), 0o644, 1)
    b = FileEntry(sha(b"b"), 0o755, 1)
    m1 = Manifest({"z/b.sh": b, "a.py": a})
    m2 = Manifest([("a.py", a), ("z/b.sh", b)])
    assert m1 == m2 and m1.id == m2.id
    assert list(m1) == ["a.py", "z/b.sh"]
    assert Manifest.from_json(m1.to_json()) == m1
    assert m1.id == sha(m1.to_json().encode())
    assert Manifest({"a.py": FileEntry(sha(b"a"), 0o755, 1), "z/b.sh": b}).id != m1.id
    assert m1.total_bytes == 2 and m1.digests == {sha(b"a"), sha(b"b")}
    with pytest.raises(TypeError):
        m1["c"] = a  # type: ignore[index]


def test_store_and_get_manifest(store: LocalStore) -> None:
    manifest = put_tree(store, {"a.py": b"print(1)\n", "pkg/b.py": b""})
    assert store.has_manifest(manifest.id)
    assert store.get_manifest(manifest.id) == manifest
    assert (store.root / "manifests" / f"{manifest.id}.json").is_file()


def test_absent_manifest_names_the_id(store: LocalStore) -> None:
    missing = sha(b"no manifest")
    assert not store.has_manifest(missing)
    with pytest.raises(StoreError, match=missing):
        store.get_manifest(missing)


def test_manifest_needs_its_blobs(store: LocalStore) -> None:
    manifest = Manifest({"a": FileEntry(sha(b"absent"), 0o644, 6)})
    with pytest.raises(StoreError, match="not in the store"):
        store.put_manifest(manifest)
    assert not store.has_manifest(manifest.id)


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../x", "a/../../x", "a/..", "./a", "a//b", "a/", "", "a\\b", "."]
)
def test_bad_manifest_paths_rejected(path: str) -> None:
    entry = FileEntry(sha(b""), 0o644, 0)
    with pytest.raises(StoreError, match="Invalid manifest path"):
        Manifest({path: entry})
    doc = json.dumps({"files": {path: [sha(b""), 0o644, 0]}, "version": 1})
    with pytest.raises(StoreError):
        Manifest.from_json(doc)


def test_manifest_rejects_file_and_directory_clash() -> None:
    entry = FileEntry(sha(b""), 0o644, 0)
    with pytest.raises(StoreError, match="both a file and a directory"):
        Manifest({"a": entry, "a/b": entry})


@pytest.mark.parametrize("text", ["", "[]", "{}", '{"version":1}', '{"version":2,"files":{}}'])
def test_malformed_manifest_json(text: str) -> None:
    with pytest.raises(StoreError):
        Manifest.from_json(text)


def test_bad_file_entries() -> None:
    with pytest.raises(StoreError, match="mode"):
        FileEntry(sha(b""), 0o600, 0)
    with pytest.raises(StoreError, match="size"):
        FileEntry(sha(b""), 0o644, -1)
    assert FileEntry.mode_of(0o100700) == 0o755
    assert FileEntry.mode_of(0o100666) == 0o644


# -- materialize ------------------------------------------------------------------------------

FILES: dict[str, bytes | tuple[bytes, int]] = {
    "main.py": b"import pkg\n",
    "pkg/__init__.py": b"",
    "pkg/deep/mod.py": b"X = 1\n",
    "run.sh": (b"#!/bin/sh\necho hi\n", 0o755),
    "copy.py": b"X = 1\n",  # same content as pkg/deep/mod.py
}


def test_materialize_reproduces_files_and_modes(store: LocalStore, tmp_path: Path) -> None:
    manifest = put_tree(store, FILES)
    dest = store.materialize(manifest.id, tmp_path / "snap")
    assert dest == tmp_path / "snap"
    got = tree(dest)
    assert got == {p: v if isinstance(v, tuple) else (v, 0o644) for p, v in FILES.items()}
    assert read_marker(dest) == manifest.id
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap", "store"]  # no temp dirs left


def test_materialized_files_are_copies_not_blobs(store: LocalStore, tmp_path: Path) -> None:
    manifest = put_tree(store, FILES)
    dest = store.materialize(manifest.id, tmp_path / "snap")
    (dest / "main.py").write_bytes(b"user code scribbles here\n")
    assert store.get_bytes(manifest["main.py"].digest) == b"import pkg\n"


def test_materialize_is_idempotent(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = put_tree(store, FILES)
    dest = store.materialize(manifest.id, tmp_path / "snap")
    inode = (dest / "main.py").stat().st_ino

    def boom(*_: object) -> None:
        raise AssertionError("an existing snapshot must be returned without work")

    monkeypatch.setattr(store, "get_manifest", boom)
    assert store.materialize(manifest.id, dest) == dest
    assert (dest / "main.py").stat().st_ino == inode


def test_materialize_refuses_foreign_dest(store: LocalStore, tmp_path: Path) -> None:
    one = put_tree(store, {"a": b"1"})
    two = put_tree(store, {"a": b"2"})
    store.materialize(one.id, tmp_path / "snap")
    with pytest.raises(StoreError, match=f"already holds a snapshot of manifest {one.id}"):
        store.materialize(two.id, tmp_path / "snap")
    write_to = tmp_path / "plain"
    write_to.mkdir()
    (write_to / "user.txt").write_text("keep me")
    with pytest.raises(StoreError, match="something else"):
        store.materialize(two.id, write_to)
    assert (write_to / "user.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    assert read_marker(store.materialize(two.id, tmp_path / "empty")) == two.id


def test_materialize_reuses_previous_snapshot(store: LocalStore, tmp_path: Path) -> None:
    old = put_tree(store, FILES)
    prev = store.materialize(old.id, tmp_path / old.id)
    changed = dict(FILES, **{"main.py": b"import pkg  # v2\n", "new.py": b"N = 2\n"})
    del changed["copy.py"]
    changed["run.sh"] = (b"#!/bin/sh\necho hi\n", 0o644)  # same content, exec bit dropped
    new = put_tree(store, changed)
    dest = store.materialize(new.id, tmp_path / new.id, previous=prev)

    assert tree(dest) == {p: v if isinstance(v, tuple) else (v, 0o644) for p, v in changed.items()}
    assert not (dest / "copy.py").exists()

    def same(rel: str, prev_rel: str | None = None) -> bool:
        return os.path.samefile(prev / (prev_rel or rel), dest / rel)

    assert same("pkg/__init__.py")  # unchanged: hard-linked
    # same content lives at copy.py and pkg/deep/mod.py in prev: either may lend it
    assert same("pkg/deep/mod.py") or same("pkg/deep/mod.py", "copy.py")
    assert not same("main.py")  # changed content
    assert not same("run.sh")  # changed mode: a link would change the old snapshot too
    assert stat.S_IMODE((prev / "run.sh").stat().st_mode) == 0o755
    assert tree(prev) == {p: v if isinstance(v, tuple) else (v, 0o644) for p, v in FILES.items()}


def test_modified_previous_file_is_not_reused(store: LocalStore, tmp_path: Path) -> None:
    old = put_tree(store, FILES)
    prev = store.materialize(old.id, tmp_path / "old")
    mtime = (prev / MARKER).stat().st_mtime_ns
    (prev / "pkg/deep/mod.py").write_bytes(b"X = 9\n")  # same size, edited in place
    os.utime(prev / "pkg/deep/mod.py", ns=(mtime + 10**9, mtime + 10**9))
    (prev / "pkg/__init__.py").write_bytes(b"grown")  # size differs
    new = put_tree(store, dict(FILES, **{"main.py": b"v2"}))
    dest = store.materialize(new.id, tmp_path / "new", previous=prev)
    assert (dest / "pkg/deep/mod.py").read_bytes() == b"X = 1\n"
    assert (dest / "pkg/__init__.py").read_bytes() == b""
    assert (dest / "copy.py").read_bytes() == b"X = 1\n"


@pytest.mark.parametrize("previous", ["missing", "not-a-snapshot"])
def test_unusable_previous_is_ignored(store: LocalStore, tmp_path: Path, previous: str) -> None:
    (tmp_path / "not-a-snapshot").mkdir()
    manifest = put_tree(store, FILES)
    dest = store.materialize(manifest.id, tmp_path / "snap", previous=tmp_path / previous)
    assert read_marker(dest) == manifest.id


def test_failed_materialize_leaves_nothing(store: LocalStore, tmp_path: Path) -> None:
    manifest = put_tree(store, FILES)
    os.unlink(store.blob_path(manifest["run.sh"].digest))
    with pytest.raises(StoreError, match=manifest["run.sh"].digest):
        store.materialize(manifest.id, tmp_path / "out" / "snap")
    assert list((tmp_path / "out").iterdir()) == []


def test_materialize_rejects_reserved_marker_path(store: LocalStore, tmp_path: Path) -> None:
    manifest = put_tree(store, {MARKER: b"x"})
    with pytest.raises(StoreError, match="reserved"):
        store.materialize(manifest.id, tmp_path / "snap")


def test_concurrent_materialize_of_same_manifest(store: LocalStore, tmp_path: Path) -> None:
    manifest = put_tree(store, FILES)
    dest = tmp_path / "snap"
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            store.materialize(manifest.id, dest)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert read_marker(dest) == manifest.id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap", "store"]
