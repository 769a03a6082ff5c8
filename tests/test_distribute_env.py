"""The distribution environment (``hotpod.distribute.worker_env``), the local controller's
rendezvous ports and the launch spec's ``distribute`` entry, without starting pods."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import hotpod as kt
from hotpod.backends.base import PodInfo, ServiceInfo
from hotpod.backends.local.controller import Controller
from hotpod.config import Settings
from hotpod.deploy import distribution_spec, pod_template
from hotpod.distribute import worker_env
from hotpod.runtime.launches import _check_spec

PEERS = ["127.0.0.1:4001", "127.0.0.1:4002"]


def test_every_kind_gets_the_torchrun_names_and_the_peers():
    for kind in ("spmd", "pytorch", "jax"):
        env = worker_env(
            kind, rank=1, world_size=2, peers=PEERS, port=None if kind == "spmd" else 5
        )
        assert env["WORLD_SIZE"] == "2" and env["RANK"] == env["NODE_RANK"] == "1"
        assert (env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"], env["HOTPOD_NUM_PROC"]) == (
            "0",
            "1",
            "1",
        )
        assert env["HOTPOD_DISTRIBUTE"] == kind
        assert env["HOTPOD_PEERS"] == "127.0.0.1:4001,127.0.0.1:4002"


def test_spmd_has_no_rendezvous():
    env = worker_env("spmd", rank=0, world_size=2, peers=PEERS, port=None)
    assert not {"HOTPOD_DIST_PORT", "MASTER_ADDR", "JAX_COORDINATOR_ADDRESS"} & set(env)


def test_pytorch_master_is_rank_0s_host():
    env = worker_env("pytorch", rank=1, world_size=2, peers=["10.0.0.7:80", "10.0.0.8:80"], port=9)
    assert (env["MASTER_ADDR"], env["MASTER_PORT"], env["HOTPOD_DIST_PORT"]) == (
        "10.0.0.7",
        "9",
        "9",
    )
    assert "JAX_COORDINATOR_ADDRESS" not in env


def test_jax_coordinator_process_id_and_count():
    env = worker_env("jax", rank=1, world_size=2, peers=PEERS, port=7)
    assert env["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:7"
    assert (env["JAX_PROCESS_ID"], env["JAX_NUM_PROCESSES"]) == ("1", "2")
    assert "MASTER_ADDR" not in env


def _controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Controller, list[Any]]:
    ctl = Controller(Settings(home=tmp_path, backend="local", in_pod=False))
    started: list[Any] = []
    monkeypatch.setattr(ctl, "start_pod", lambda pod: started.append((pod, ctl.dist_env(pod))))
    return ctl, started


def _apply(ctl: Controller, name: str, compute: kt.Compute) -> dict[str, Any]:
    body = {"replicas": compute.replicas, "template": pod_template(compute)}
    return asyncio.run(ctl.apply(name, body))


def test_controller_gives_each_pool_its_own_port_and_keeps_it(tmp_path, monkeypatch):
    ctl, started = _controller(tmp_path, monkeypatch)
    a = _apply(ctl, "a", kt.Compute().distribute("pytorch", workers=2))
    b = _apply(ctl, "b", kt.Compute().distribute("jax", workers=2))
    s = _apply(ctl, "s", kt.Compute().distribute("spmd", workers=2))
    port_a, port_b = a["meta"]["dist_port"], b["meta"]["dist_port"]
    assert port_a != port_b and 29500 not in (port_a, port_b)
    assert "dist_port" not in s["meta"]
    pod_ports = {p.port for ps in ctl.pods.values() for p in ps}
    assert not {port_a, port_b} & pod_ports
    # every new pod starts knowing all its peers, in rank order
    envs = [env for pod, env in started if pod.service == "a"]
    peers = ",".join(f"127.0.0.1:{p.port}" for p in ctl.pods["a"])
    assert [e["RANK"] for e in envs] == ["0", "1"]
    assert all(e["HOTPOD_PEERS"] == peers and e["MASTER_PORT"] == str(port_a) for e in envs)
    # kept through a template change and a scale, and by a controller that restarts
    again = _apply(ctl, "a", kt.Compute(env_vars={"X": "1"}).distribute("pytorch", workers=3))
    assert again["meta"]["dist_port"] == port_a
    reborn = Controller(Settings(home=tmp_path, backend="local", in_pod=False))
    reborn.adopt()
    assert reborn.services["a"]["meta"]["dist_port"] == port_a
    # an explicit port is used as is
    explicit = _apply(ctl, "a", kt.Compute().distribute("pytorch", workers=2, port=4567))
    assert "dist_port" not in explicit["meta"]
    assert ctl.dist_env(ctl.pods["a"][0])["MASTER_PORT"] == "4567"


def test_launch_spec_carries_the_pool_as_the_backend_knows_it():
    pods = tuple(
        PodInfo(name=f"t-{r}", rank=r, url=f"http://127.0.0.1:{4001 + r}", status="running")
        for r in (1, 0)
    )
    svc = ServiceInfo("t", "tok", 2, pods, 0.0, meta={"dist_port": 5555})
    dist = distribution_spec(kt.Compute().distribute("jax", workers=2), svc)
    assert dist == {"kind": "jax", "port": 5555, "peers": PEERS}
    assert distribution_spec(kt.Compute().distribute("jax", port=99), svc)["port"] == 99
    assert distribution_spec(kt.Compute().distribute("spmd"), svc)["port"] is None
    spec = {"code": {"module": "m", "qualname": "f"}, "distribute": dist}
    _check_spec(spec)
    with pytest.raises(ValueError, match="'distribute' must be"):
        _check_spec({**spec, "distribute": {"kind": "jax", "port": "x", "peers": []}})
