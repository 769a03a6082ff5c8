"""The pod's Prometheus metrics, served at ``GET /metrics`` in the text exposition format.

Each pod keeps its own :class:`~prometheus_client.CollectorRegistry` (nothing global, so several
pods can live in one process, as they do in tests). The call metrics are plain numbers under
one lock, updated where a call ends (the event loop thread, or a call thread for the fast path
of ``fastcall``), that a collector turns into metric families when scraped: a call pays about a
microsecond. The rest (launches, setup steps, which run in other threads) are prometheus_client's
own thread-safe metrics.

Metrics (every name starts with ``hotpod_``)::

    hotpod_calls_total{method, outcome}          calls that ran user code; outcome: ok | error
    hotpod_call_duration_seconds{method}          histogram, from the request to its result
    hotpod_calls_in_flight                        calls running now
    hotpod_call_errors_total{method, exception}   calls whose code raised, by exception type
    hotpod_requests_rejected_total{status}        requests answered with an error status
                                                  before any user code ran (bad body, 503...)
    hotpod_launches_total{result}                 launch specs applied: reloaded | unchanged |
                                                  restarting | failed
    hotpod_reloads_total                          launches that (re)loaded code
    hotpod_setup_step_duration_seconds{kind, outcome}   histogram of the setup steps that ran
    hotpod_worker_restarts                        workers this pod's supervisor started before
                                                  the one serving (crashes, package changes)
    hotpod_pod_restarts                           restarts of the whole pod by its controller
    hotpod_ready                                  1 while the pod serves a launch
    hotpod_info{service, pod, rank, launch_id}    always 1: who this is

plus ``process_*`` (CPU seconds, resident memory, open files...) of the worker process.
"""

from __future__ import annotations

import bisect
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

CONTENT_TYPE = CONTENT_TYPE_LATEST

#: call latency buckets, seconds: a trivial call takes well under a millisecond
CALL_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    float("inf"),
)
#: setup step buckets, seconds: from an env var (microseconds) to a pip install (minutes)
SETUP_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, float("inf"))


class _Method:
    """One method's call counts and latency histogram, kept as plain numbers."""

    __slots__ = ("buckets", "errors", "ok", "total_seconds")

    def __init__(self) -> None:
        self.ok = 0
        self.errors = 0
        self.total_seconds = 0.0
        self.buckets = [0] * len(CALL_BUCKETS)  # per bucket, not cumulative


def _copy(m: _Method) -> _Method:
    c = _Method()
    c.ok, c.errors, c.total_seconds, c.buckets = m.ok, m.errors, m.total_seconds, list(m.buckets)
    return c


class _CallCollector(Collector):
    """The call metrics, plain numbers under one lock: most calls end on the server's event
    loop thread, fast-path calls on their call thread (``fastcall``); a call costs a few
    additions and an uncontended lock."""

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock
        self.methods: dict[str, _Method] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self.in_flight = 0

    def collect(self) -> Iterator[Metric]:
        with self.lock:  # a consistent copy: call threads may end calls meanwhile
            methods = {n: _copy(m) for n, m in self.methods.items()}
            errors = dict(self.errors)
            in_flight = self.in_flight
        return self._families(methods, errors, in_flight)

    def _families(
        self, methods: dict[str, _Method], counts: dict[tuple[str, str], int], in_flight: int
    ) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            "hotpod_calls",
            "Calls that ran the service's code, by method and outcome (ok, error).",
            labels=["method", "outcome"],
        )
        duration = HistogramMetricFamily(
            "hotpod_call_duration_seconds",
            "Time from a call's request to its result, by method.",
            labels=["method"],
        )
        for name, m in sorted(methods.items()):
            calls.add_metric([name, "ok"], m.ok)
            calls.add_metric([name, "error"], m.errors)
            cumulative, buckets = 0, []
            for bound, count in zip(CALL_BUCKETS, m.buckets, strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            duration.add_metric([name], buckets, m.total_seconds)
        errors = CounterMetricFamily(
            "hotpod_call_errors",
            "Calls whose code raised, by method and exception type.",
            labels=["method", "exception"],
        )
        for (name, exc), count in sorted(counts.items()):
            errors.add_metric([name, exc], count)
        yield calls
        yield duration
        yield errors
        yield GaugeMetricFamily("hotpod_calls_in_flight", "Calls running now.", in_flight)


class PodMetrics:
    """The metrics of one pod, and the hooks the server calls to keep them."""

    def __init__(self, service: str, pod: str, rank: int) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.service, self.pod, self.rank = service, pod, rank
        self._call_lock = threading.Lock()  # call threads end fast-path calls (``fastcall``)
        self._call_stats = _CallCollector(self._call_lock)
        registry.register(self._call_stats)
        self._rejected = Counter(
            "hotpod_requests_rejected",
            "Requests answered with an error status before any user code ran.",
            ["status"],
            registry=registry,
        )
        self._launches = Counter(
            "hotpod_launches",
            "Launch specs applied, by result (reloaded, unchanged, restarting, failed).",
            ["result"],
            registry=registry,
        )
        self._reloads = Counter(
            "hotpod_reloads", "Launches that (re)loaded the service's code.", registry=registry
        )
        self._setup = Histogram(
            "hotpod_setup_step_duration_seconds",
            "Duration of the image setup steps that ran, by step kind and outcome.",
            ["kind", "outcome"],
            buckets=SETUP_BUCKETS,
            registry=registry,
        )
        self.worker_restarts = Gauge(
            "hotpod_worker_restarts",
            "Workers this pod's supervisor started before the one serving now.",
            registry=registry,
        )
        self.pod_restarts = Gauge(
            "hotpod_pod_restarts",
            "Times the controller restarted this pod.",
            registry=registry,
        )
        self.ready = Gauge("hotpod_ready", "1 while the pod serves a launch.", registry=registry)
        self._info = Gauge(
            "hotpod_info",
            "Always 1: the service, pod, rank and launch this pod serves.",
            ["service", "pod", "rank", "launch_id"],
            registry=registry,
        )
        self._info_labels: tuple[str, ...] | None = None
        self.set_launch(None)
        ProcessCollector(registry=registry)

    # -- calls (on the server's event loop thread only) -------------------------------------

    def call_started(self) -> None:
        with self._call_lock:
            self._call_stats.in_flight += 1

    def call_abandoned(self) -> None:
        """A call counted as started that did not start after all."""
        with self._call_lock:
            self._call_stats.in_flight -= 1

    def call_done_threadsafe(self, method: str, started: float, error: str | None) -> None:
        """``call_done`` from a call thread (the fast path ends its calls there)."""
        with self._call_lock:
            self.call_done(method, started, error, locked=True)

    def call_done(
        self, method: str, started: float, error: str | None, locked: bool = False
    ) -> None:
        """A call of ``method`` (``""``: the function) that began at ``started``
        (``time.perf_counter()``) ended; ``error`` is the exception type it raised, if any."""
        if not locked:
            with self._call_lock:
                self.call_done(method, started, error, locked=True)
            return
        seconds = time.perf_counter() - started
        stats = self._call_stats
        stats.in_flight -= 1
        name = method or "__call__"
        m = stats.methods.get(name)
        if m is None:
            m = stats.methods[name] = _Method()
        m.buckets[bisect.bisect_left(CALL_BUCKETS, seconds)] += 1
        m.total_seconds += seconds
        if error is None:
            m.ok += 1
        else:
            m.errors += 1
            stats.errors[(name, error)] = stats.errors.get((name, error), 0) + 1

    def rejected(self, status: int) -> None:
        self._rejected.labels(str(status)).inc()

    # -- launches ---------------------------------------------------------------------------

    def launched(self, result: str) -> None:
        """A launch ended: ``reloaded``, ``unchanged``, ``restarting`` or ``failed``."""
        self._launches.labels(result).inc()
        if result == "reloaded":
            self._reloads.inc()

    def set_launch(self, launch_id: str | None) -> None:
        labels = (self.service, self.pod, str(self.rank), launch_id or "")
        if labels != self._info_labels:
            if self._info_labels is not None:
                self._info.remove(*self._info_labels)
            self._info.labels(*labels).set(1)
            self._info_labels = labels
        self.ready.set(1 if launch_id else 0)

    def worker_started(self, root: Path, pod_restarts: int) -> None:
        """A worker of the pod rooted at ``root`` starts; the controller restarted the pod
        ``pod_restarts`` times. Counts the workers each supervisor started in the pod root."""
        self.pod_restarts.set(pod_restarts)
        path = root / ".hotpod" / "workers.json"
        supervisor, starts = os.getppid(), 1
        try:
            seen = json.loads(path.read_text())
            if seen.get("supervisor") == supervisor:
                starts = int(seen.get("starts", 0)) + 1
        except (OSError, ValueError, AttributeError, TypeError):
            pass
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"supervisor": supervisor, "starts": starts}))
        except OSError:
            pass
        self.worker_restarts.set(starts - 1)

    def setup_step(self, kind: str, seconds: float, ok: bool) -> None:
        self._setup.labels(kind, "ok" if ok else "failed").observe(seconds)

    # -- exposition -------------------------------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)
