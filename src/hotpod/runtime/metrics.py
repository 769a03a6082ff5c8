"""The pod's Prometheus metrics, served at ``GET /metrics`` in the text exposition format.

Each pod keeps its own :class:`~prometheus_client.CollectorRegistry` (nothing global, so several
pods can live in one process, as they do in tests). The call path touches only pre-bound metric
children: a dictionary lookup, a gauge up and down, a counter and a histogram, a few microseconds
in all.

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

import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

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


@dataclass
class _MethodMetrics:
    ok: Any
    error: Any
    duration: Any


class PodMetrics:
    """The metrics of one pod, and the hooks the server calls to keep them."""

    def __init__(self, service: str, pod: str, rank: int) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.service, self.pod, self.rank = service, pod, rank
        self._calls = Counter(
            "hotpod_calls",
            "Calls that ran the service's code, by method and outcome (ok, error).",
            ["method", "outcome"],
            registry=registry,
        )
        self._duration = Histogram(
            "hotpod_call_duration_seconds",
            "Time from a call's request to its result, by method.",
            ["method"],
            buckets=CALL_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge("hotpod_calls_in_flight", "Calls running now.", registry=registry)
        self._errors = Counter(
            "hotpod_call_errors",
            "Calls whose code raised, by method and exception type.",
            ["method", "exception"],
            registry=registry,
        )
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
        self._methods: dict[str, _MethodMetrics] = {}

    # -- calls ------------------------------------------------------------------------------

    def _method(self, method: str) -> _MethodMetrics:
        m = self._methods.get(method)
        if m is None:
            name = method or "__call__"
            m = self._methods[method] = _MethodMetrics(
                self._calls.labels(name, "ok"),
                self._calls.labels(name, "error"),
                self._duration.labels(name),
            )
        return m

    def call_done(self, method: str, started: float, error: str | None) -> None:
        """A call of ``method`` (``""``: the function) that began at ``started``
        (``time.perf_counter()``) ended; ``error`` is the exception type it raised, if any."""
        m = self._method(method)
        m.duration.observe(time.perf_counter() - started)
        if error is None:
            m.ok.inc()
        else:
            m.error.inc()
            self._errors.labels(method or "__call__", error).inc()

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

    def setup_step(self, kind: str, seconds: float, ok: bool) -> None:
        self._setup.labels(kind, "ok" if ok else "failed").observe(seconds)

    # -- exposition -------------------------------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)
