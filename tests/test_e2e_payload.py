"""Large payloads through real pods: arguments and results of 64 MiB, pickled both ways."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import hotpod as kt
import remote_code as rc

pytestmark = pytest.mark.slow

MIB = 1 << 20


def test_a_64_mib_array_and_bytes_round_trip(hotpod_home):
    remote = kt.fn(rc.echo).to(kt.Compute(cpus="0.5")).with_options(serialization="pickle")
    arr = np.random.default_rng(1).standard_normal(8 * MIB)  # 64 MiB of float64
    (back,), kwargs = remote(arr, blob=b"\x00\xff" * (32 * MIB), small=(1, 2))
    assert back.dtype == arr.dtype and back.shape == arr.shape
    assert np.array_equal(back, arr)
    assert kwargs == {"blob": b"\x00\xff" * (32 * MIB), "small": (1, 2)}
    fortran = np.asfortranarray(arr[: 4 * MIB].reshape(2048, 2048))
    (back,), _ = remote(fortran)
    assert np.array_equal(back, fortran)
    assert remote(1) == ((1,), {})  # the connection still serves small calls


def test_a_large_result_broadcast_and_from_async_calls(hotpod_home):
    remote = kt.fn(rc.echo).to(kt.Compute(cpus="0.5", replicas=2))
    blob = bytes(range(256)) * (64 * MIB // 256)
    results = remote(blob)  # auto: pickled; broadcast to both pods
    assert [r[0][0] == blob for r in results] == [True, True]

    async def go() -> list:
        return await asyncio.gather(remote.aio(blob), remote.aio(bytearray(3 * MIB)))

    first, second = asyncio.run(go())
    assert [r[0][0] == blob for r in first] == [True, True]
    assert [r[0][0] == bytearray(3 * MIB) for r in second] == [True, True]
