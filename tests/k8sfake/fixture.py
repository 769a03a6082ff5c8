"""The ``fake_cluster`` pytest fixture (registered in ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import FakeCluster


@pytest.fixture
def fake_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCluster]:
    """A fake cluster of its own for the test, with ``KUBECONFIG`` pointing at it. At the end it
    is stopped, and the test fails if a container process outlived it or the fake itself
    failed (a bug in the fake, not in the code under test)."""
    cluster = FakeCluster().start()
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    try:
        yield cluster
    finally:
        cluster.stop()
        left = cluster.leftovers()
        failures = cluster.failures
        assert not left, f"container processes outlived the fake cluster: {left}"
        assert not failures, "the fake cluster failed:\n" + "\n".join(failures)
