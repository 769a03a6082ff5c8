from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import stat
import threading
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hotpod.errors import HotpodError
from hotpod.store import (
    MARKER,
    MAX_DELTA_CHAIN,
    PENDING,
    FileEntry,
    LocalStore,
    Manifest,
    Store,
    StoreError,
    TreeUpdate,
    read_marker,
    recent_manifest,
)
from hotpod.store.memo import _MEMO


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


SEED = int(sha(b"hotpod manifest id, additive, v2"), 16)


def additive_id(manifest: Manifest) -> str:
    """The manifest id as the module docstring defines it, written out independently."""
    total = SEED
    for path, e in manifest.items():
        total += int(sha(f"{path}\0{e.digest}\0{e.mode}\0{e.size}".encode()), 16)
    return f"{total % 2**256:064x}"


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
    assert m1.id == m1.recompute_id() == additive_id(m1)
    assert Manifest().id == f"{SEED:064x}"
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
    doc = json.dumps({"files": {path: [sha(b""), 0o644, 0]}, "version": 2})
    with pytest.raises(StoreError):
        Manifest.from_json(doc)


def test_manifest_rejects_file_and_directory_clash() -> None:
    entry = FileEntry(sha(b""), 0o644, 0)
    with pytest.raises(StoreError, match="both a file and a directory"):
        Manifest({"a": entry, "a/b": entry})


@pytest.mark.parametrize("text", ["", "[]", "{}", '{"version":2}', '{"version":1,"files":{}}'])
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


# -- canonical JSON ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "plain.py",
        'quote"d.py',
        "tab\there",
        "ünïcödé/ファイル.py",
        "emoji😀.txt",
        "ctl\x01\x7f",
        "ls\u2028",
    ],
)
def test_to_json_matches_json_dumps(path: str) -> None:
    m = Manifest({path: FileEntry(sha(b"x"), 0o755, 12), "z.py": FileEntry(sha(b"y"), 0o644, 0)})
    doc = {"files": {p: [e.digest, e.mode, e.size] for p, e in m.items()}, "version": 2}
    expected = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert m.to_json() == expected
    assert Manifest.from_json(m.to_json()) == m


def test_file_entry_rejects_bool_size() -> None:
    with pytest.raises(StoreError, match="size"):
        FileEntry(sha(b""), 0o644, True)


# -- manifest deltas --------------------------------------------------------------------------


@pytest.fixture
def no_memo() -> Iterator[None]:
    """Forget manifests this process saw, so reads go to disk (and after the test, too)."""
    _MEMO.clear()
    yield
    _MEMO.clear()


def big_tree(store: LocalStore, n: int, tag: bytes = b"") -> dict[str, bytes]:
    files = {f"pkg/sub{i // 50:02}/mod{i:04}.py": b"X = %d\n" % i + tag for i in range(n)}
    for data in set(files.values()):
        store.put_bytes(data)
    return files


def manifest_of(store: LocalStore, files: dict[str, bytes | tuple[bytes, int]]) -> Manifest:
    entries = {}
    for path, value in files.items():
        data, mode = value if isinstance(value, tuple) else (value, 0o644)
        entries[path] = FileEntry(store.put_bytes(data), mode, len(data))
    return Manifest(entries)


def stored_head(store: LocalStore, manifest_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        (store.root / "manifests" / f"{manifest_id}.json").read_bytes()
    )
    return doc


def test_changes_since_and_with_changes_round_trip() -> None:
    a, b, c = (FileEntry(sha(x), 0o644, 1) for x in (b"a", b"b", b"c"))
    old = Manifest({"keep.py": a, "change.py": a, "gone/x.py": b})
    new = Manifest({"keep.py": a, "change.py": c, "added/y.py": b})
    changed, removed = new.changes_since(old)
    assert changed == {"change.py": c, "added/y.py": b}
    assert removed == ("gone/x.py",)
    derived = old.with_changes(changed, removed)
    assert derived == new and derived.id == new.id and list(derived) == list(new)
    assert old.with_changes({}, ()) == old


def test_with_changes_validates_what_it_adds() -> None:
    a = FileEntry(sha(b"a"), 0o644, 1)
    base = Manifest({"pkg/mod.py": a, "top": a})
    with pytest.raises(StoreError, match="Invalid manifest path"):
        base.with_changes({"../evil": a})
    with pytest.raises(StoreError, match="both a file and a directory"):
        base.with_changes({"pkg": a})
    with pytest.raises(StoreError, match="both a file and a directory"):
        base.with_changes({"top/inner.py": a})
    with pytest.raises(StoreError, match="no such file"):
        base.with_changes({}, ["absent.py"])
    assert set(base.with_changes({"top/inner.py": a}, ["top"])) == {"pkg/mod.py", "top/inner.py"}


def test_delta_is_stored_small_and_resolves(store: LocalStore, no_memo: None) -> None:
    files = big_tree(store, 500)
    first = manifest_of(store, dict(files))
    full = store.write_manifest(first)
    assert full.bytes_written == len(first.to_json().encode()) and full.base is None

    files["pkg/sub03/mod0170.py"] = b"X = 'changed'\n"
    files["new/extra.py"] = b"E = 1\n"
    del files["pkg/sub09/mod0499.py"]
    second = manifest_of(store, dict(files))
    written = store.write_manifest(second, base=first.id)
    assert written.base == first.id and written.manifest_id == second.id
    assert written.bytes_written < full.bytes_written / 50  # one file's worth, not 500
    head = stored_head(store, second.id)
    assert head["base"] == first.id and head["depth"] == 1
    assert head["removed"] == ["pkg/sub09/mod0499.py"]
    assert set(head["set"]) == {"pkg/sub03/mod0170.py", "new/extra.py"}

    _MEMO.clear()
    got = store.get_manifest(second.id)
    assert got == second and got.id == second.id
    assert store.put_manifest(second, base=first.id) == second.id  # already there: no write
    assert store.write_manifest(second, base=first.id).bytes_written == 0


def test_delta_chains_rebase_every_max_chain(store: LocalStore, no_memo: None) -> None:
    files = big_tree(store, 60)
    ids: list[str] = []
    expected: dict[str, Manifest] = {}
    base: str | None = None
    for step in range(2 * MAX_DELTA_CHAIN + 2):
        files[f"pkg/sub00/mod{step % 7:04}.py"] = b"step %d\n" % step
        manifest = manifest_of(store, dict(files))
        written = store.write_manifest(manifest, base=base)
        ids.append(manifest.id)
        expected[manifest.id] = manifest
        base = manifest.id
    depths = [stored_head(store, i).get("depth", 0) for i in ids]
    assert depths[: MAX_DELTA_CHAIN + 2] == [0, *range(1, MAX_DELTA_CHAIN + 1), 0]
    assert depths[-1] == MAX_DELTA_CHAIN and written.base == ids[-2]
    for manifest_id in reversed(ids):  # newest first: each resolves its own chain from disk
        _MEMO.clear()
        assert store.get_manifest(manifest_id) == expected[manifest_id]
    _MEMO.clear()
    assert [store.get_manifest(i) for i in ids] == [expected[i] for i in ids]  # oldest first


def test_delta_not_used_when_not_smaller_or_base_absent(store: LocalStore) -> None:
    one = manifest_of(store, {"a.py": b"1"})
    store.put_manifest(one)
    two = manifest_of(store, {"b.py": b"2"})  # nothing shared: the delta would be larger
    assert store.write_manifest(two, base=one.id).base is None
    assert "files" in stored_head(store, two.id)
    three = manifest_of(store, {"c.py": b"3"})
    assert store.write_manifest(three, base=sha(b"never stored")).base is None
    assert store.get_manifest(three.id) == three


def test_delta_needs_only_its_new_blobs(store: LocalStore) -> None:
    files = big_tree(store, 100)
    first = manifest_of(store, dict(files))
    store.put_manifest(first)
    files["pkg/sub00/mod0000.py"] = b"never uploaded"
    second = Manifest(
        dict(
            first.items(), **{"pkg/sub00/mod0000.py": FileEntry(sha(b"never uploaded"), 0o644, 14)}
        )
    )
    with pytest.raises(StoreError, match="not in the store"):
        store.put_manifest(second, base=first.id)
    assert not store.has_manifest(second.id)


def test_missing_delta_base_is_named(store: LocalStore, no_memo: None) -> None:
    files = big_tree(store, 50)
    first = manifest_of(store, dict(files))
    store.put_manifest(first)
    files["pkg/sub00/mod0001.py"] = b"v2"
    second = manifest_of(store, dict(files))
    store.put_manifest(second, base=first.id)
    os.chmod(store.root / "manifests" / f"{first.id}.json", 0o644)
    os.unlink(store.root / "manifests" / f"{first.id}.json")
    _MEMO.clear()
    with pytest.raises(StoreError, match=f"delta on manifest {first.id}"):
        store.get_manifest(second.id)


def test_corrupt_or_looping_delta_chains_are_errors(store: LocalStore, no_memo: None) -> None:
    a_id, b_id = sha(b"A"), sha(b"B")
    for this, other in ((a_id, b_id), (b_id, a_id)):
        doc = {"base": other, "depth": 1, "removed": [], "set": {}, "version": 3}
        (store.root / "manifests").mkdir(parents=True, exist_ok=True)
        (store.root / "manifests" / f"{this}.json").write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="longer than"):
        store.get_manifest(a_id)
    bad = sha(b"bad")
    (store.root / "manifests" / f"{bad}.json").write_text('{"base":"' + a_id + '","set":5}')
    with pytest.raises(StoreError, match="corrupt"):
        store.get_manifest(bad)


def test_tampered_delta_fails_verification(store: LocalStore, no_memo: None) -> None:
    files = big_tree(store, 50)
    first = manifest_of(store, dict(files))
    store.put_manifest(first)
    files["pkg/sub00/mod0001.py"] = b"v2"
    second = manifest_of(store, dict(files))
    store.put_manifest(second, base=first.id)
    path = store.root / "manifests" / f"{second.id}.json"
    doc = json.loads(path.read_bytes())
    doc["set"]["pkg/sub00/mod0001.py"][2] += 1
    os.chmod(path, 0o644)
    path.write_text(json.dumps(doc))
    _MEMO.clear()
    with pytest.raises(StoreError, match=f"Manifest {second.id} is corrupt"):
        store.get_manifest(second.id)


def test_memoized_manifest_still_needs_the_file(store: LocalStore) -> None:
    manifest = put_tree(store, {"a.py": b"1"})
    assert recent_manifest(manifest.id) == manifest
    path = store.root / "manifests" / f"{manifest.id}.json"
    os.chmod(path, 0o644)
    os.unlink(path)
    with pytest.raises(StoreError, match="not in the store"):
        store.get_manifest(manifest.id)


def test_identity_names_the_store(tmp_path: Path) -> None:
    assert LocalStore(tmp_path / "a").identity == LocalStore(tmp_path / "a").identity
    assert LocalStore(tmp_path / "a").identity != LocalStore(tmp_path / "b").identity


# -- in-place trees ---------------------------------------------------------------------------


V1: dict[str, bytes | tuple[bytes, int]] = {
    "main.py": b"import pkg\n",
    "pkg/__init__.py": b"",
    "pkg/mod.py": b"X = 1\n",
    "pkg/old/only.py": b"O = 1\n",
    "run.sh": (b"#!/bin/sh\n", 0o755),
    "data/a": b"file becomes a directory",
    "d/x.py": b"directory becomes a file",
}
V2: dict[str, bytes | tuple[bytes, int]] = {
    "main.py": b"import pkg  # v2\n",
    "pkg/__init__.py": b"",
    "pkg/mod.py": (b"X = 1\n", 0o755),  # mode change only
    "pkg/new.py": b"N = 2\n",
    "run.sh": (b"#!/bin/sh\n", 0o755),
    "data/a/inner.txt": b"now inside a directory",
    "d": b"now a file",
}


def code(root: Path) -> dict[str, tuple[bytes, int]]:
    """The tree's files without bytecode."""
    return {p: v for p, v in tree(root).items() if "__pycache__" not in p}


def as_modes(files: dict[str, bytes | tuple[bytes, int]]) -> dict[str, tuple[bytes, int]]:
    return {p: v if isinstance(v, tuple) else (v, 0o644) for p, v in files.items()}


def test_update_tree_first_time_writes_everything(store: LocalStore, tmp_path: Path) -> None:
    one = put_tree(store, V1)
    update = store.update_tree(one.id, tmp_path / "pod" / "code")
    dest = tmp_path / "pod" / "code"
    assert isinstance(update, TreeUpdate)
    assert (update.manifest_id, update.previous_id) == (one.id, None)
    assert update.changed == tuple(one) and update.removed == ()
    assert update.seconds >= 0
    assert tree(dest) == as_modes(V1)
    assert read_marker(dest) == one.id and not (dest / PENDING).exists()
    assert not [p for p in dest.rglob("*") if p.name.startswith(".hotpod-tmp")]
    (dest / "main.py").write_bytes(b"scribble")  # copies, not links to blobs
    assert store.get_bytes(one["main.py"].digest) == b"import pkg\n"


def test_update_tree_writes_only_what_changed(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = put_tree(store, V1), put_tree(store, V2)
    dest = tmp_path / "code"
    store.update_tree(one.id, dest)
    (dest / "pkg/old/__pycache__").mkdir()
    (dest / "pkg/old/__pycache__/only.cpython-311.pyc").write_bytes(b"stale")
    (dest / "pkg/__pycache__").mkdir()
    (dest / "pkg/__pycache__/mod.cpython-311.pyc").write_bytes(b"stale")
    (dest / "pkg/__pycache__/mod.cpython-311.opt-1.pyc").write_bytes(b"stale")
    (dest / "pkg/__pycache__/module.cpython-311.pyc").write_bytes(b"other module: kept")
    (dest / "pkg/__pycache__/__init__.cpython-311.pyc").write_bytes(b"unchanged: kept")
    inode = {p: (dest / p).stat().st_ino for p in ("pkg/__init__.py", "run.sh")}
    copies: list[str] = []
    real_copy = store.copy_blob

    def counting(digest: str, target: Path) -> None:
        copies.append(digest)
        real_copy(digest, target)

    monkeypatch.setattr(store, "copy_blob", counting)
    update = store.update_tree(two.id, dest)

    assert code(dest) == as_modes(V2)
    assert update.previous_id == one.id
    assert set(update.changed) == {"main.py", "pkg/mod.py", "pkg/new.py", "data/a/inner.txt", "d"}
    assert set(update.removed) == {"pkg/old/only.py", "data/a", "d/x.py"}
    assert len(copies) == len(update.changed)
    assert {p: (dest / p).stat().st_ino for p in inode} == inode  # untouched
    assert not (dest / "pkg/old").exists()  # emptied (bytecode aside): removed
    assert sorted(p.name for p in (dest / "pkg/__pycache__").iterdir()) == [
        "__init__.cpython-311.pyc",
        "module.cpython-311.pyc",
    ]
    assert read_marker(dest) == two.id and not (dest / PENDING).exists()

    back = store.update_tree(one.id, dest)  # and back again
    assert code(dest) == as_modes(V1)
    assert set(back.removed) == {"pkg/new.py", "data/a/inner.txt", "d"}


def test_update_tree_is_idempotent(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = put_tree(store, V1)
    dest = tmp_path / "code"
    store.update_tree(one.id, dest)

    def boom(*_: object) -> None:
        raise AssertionError("an up-to-date tree must be left alone")

    monkeypatch.setattr(store, "get_manifest", boom)
    monkeypatch.setattr(store, "copy_blob", boom)
    again = store.update_tree(one.id, dest)
    assert (again.changed, again.removed, again.previous_id) == ((), (), one.id)
    assert tree(dest) == as_modes(V1)


class Crash(Exception):
    pass


def crash_after(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch, copies: int
) -> pytest.MonkeyPatch:
    real_copy = LocalStore.copy_blob
    done = [0]

    def flaky(self: LocalStore, digest: str, target: Path) -> None:
        if done[0] >= copies:
            Path(target).write_bytes(b"half")  # a temp file left behind by a crash
            raise Crash
        done[0] += 1
        real_copy(self, digest, target)

    monkeypatch.setattr(store, "copy_blob", flaky.__get__(store))
    return monkeypatch


@pytest.mark.parametrize("copies", [0, 2, 4])
def test_update_tree_resumes_after_a_crash(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copies: int
) -> None:
    one, two = put_tree(store, V1), put_tree(store, V2)
    dest = tmp_path / "code"
    store.update_tree(one.id, dest)
    crash_after(store, monkeypatch, copies)
    with pytest.raises(Crash):
        store.update_tree(two.id, dest)
    assert read_marker(dest) == one.id  # the marker is written last
    assert (dest / PENDING).read_text().split() == [two.id]
    monkeypatch.undo()
    update = store.update_tree(two.id, dest)
    assert tree(dest) == as_modes(V2)
    assert read_marker(dest) == two.id and not (dest / PENDING).exists()
    assert update.previous_id == one.id
    assert not [p for p in dest.rglob("*") if p.name.startswith(".hotpod-tmp")]


def test_crash_then_a_different_target_leaves_no_strays(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = put_tree(store, V1), put_tree(store, V2)
    three = put_tree(store, {"main.py": b"v3\n", "pkg/mod.py": b"X = 3\n"})
    dest = tmp_path / "code"
    store.update_tree(one.id, dest)
    crash_after(store, monkeypatch, 4)  # some of V2's files (pkg/new.py, ...) were written
    with pytest.raises(Crash):
        store.update_tree(two.id, dest)
    monkeypatch.undo()
    store.update_tree(three.id, dest)
    assert tree(dest) == as_modes({"main.py": b"v3\n", "pkg/mod.py": b"X = 3\n"})
    assert read_marker(dest) == three.id and not (dest / PENDING).exists()


def test_first_update_crash_resumes(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = put_tree(store, V1)
    dest = tmp_path / "code"
    crash_after(store, monkeypatch, 3)
    with pytest.raises(Crash):
        store.update_tree(one.id, dest)
    assert read_marker(dest) is None
    monkeypatch.undo()
    store.update_tree(one.id, dest)
    assert tree(dest) == as_modes(V1) and read_marker(dest) == one.id


def test_update_tree_with_unknown_marker_checks_every_file(
    store: LocalStore, tmp_path: Path
) -> None:
    one, two = put_tree(store, V1), put_tree(store, V2)
    dest = tmp_path / "code"
    store.update_tree(one.id, dest)
    (dest / "pkg/stray.py").write_text("left by someone")
    (dest / "pkg/mod.py").write_text("edited in place")
    (dest / MARKER).write_text(sha(b"a manifest this store never had"))
    update = store.update_tree(two.id, dest)
    assert update.changed == tuple(two) and update.removed == ()
    got = code(dest)
    assert {p: got[p] for p in two} == as_modes(V2)  # every file of the manifest is right
    assert got["pkg/stray.py"] == (b"left by someone", 0o644)  # unknown: not removed
    assert read_marker(dest) == two.id


def test_first_update_merges_into_an_existing_directory(store: LocalStore, tmp_path: Path) -> None:
    one, two = put_tree(store, V1), put_tree(store, V2)
    dest = tmp_path / "app"
    dest.mkdir()
    (dest / "user.txt").write_text("keep me")
    (dest / "main.py").write_text("overwritten")
    assert store.update_tree(one.id, dest).changed == tuple(one)
    assert code(dest) == {**as_modes(V1), "user.txt": (b"keep me", 0o644)}
    store.update_tree(two.id, dest)  # removes only what the previous manifest had
    assert code(dest) == {**as_modes(V2), "user.txt": (b"keep me", 0o644)}
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        store.update_tree(one.id, tmp_path / "file")


def test_update_tree_replaces_links_in_the_way(store: LocalStore, tmp_path: Path) -> None:
    one = put_tree(store, {"pkg/a.py": b"1"})
    two = put_tree(store, {"pkg/a.py": b"2", "pkg/b.py": b"3"})
    dest = tmp_path / "code"
    store.update_tree(one.id, dest)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(dest / "pkg")
    (dest / "pkg").symlink_to(outside)  # user code swapped the directory for a link
    store.update_tree(two.id, dest)
    assert list(outside.iterdir()) == []
    assert not (dest / "pkg").is_symlink()
    assert tree(dest) == as_modes({"pkg/a.py": b"2", "pkg/b.py": b"3"})


def test_update_tree_rejects_reserved_paths(store: LocalStore, tmp_path: Path) -> None:
    for name in (MARKER, PENDING):
        manifest = put_tree(store, {name: b"x"})
        with pytest.raises(StoreError, match="reserved"):
            store.update_tree(manifest.id, tmp_path / "code")


def test_update_tree_of_large_tree_touches_only_the_change(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = big_tree(store, 500)
    first = manifest_of(store, dict(files))
    store.put_manifest(first)
    dest = tmp_path / "code"
    store.update_tree(first.id, dest)
    files["pkg/sub05/mod0250.py"] = b"X = 'new'\n"
    second = manifest_of(store, dict(files))
    store.put_manifest(second, base=first.id)
    calls: list[Path] = []

    def counting(path: Path) -> str:
        calls.append(path)
        return sha(Path(path).read_bytes())

    monkeypatch.setattr("hotpod.store.tree.hash_file", counting)
    update = store.update_tree(second.id, dest)
    assert update.changed == ("pkg/sub05/mod0250.py",) and calls == []
    assert (dest / "pkg/sub05/mod0250.py").read_bytes() == b"X = 'new'\n"


# -- incremental ids and the delta fast path of update_tree -----------------------------------


def random_entry(rng: random.Random) -> FileEntry:
    size = rng.randrange(0, 50)
    return FileEntry(sha(b"%d" % rng.randrange(10**9)), rng.choice((0o644, 0o755)), size)


POOL = [f"top{i}.py" for i in range(6)] + [
    f"{d}/f{i}.py" for d in ("a", "a/b", "a/b/c", "z") for i in range(5)
]


def random_changes(
    rng: random.Random, current: Mapping[str, object]
) -> tuple[dict[str, FileEntry], list[str]]:
    present = sorted(current)
    removed = rng.sample(present, rng.randrange(0, min(3, len(present)) + 1))
    changed = {p: random_entry(rng) for p in rng.sample(POOL, rng.randrange(0, 4))}
    for path in present:
        if rng.random() < 0.05 and path not in removed:
            changed.setdefault(path, replace(current[path], mode=0o755))  # type: ignore[type-var]
    return changed, [p for p in removed if p not in changed]


def test_incremental_ids_equal_a_full_recomputation(store: LocalStore, no_memo: None) -> None:
    rng = random.Random(20261127)
    manifest = Manifest({p: random_entry(rng) for p in rng.sample(POOL, 12)})
    assert manifest.id == manifest.recompute_id() == additive_id(manifest)
    for step in range(300):
        changed, removed = random_changes(rng, manifest)
        derived = manifest.with_changes(changed, removed)
        rebuilt = Manifest(dict(derived.items()))  # built from scratch: the full computation
        assert derived == rebuilt and list(derived) == list(rebuilt)
        assert derived.id == rebuilt.id == derived.recompute_id()
        assert derived.origin is not None and derived.origin.base == manifest.id
        net_changed, net_removed = rebuilt.changes_since(manifest)
        assert dict(derived.origin.changed) == net_changed
        assert derived.origin.removed == tuple(sorted(net_removed))
        if step % 25 == 0:
            assert derived.id == additive_id(derived)
            assert derived.to_json() == rebuilt.to_json()
        manifest = derived
    assert manifest.with_changes({}, ()).id == manifest.id


def test_delta_chains_resolve_to_the_same_ids(
    store: LocalStore, no_memo: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "missing", lambda digests: set())  # random digests: no blobs
    rng = random.Random(7)
    manifest = Manifest({p: random_entry(rng) for p in rng.sample(POOL, 15)})
    store.put_manifest(manifest)
    expected = {manifest.id: manifest}
    for step in range(2 * MAX_DELTA_CHAIN + 5):  # across a rebase, and into the next chain
        changed, removed = random_changes(rng, manifest)
        new = manifest.with_changes(changed, removed)
        store.write_manifest(new, base=manifest.id)
        expected[new.id] = new
        if step % 3 == 0:
            _MEMO.clear()  # resolved from disk: a chain, or a full manifest
        got = store.get_manifest(new.id)
        assert got == new and got.id == new.recompute_id() == new.id
        manifest = new
    for manifest_id in reversed(list(expected)):
        _MEMO.clear()
        assert store.get_manifest(manifest_id) == expected[manifest_id]


def write_random_tree(
    store: LocalStore, rng: random.Random, current: dict[str, tuple[bytes, int]]
) -> Manifest:
    present = sorted(current)
    for path in rng.sample(present, rng.randrange(0, min(3, len(present)) + 1)):
        del current[path]
    for path in rng.sample(POOL, rng.randrange(0, 4)):
        current[path] = (b"v%d\n" % rng.randrange(10**6), rng.choice((0o644, 0o755)))
    for path in present:
        if path in current and rng.random() < 0.05:
            current[path] = (current[path][0], 0o755 if current[path][1] == 0o644 else 0o644)
    entries = {}
    for path, (data, mode) in current.items():
        entries[path] = FileEntry(store.put_bytes(data), mode, len(data))
    return Manifest(entries)


def test_update_tree_delta_path_equals_the_full_path(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_memo: None
) -> None:
    rng = random.Random(99)
    files: dict[str, tuple[bytes, int]] = {}
    fast, full = tmp_path / "fast", tmp_path / "full"
    previous = write_random_tree(store, rng, files)
    store.put_manifest(previous)
    store.update_tree(previous.id, fast)
    store.update_tree(previous.id, full)
    diffs: list[int] = []
    real_changes_since = Manifest.changes_since

    def counting(self: Manifest, base: Manifest) -> Any:
        diffs.append(1)
        return real_changes_since(self, base)

    monkeypatch.setattr(Manifest, "changes_since", counting)
    deltas = 0
    for _ in range(60):
        manifest = Manifest(dict(write_random_tree(store, rng, files).items()))  # no origin
        written = store.write_manifest(manifest, base=previous.id)  # a delta (or a rebase)
        for pyc in ("a/__pycache__/f1.cpython-311.pyc", "__pycache__/top2.cpython-311.pyc"):
            if rng.random() < 0.3:  # bytecode, as an import leaves: dropped when stale
                for tree_dir in (fast, full):
                    if (tree_dir / pyc).parent.parent.is_dir():
                        (tree_dir / pyc).parent.mkdir(exist_ok=True)
                        (tree_dir / pyc).write_bytes(b"stale bytecode")
        diffs.clear()
        got_fast = store.update_tree(manifest.id, fast)  # the pod that made the last update
        if written.base is not None:  # stored as a delta on the marker's manifest
            assert diffs == []  # applied as is: no comparison of whole manifests
            deltas += 1
        with monkeypatch.context() as m:
            m.setattr(Manifest, "origin", property(lambda self: None))  # forces the full diff
            got_full = store.update_tree(manifest.id, full)
        assert set(got_fast.changed) == set(got_full.changed)
        assert set(got_fast.removed) == set(got_full.removed)
        assert code(fast) == code(full) == files
        assert tree(fast) == tree(full)  # stale bytecode dropped alike
        assert read_marker(fast) == read_marker(full) == manifest.id
        assert not (fast / PENDING).exists()
        previous = manifest
    assert deltas > 30


def test_a_pod_applies_deltas_across_a_rebase(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_memo: None
) -> None:
    files = big_tree(store, 200)
    previous = manifest_of(store, dict(files))
    store.put_manifest(previous)
    dest = tmp_path / "code"
    store.update_tree(previous.id, dest)
    diffs: list[int] = []
    real_changes_since = Manifest.changes_since

    def counting(self: Manifest, base: Manifest) -> Any:
        diffs.append(1)
        return real_changes_since(self, base)

    rebased = 0
    for step in range(MAX_DELTA_CHAIN + 3):
        files[f"pkg/sub00/mod{step % 5:04}.py"] = b"step %d\n" % step
        client_side = previous.with_changes(
            manifest_of(store, dict(files)).changes_since(previous)[0]
        )
        written = store.write_manifest(client_side, base=previous.id)
        rebased += written.base is None
        _MEMO.clear()  # the pod is another process: it holds only what it last applied
        store.get_manifest(previous.id)
        with monkeypatch.context() as m:
            m.setattr(Manifest, "changes_since", counting)
            update = store.update_tree(client_side.id, dest)
        assert diffs == [] and update.changed == (f"pkg/sub00/mod{step % 5:04}.py",)
        assert (dest / update.changed[0]).read_bytes() == b"step %d\n" % step
        previous = client_side
    assert rebased == 1  # one full manifest, with its delta kept beside it
    assert code(dest) == as_modes(dict(files))
