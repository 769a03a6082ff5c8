"""Distributed pools on the local backend: the distribution environment on every pod, a real
torch gloo all_reduce and a real JAX computation across 2 pods.

torch and jax come from ``.ci/run`` (``pip install torch==2.13.0``, ``pip install jax jaxlib``).
Without them the framework tests fail when ``CI`` is set, and are skipped otherwise.
"""

from __future__ import annotations

import time

import psutil
import pytest

import dist_code as dc
import hotpod as kt
from frameworks import need

pytestmark = pytest.mark.slow

HALF = kt.Compute(cpus="0.5")


def ports(peers: str | None) -> list[int]:
    assert peers
    return [int(p.rpartition(":")[2]) for p in peers.split(",")]


def test_spmd_pool_env_is_right_and_follows_a_scale(hotpod_home):
    compute = HALF.distribute("spmd", workers=2)
    envs = kt.fn(dc.dist_env, name="dist-spmd").to(compute)()
    assert [e["RANK"] for e in envs] == ["0", "1"]  # one result per rank, in rank order
    for rank, env in enumerate(envs):
        assert env["WORLD_SIZE"] == env["HOTPOD_WORLD_SIZE"] == "2"
        assert env["NODE_RANK"] == env["HOTPOD_RANK"] == str(rank)
        assert (env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"], env["HOTPOD_NUM_PROC"]) == (
            "0",
            "1",
            "1",
        )
        assert env["HOTPOD_DISTRIBUTE"] == "spmd"
        assert env["HOTPOD_DIST_PORT"] is None and env["MASTER_ADDR"] is None
        assert ports(env["HOTPOD_PEERS"]) == [int(e["HOTPOD_PORT"]) for e in envs]

    scaled = kt.fn(dc.dist_env, name="dist-spmd").to(compute.replace(replicas=3))()
    peers = [int(e["HOTPOD_PORT"]) for e in scaled]
    assert peers[:2] == [int(e["HOTPOD_PORT"]) for e in envs]  # the pods that stayed
    for rank, env in enumerate(scaled):  # the pods that stayed see the new pool too
        assert (env["RANK"], env["WORLD_SIZE"]) == (str(rank), "3")
        assert ports(env["HOTPOD_PEERS"]) == peers

    back = kt.fn(dc.dist_env, name="dist-spmd").to(compute)()
    assert [(e["RANK"], e["WORLD_SIZE"]) for e in back] == [("0", "2"), ("1", "2")]
    assert ports(back[0]["HOTPOD_PEERS"]) == peers[:2]


def test_pytorch_and_jax_pools_get_ports_of_their_own(hotpod_home):
    torch_envs = kt.fn(dc.dist_env, name="dist-env-pt").to(HALF.distribute("pytorch", workers=2))()
    jax_envs = kt.fn(dc.dist_env, name="dist-env-jax").to(HALF.distribute("jax", workers=2))()
    pt_port = torch_envs[0]["MASTER_PORT"]
    assert pt_port and pt_port != "29500"  # not the fixed default: pools share this host
    for rank, env in enumerate(torch_envs):
        assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("127.0.0.1", pt_port)
        assert env["HOTPOD_DIST_PORT"] == pt_port and env["HOTPOD_DISTRIBUTE"] == "pytorch"
        assert (env["RANK"], env["WORLD_SIZE"]) == (str(rank), "2")
        assert env["JAX_COORDINATOR_ADDRESS"] is None
    coordinator = jax_envs[0]["JAX_COORDINATOR_ADDRESS"]
    assert coordinator and coordinator.startswith("127.0.0.1:")
    jax_port = coordinator.rpartition(":")[2]
    assert jax_port not in (pt_port, "1234")
    for rank, env in enumerate(jax_envs):
        assert env["JAX_COORDINATOR_ADDRESS"] == coordinator
        assert (env["JAX_PROCESS_ID"], env["JAX_NUM_PROCESSES"]) == (str(rank), "2")
        assert env["MASTER_ADDR"] is None
    # the port is the service's: a redeploy with another template keeps it
    again = kt.fn(dc.dist_env, name="dist-env-pt").to(
        HALF.replace(env_vars={"X": "1"}).distribute("pytorch", workers=2)
    )()
    assert [e["MASTER_PORT"] for e in again] == [pt_port, pt_port]
    explicit = kt.fn(dc.dist_env, name="dist-env-pt").to(
        HALF.distribute("pytorch", workers=2, port=int(pt_port) + 1)
    )()
    assert explicit[1]["MASTER_PORT"] == str(int(pt_port) + 1)


def test_two_pods_of_two_processes_each_get_torchrun_ranks(hotpod_home):
    compute = HALF.distribute("spmd", workers=2, num_proc=2)
    envs = kt.fn(dc.dist_env, name="dist-np").to(compute)()
    assert envs.ranks == [0, 1, 2, 3]  # one result per process, in rank order
    assert envs.pods == ["dist-np-0/0", "dist-np-0/1", "dist-np-1/0", "dist-np-1/1"]
    assert [e["RANK"] for e in envs] == ["0", "1", "2", "3"]
    assert [(e["NODE_RANK"], e["LOCAL_RANK"]) for e in envs] == [
        ("0", "0"),
        ("0", "1"),
        ("1", "0"),
        ("1", "1"),
    ]
    for env in envs:
        assert (env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"], env["HOTPOD_NUM_PROC"]) == (
            "4",
            "2",
            "2",
        )
        assert env["HOTPOD_WORLD_SIZE"] == "2" and env["HOTPOD_RANK"] == env["NODE_RANK"]
    assert envs[0]["HOTPOD_PORT"] == envs[1]["HOTPOD_PORT"] != envs[2]["HOTPOD_PORT"]
    assert envs.by_rank()[3]["LOCAL_RANK"] == "1"
    # one pod of three processes: still one result per process
    one = kt.fn(dc.dist_env, name="dist-np1").to(HALF.distribute("jax", workers=1, num_proc=3))()
    assert [(e["JAX_PROCESS_ID"], e["JAX_NUM_PROCESSES"]) for e in one] == [
        ("0", "3"),
        ("1", "3"),
        ("2", "3"),
    ]


def test_ray_with_several_processes_per_pod_is_refused(hotpod_home):
    with pytest.raises(kt.DeployError, match=r"num_proc=2\): a Ray pool runs one Ray node"):
        kt.fn(dc.dist_env, name="dist-np").to(HALF.distribute("ray", workers=2, num_proc=2))


def test_a_broadcast_result_is_a_list_that_knows_each_rank(hotpod_home):
    remote = kt.fn(dc.rank_echo, name="dist-results").to(HALF.replace(replicas=2))
    out = remote("x")
    assert out == [(0, "x"), (1, "x")] and isinstance(out, list)  # compares as a plain list
    assert out.ranks == [0, 1] and out.pods == ["dist-results-0", "dist-results-1"]
    assert out.by_rank() == {0: (0, "x"), 1: (1, "x")}
    assert out.items() == [(0, (0, "x")), (1, (1, "x"))]
    picked = remote.with_options(workers=[1])("y")
    assert picked == [(1, "y")] and picked.ranks == [1]
    import pickle

    assert pickle.loads(pickle.dumps(out)).ranks == [0, 1]


def ray_processes(home) -> list[psutil.Process]:
    """Ray's daemons (GCS, raylets) started for this HOTPOD_HOME."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if ("gcs_server" in cmd or "raylet" in cmd) and proc.environ().get(
                "HOTPOD_HOME"
            ) == str(home):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_ray_task_runs_on_both_nodes_and_ray_stops_with_the_pool(hotpod_home):
    need("ray", "pip install ray==2.60.0")
    t0 = time.monotonic()
    remote = kt.fn(dc.ray_nodes, name="dist-ray").to(HALF.distribute("ray", workers=2))
    deployed = time.monotonic() - t0
    out = remote()  # once, on the head: one result, not a list
    called = time.monotonic() - t0 - deployed
    port = int(out["address"].rpartition(":")[2])
    assert out["rank"] == "0" and out["address"].startswith("127.0.0.1:")
    assert port not in range(10002, 20000)  # outside Ray's worker ports
    assert out["alive_nodes"] == 2
    assert len(set(out["task_nodes"])) == 2  # the two tasks ran on the two Ray nodes
    daemons = ray_processes(hotpod_home)
    assert sum("gcs_server" in " ".join(p.cmdline()) for p in daemons) == 1  # one head
    assert sum("raylet" in " ".join(p.cmdline()) for p in daemons) == 2
    print(f"ray pool: deploy {deployed:.1f} s, call {called:.1f} s")
    assert remote.teardown()
    deadline = time.monotonic() + 10
    while ray_processes(hotpod_home) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray_processes(hotpod_home) == []  # no raylet or GCS left behind


def test_torch_gloo_all_reduce_across_two_pods(hotpod_home):
    need("torch", "pip install torch==2.13.0")
    remote = kt.fn(dc.torch_all_reduce).to(HALF.distribute("pytorch", workers=2))
    expected = [{"rank": r, "world": 2, "sum": 3.0} for r in range(2)]
    assert remote() == expected  # each rank contributed rank + 1
    assert remote() == expected  # the process group stays formed between calls


def test_torch_gloo_all_reduce_across_two_pods_of_two_processes(hotpod_home):
    need("torch", "pip install torch==2.13.0")
    remote = kt.fn(dc.torch_all_reduce, name="dist-np-pt").to(
        HALF.distribute("pytorch", workers=2, num_proc=2)
    )
    expected = [{"rank": r, "world": 4, "sum": 10.0} for r in range(4)]  # 1 + 2 + 3 + 4
    assert remote() == expected
    assert remote() == expected  # the group stays formed in every process


def test_jax_computation_sharded_across_two_processes(hotpod_home):
    need("jax", "pip install jax jaxlib")
    remote = kt.fn(dc.jax_global_sum).to(HALF.distribute("jax", workers=2))
    expected = [{"rank": r, "processes": 2, "devices": 2, "sum": 3.0} for r in range(2)]
    assert remote() == expected
    assert remote() == expected


def test_a_new_kind_leaves_no_variable_of_the_old_one(hotpod_home):
    envs = kt.fn(dc.dist_env, name="dist-switch").to(HALF.distribute("pytorch", workers=2))()
    assert envs[0]["MASTER_ADDR"] == "127.0.0.1"
    envs = kt.fn(dc.dist_env, name="dist-switch").to(HALF.distribute("spmd", workers=2))()
    for env in envs:
        assert env["HOTPOD_DISTRIBUTE"] == "spmd"
        assert env["MASTER_ADDR"] is None and env["MASTER_PORT"] is None
        assert env["HOTPOD_DIST_PORT"] is None
