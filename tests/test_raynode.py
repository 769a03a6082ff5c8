"""A pod's Ray node's short temp-dir links (``hotpod.runtime.raynode``), without starting Ray:
``ray start`` is replaced by a stand-in and the system temp dir by one of the test's own."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from hotpod.runtime import raynode


@pytest.fixture
def tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def pod_root(tmp_path: Path, name: str, made: bool = True) -> Path:
    root = tmp_path / "pods" / name
    if made:
        raynode.node_dir(root).mkdir(parents=True)
    return root


def test_a_node_that_stops_or_is_killed_leaves_no_link(tmp: Path, tmp_path: Path) -> None:
    for forget in (raynode.stop, raynode.forget):  # stopped by its pod, or killed with it
        root = pod_root(tmp_path, forget.__name__)
        link = raynode.temp_link(root)
        assert link.parent == tmp
        link.symlink_to(raynode.node_dir(root), target_is_directory=True)
        (raynode.node_dir(root) / "node.json").write_text("{}")
        assert raynode.running(root)
        forget(root)
        assert not link.is_symlink() and not raynode.running(root)
        assert raynode.node_dir(root).is_dir()  # (its files stay with the pod)


def test_the_next_start_removes_only_our_dangling_links(
    tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = pod_root(tmp_path, "live-0")
    raynode.temp_link(live).symlink_to(raynode.node_dir(live))
    gone = pod_root(tmp_path, "gone-0", made=False)  # a killed pod's root, deleted since
    raynode.temp_link(gone).symlink_to(raynode.node_dir(gone))
    (tmp / "hotpod-ray-someone-else").symlink_to(tmp_path / "elsewhere")  # not a pod's node dir
    (tmp / "hotpod-ray-file").write_text("not a link")
    if os.getuid() == 0:  # another user's link to a gone pod: theirs to remove
        other = tmp / "hotpod-ray-other-user"
        other.symlink_to(raynode.node_dir(pod_root(tmp_path, "theirs-0", made=False)))
        os.lchown(other, 4242, 4242)
    started = []

    def ray_start(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        started.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(raynode.subprocess, "run", ray_start)
    root = pod_root(tmp_path, "new-0")
    env = {"RANK": "0", "RAY_ADDRESS": "127.0.0.1:6390"}
    assert raynode.ensure(root, env, lambda line: None) == "started"
    assert len(started) == 1 and str(raynode.temp_link(root)) in started[0]
    left = sorted(p.name for p in tmp.iterdir())
    want = {raynode.temp_link(live).name, raynode.temp_link(root).name}
    want |= {"hotpod-ray-someone-else", "hotpod-ray-file"}
    if os.getuid() == 0:
        want.add("hotpod-ray-other-user")
    assert left == sorted(want)
    assert raynode.temp_link(root).resolve() == raynode.node_dir(root).resolve()
