"""Pools whose pods change under a call: typed errors raised promptly (never a hang in a
collective), re-forming a pool, handle options that pick pods or restart workers, and calls on
a live instance (concurrent calls, a call that raises, ``__init__`` before ``.to()`` returns).

torch comes from ``.ci/run``; without it the torch test fails when ``CI`` is set, and is
skipped otherwise.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import time

import psutil
import pytest

import dist_code as dc
import hotpod as kt
from frameworks import need
from hotpod.backends import Plan, get_backend

pytestmark = pytest.mark.slow

HALF = kt.Compute(cpus="0.5")


def test_a_killed_pod_fails_the_call_fast_and_the_pool_re_forms(hotpod_home):
    need("torch", "pip install torch==2.13.0")
    compute = HALF.distribute("pytorch", workers=2)
    remote = kt.fn(dc.torch_all_reduce_loop, name="reform").to(compute)
    assert [r["sum"] for r in remote(0.2)] == [3.0, 3.0]  # the group is formed
    assert compute.pod_names() == ["reform-0", "reform-1"]
    pod1 = next(p for p in get_backend().get("reform").pods if p.rank == 1)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(remote, 120.0)  # both ranks all-reduce in a loop
        time.sleep(1.5)
        assert not call.done()
        killed = time.monotonic()
        os.killpg(pod1.pid, signal.SIGKILL)  # the pod and everything it started
        error = call.exception(timeout=30)
        took = time.monotonic() - killed
    assert isinstance(error, (kt.PodTerminatedError, kt.WorkerMembershipChanged)), error
    assert took < 10, f"the call took {took:.1f} s to fail"
    assert "reform-1" in str(error)
    print(f"the call failed {took:.2f} s after the kill")

    # re-form on the surviving pod: a world of 1 (rank 0's stuck worker is replaced)
    alone = kt.fn(dc.torch_all_reduce_loop, name="reform").to(
        compute.distribute("pytorch", workers=1)
    )
    assert alone(0.2) == {"rank": 0, "world": 1, "sum": 1.0}
    assert compute.pod_names() == ["reform-0"]


def test_membership_change_mid_call_raises_worker_membership_changed(hotpod_home):
    compute = HALF.distribute("pytorch", workers=2)  # (the function does not use torch)
    remote = kt.fn(dc.pid_after, name="members").to(compute)
    before = remote(0)
    backend = get_backend()
    svc = backend.get("members")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(remote, 60.0)
        time.sleep(0.5)
        grown = time.monotonic()
        backend.apply(Plan("members", 3, svc.template, svc.labels, svc.meta))  # a pod joins
        error = call.exception(timeout=30)
        took = time.monotonic() - grown
    assert isinstance(error, kt.WorkerMembershipChanged), error
    assert error.added == ["members-2"] and not error.removed
    assert took < 5, f"the call took {took:.1f} s to fail"
    after = remote.with_options(workers=[0, 1])(0)  # the workers still in the call were replaced
    assert all(a != b for a, b in zip(after, before, strict=True))
    remote.teardown()


def test_the_async_call_fails_as_fast_when_a_pod_dies(hotpod_home):
    need("torch", "pip install torch==2.13.0")
    remote = kt.fn(dc.torch_all_reduce_loop, name="areform").to(
        HALF.distribute("pytorch", workers=2)
    )
    pod1 = next(p for p in get_backend().get("areform").pods if p.rank == 1)

    async def killed_mid_call() -> tuple[BaseException, float]:
        call = asyncio.ensure_future(remote.aio(120.0))
        await asyncio.sleep(1.5)
        assert not call.done()
        killed = time.monotonic()
        os.killpg(pod1.pid, signal.SIGKILL)
        with pytest.raises((kt.PodTerminatedError, kt.WorkerMembershipChanged)) as info:
            await asyncio.wait_for(call, 30)
        return info.value, time.monotonic() - killed

    error, took = asyncio.run(killed_mid_call())
    assert took < 10, f"the async call took {took:.1f} s to fail"
    assert "areform-1" in str(error)
    deadline = time.monotonic() + 30  # rank 0's stuck worker was replaced: the pool serves again
    while True:
        try:
            assert [r["sum"] for r in remote(0.2)] == [3.0, 3.0]
            break
        except (kt.PodUnreachableError, kt.BroadcastError, kt.CallError):
            assert time.monotonic() < deadline
            time.sleep(0.5)


def test_async_membership_change_mid_call_raises_at_once(hotpod_home):
    remote = kt.fn(dc.pid_after, name="amembers").to(HALF.distribute("jax", workers=2))
    before = remote(0)
    backend = get_backend()
    svc = backend.get("amembers")

    async def grown_mid_call() -> tuple[BaseException, float]:
        call = asyncio.ensure_future(remote.aio(60.0))
        await asyncio.sleep(0.5)
        grown = time.monotonic()
        await asyncio.to_thread(
            backend.apply, Plan("amembers", 3, svc.template, svc.labels, svc.meta)
        )
        with pytest.raises(kt.WorkerMembershipChanged) as info:
            await asyncio.wait_for(call, 30)
        return info.value, time.monotonic() - grown

    error, took = asyncio.run(grown_mid_call())
    assert error.added == ["amembers-2"] and took < 5, took
    after = remote.with_options(workers=[0, 1])(0)  # the workers still in the call were replaced
    assert all(a != b for a, b in zip(after, before, strict=True))
    remote.teardown()


def test_a_dead_process_of_a_pod_fails_the_call_fast_and_the_pod_comes_back(hotpod_home):
    need("torch", "pip install torch==2.13.0")
    compute = HALF.distribute("pytorch", workers=2, num_proc=2)
    remote = kt.fn(dc.torch_all_reduce_loop, name="procs").to(compute)
    assert [r["sum"] for r in remote(0.2)] == [10.0] * 4
    pod1 = next(p for p in get_backend().get("procs").pods if p.rank == 1)
    workers = psutil.Process(pod1.pid).children()
    local1 = next(w for w in workers if w.environ().get("HOTPOD_LOCAL_RANK") == "1")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(remote, 120.0)
        time.sleep(1.5)
        assert not call.done()
        killed = time.monotonic()
        local1.kill()  # one process of pod 1 (rank 3): the other three wait in a collective
        error = call.exception(timeout=30)
        took = time.monotonic() - killed
    assert isinstance(error, (kt.PodTerminatedError, kt.WorkerMembershipChanged)), error
    assert took < 10, f"the call took {took:.1f} s to fail"
    assert "procs-1" in str(error)
    assert compute.pod_names() == ["procs-0", "procs-1"]  # (the pod itself stayed)
    deadline = time.monotonic() + 30  # every process was replaced: the pool serves again
    while True:
        try:
            assert [r["sum"] for r in remote(0.2)] == [10.0] * 4
            break
        except (kt.PodUnreachableError, kt.BroadcastError, kt.CallError):
            assert time.monotonic() < deadline
            time.sleep(0.5)
    remote.teardown()


def test_a_rank_that_raises_does_not_leave_the_others_waiting_forever(hotpod_home, monkeypatch):
    from hotpod import membership

    monkeypatch.setattr(membership, "RANK_ERROR_GRACE", 1.0)
    remote = kt.fn(dc.raise_on_rank, name="one-raises").to(HALF.distribute("jax", workers=2))
    t0 = time.monotonic()
    with pytest.raises(kt.BroadcastError) as info:
        remote(1, 60.0)
    assert time.monotonic() - t0 < 8
    errors = info.value.errors
    assert isinstance(errors[1], ValueError) and "rank 1 gave up" in str(errors[1])
    assert isinstance(errors[0], kt.PodTerminatedError)  # its worker was replaced
    assert len(remote(9, 0.0)) == 2  # and the pool serves again (no rank 9 raises)
    remote.teardown()


def test_workers_and_restart_options(hotpod_home):
    compute = HALF.distribute("spmd", workers=2)
    remote = kt.fn(dc.pid_after, name="subset").to(compute)
    pids = remote(0)
    assert remote.with_options(workers=[1])(0) == [pids[1]]  # a list of ranks: a list back
    assert remote.with_options(workers=[1, 0])(0) == [pids[1], pids[0]]
    assert remote.with_options(workers="ready")(0) == pids
    with pytest.raises(kt.SpecError, match="no pod has rank 5"):
        remote.with_options(workers=[5])(0)
    with pytest.raises(kt.SpecError, match="workers="):
        remote.with_options(workers="some")
    fresh = remote.with_options(restart=True, workers=[0])(0)
    assert fresh != [pids[0]]  # rank 0 got a fresh worker, rank 1 kept its own
    assert remote(0) == [fresh[0], pids[1]]
    # a pod that is down is left out by workers="ready"
    pod1 = next(p for p in get_backend().get("subset").pods if p.rank == 1)
    os.killpg(pod1.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while get_backend().get("subset").pods[1].status == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert remote.with_options(workers="ready")(0) == [fresh[0]]
    assert compute.pod_names() in (["subset-0"], ["subset-0", "subset-1"])  # (it restarts)
    remote.teardown()


def test_pod_names_needs_a_service():
    with pytest.raises(kt.SpecError, match="has not been deployed"):
        kt.Compute(cpus="0.5").pod_names()


def test_to_returns_after_init_on_every_pod_and_a_failing_init_fails_the_deploy(hotpod_home):
    before = time.time()
    remote = kt.cls(dc.Member, name="member").to(HALF.replace(replicas=2), init_args={"delay": 1})
    after = time.time()
    ready = remote.ready_time()
    assert len(ready) == 2 and all(before < t <= after for t in ready)
    with pytest.raises(kt.DeployError) as info:
        kt.cls(dc.Member, name="member-bad").to(HALF, init_args={"fail": True})
    text = str(info.value)
    assert "init refused by Member" in text and "Traceback" in text and "dist_code.py" in text
    remote.teardown()


def test_calls_on_one_instance_run_concurrently_and_a_failing_one_harms_none(hotpod_home):
    remote = kt.cls(dc.Member, name="member-one").to(HALF)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        long = pool.submit(remote.wait, 2.0)
        time.sleep(0.3)
        t0 = time.monotonic()
        assert remote.ready_time() > 0  # answered while the long call runs
        with pytest.raises(ValueError, match=r"Member\.fail was called"):
            remote.fail()
        assert time.monotonic() - t0 < 1.5
        assert not long.done()
        assert long.result(timeout=10) == "waited"  # the long call was untouched
    assert remote.ready_time() > 0  # and so is the service

    async def both() -> float:
        t0 = time.monotonic()
        slow = asyncio.ensure_future(remote.wait.aio(1.5))
        await asyncio.sleep(0.2)
        await remote.ready_time.aio()
        quick = time.monotonic() - t0
        assert await slow == "waited"
        return quick

    assert asyncio.run(both()) < 1.2  # another task's call did not wait for the long one
    remote.teardown()
