"""Broadcasts passed on by pods (``hotpod.tree``, ``hotpod.runtime.relay``): the plan of a tree
and the reading of a relay's answer without I/O, then real pools with the tree forced at a few
pods (``HOTPOD_FANOUT_TREE``) and a small degree, so that pods relay to pods that relay again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator

import pytest

import dist_code as dc
import hotpod as kt
from hotpod import tree, wire
from hotpod.backends import PodInfo
from hotpod.config import reload_settings
from hotpod.errors import ConfigError
from hotpod.runtime import relay


@pytest.fixture
def fanout_tree(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str | None], None]]:
    """Sets HOTPOD_FANOUT_TREE (None: unsets it) and re-reads the settings; restores both."""

    def set_to(value: str | None) -> None:
        if value is None:
            monkeypatch.delenv("HOTPOD_FANOUT_TREE", raising=False)
        else:
            monkeypatch.setenv("HOTPOD_FANOUT_TREE", value)
        reload_settings()

    yield set_to
    monkeypatch.undo()
    reload_settings()


def pods(n: int) -> list[PodInfo]:
    return [PodInfo(f"p-{i}", i, f"http://127.0.0.1:{9000 + i}", "running") for i in range(n)]


def leaf_order(targets: list, addr_rank: dict[str, int], head: int, procs: int) -> list[int]:
    """The global ranks of a relay's leaves, in the order it answers for them."""
    out = []
    for t in targets:
        if t == "self":
            out.append(head * procs)
        elif isinstance(t, str):
            out.append(head * procs + int(t.partition(":")[2]))
        else:
            sub = addr_rank[t["addr"]]
            out += leaf_order(t["targets"], addr_rank, sub, procs)
    return out


@pytest.mark.parametrize(("n", "procs", "degree"), [(5, 1, 2), (16, 1, 4), (7, 3, 2), (33, 2, 4)])
def test_a_tree_answers_for_every_process_once_in_rank_order(n, procs, degree):
    ps = pods(n)
    addr_rank = {f"127.0.0.1:{9000 + i}": i for i in range(n)}
    calls = tree.plan(ps, procs, True, degree)
    assert len(calls) == min(degree, n)  # the caller calls only ``degree`` pods
    ranks = []
    for pod, targets, width in calls:
        order = leaf_order(targets, addr_rank, pod.rank, procs)
        assert len(order) == width == sum(relay.width(t) for t in targets)
        ranks += order
    assert ranks == list(range(n * procs))
    flat = tree.plan(ps, procs, False)
    assert [(p.rank, t, w) for p, t, w in flat] == [
        (i, ["self", *(f"local:{k}" for k in range(1, procs))], procs) for i in range(n)
    ]
    names = [p.name for p in tree.leaves(ps[:1], procs)]
    assert names == (["p-0"] if procs == 1 else [f"p-0/{k}" for k in range(procs)])


def test_the_threshold_comes_from_the_environment(fanout_tree):
    fanout_tree("3")
    assert not tree.use_tree(pods(3)) and tree.use_tree(pods(4))
    fanout_tree("0")
    assert not tree.use_tree(pods(500))
    fanout_tree(None)
    assert tree.threshold() == tree.DEFAULT_THRESHOLD == 64
    fanout_tree(" ")
    assert tree.threshold() == 64


@pytest.mark.parametrize("value", ["many", "-1", "2.5"])
def test_a_bad_threshold_is_refused_saying_what_is_allowed(fanout_tree, value):
    with pytest.raises(ConfigError, match=rf"HOTPOD_FANOUT_TREE='{value}': expected a whole"):
        fanout_tree(value)


def test_a_relay_answer_is_read_leaf_by_leaf(capsys):
    reader = tree.RelayReader(["a", "b", "c"], True, None)
    error = wire.encode_error(ValueError("no"), "Traceback ...", "b", 1)
    frames = [
        relay.part(2, wire.FRAME_LOG, b"hello from c"),
        relay.part(0, wire.FRAME_JSON, b"1"),
        relay.part(2, wire.FRAME_PICKLE, wire.dumps_pickle({"x": 3})),
    ]
    frames += [relay.part(1, k, p) for k, p in wire.FrameDecoder().feed(error)]
    data = b"".join(frames)
    for i in range(0, len(data), 7):  # frames split anywhere
        reader.feed(data[i : i + 7])
    assert "(c) hello from c" in capsys.readouterr().out
    with pytest.raises(tree.LeafErrors) as info:
        reader.outcomes()
    out = info.value.outcomes
    assert out[0] == (True, 1) and out[2] == (True, {"x": 3})
    assert out[1][0] is False and isinstance(out[1][1], ValueError)

    lost = tree.RelayReader(["p-0/0", "p-0/1"], True, None)
    info_lost = relay.error_info("hotpod.errors.PodTerminatedError", "gone", "p-0", 0, lost=True)
    lost.feed(relay.part(1, wire.FRAME_ERROR, info_lost) + relay.part(0, wire.FRAME_JSON, b"0"))
    with pytest.raises(kt.PodTerminatedError, match="gone"):  # a collective pool fails at once
        lost.outcomes()
    assert json.loads(info_lost)["relay"] == "lost"


@pytest.mark.slow
def test_a_broadcast_down_a_tree_gathers_results_errors_and_logs(
    hotpod_home, monkeypatch, fanout_tree, capsys
):
    fanout_tree("2")
    monkeypatch.setattr(tree, "DEGREE", 2)
    called = []
    real = tree.call_pod
    monkeypatch.setattr(
        tree, "call_pod", lambda client, pod, *a: called.append(pod.name) or real(client, pod, *a)
    )
    remote = kt.fn(dc.rank_echo, name="tree").to(kt.Compute(cpus="0.1", replicas=6))
    out = remote("x")
    assert out == [(r, "x") for r in range(6)] and out.ranks == list(range(6))
    assert sorted(called) == ["tree-0", "tree-3"]  # two subtrees of 3: pods relay to pods
    printed = capsys.readouterr().out
    for r in range(6):
        assert f"(tree-{r}) echo from rank {r}" in printed  # each line prefixed with its pod
    with pytest.raises(kt.BroadcastError) as info:
        remote("raise")
    assert set(info.value.errors) == {3} and isinstance(info.value.errors[3], ValueError)
    assert info.value.results[4] == (4, "raise") and info.value.pods[3] == "tree-3"
    assert asyncio.run(remote.aio("y")) == [(r, "y") for r in range(6)]
    with pytest.raises(kt.BroadcastError) as missing:
        kt.cls(dc.Member, name="tree").to(kt.Compute(cpus="0.1", replicas=6)).nothing()
    assert all(isinstance(e, AttributeError) for e in missing.value.errors.values())
    assert len(missing.value.errors) == 6


@pytest.mark.slow
def test_a_tree_of_pods_running_two_processes_each(hotpod_home, monkeypatch, fanout_tree):
    fanout_tree("2")
    monkeypatch.setattr(tree, "DEGREE", 2)
    compute = kt.Compute(cpus="0.1").distribute("spmd", workers=3, num_proc=2)
    envs = kt.fn(dc.dist_env, name="tree-np").to(compute)()
    assert [e["RANK"] for e in envs] == [str(r) for r in range(6)]
    assert envs.pods[3] == "tree-np-1/1"
