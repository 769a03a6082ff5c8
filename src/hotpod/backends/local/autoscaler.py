"""Knative's KPA rule, as the local backend's router applies it: how many pods a service wants.

No I/O and no clock: every function and method takes ``now`` (seconds, any monotonic origin),
so the rule is tested with a fake clock. The router feeds a :class:`Decider` one sample per
tick (the service's concurrency averaged over the tick, or its requests per second) and asks
it for the desired pod count.

The rule (Knative Serving's ``autoscaler.go``):

- ``stable = average(samples over the stable window)``, ``panic = average(samples over the
  panic window)`` (10% of the stable window);
- ``desired_stable = ceil(stable / target)``, ``desired_panic = ceil(panic / target)``, where
  ``target`` is the per-pod target times the target utilization (Knative: 100 and 70%);
  each is kept between ``floor(ready / 2)`` (the most one step may scale down) and
  ``ceil(1000 * ready)`` (the most one step may scale up);
- panic starts when ``desired_panic / max(ready, 1) >= 2`` and ends a stable window after the
  last tick that was over that threshold; while panicking the count never goes down;
- ``scale_down_delay``: the count is the highest one desired over that trailing delay;
- the result is clamped to ``[min_scale, max_scale]``; a drop to zero happens only once the
  count has wanted zero for ``scale_to_zero_retention`` (Knative's pod retention period).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

from hotpod.autoscale import duration_seconds

#: Knative's defaults (config-autoscaler), used where the Autoscale leaves a field unset
DEFAULT_TARGET = 100.0
DEFAULT_RPS_TARGET = 200.0
DEFAULT_UTILIZATION = 70
DEFAULT_WINDOW = 60.0
PANIC_WINDOW_FRACTION = 0.10
PANIC_THRESHOLD = 2.0
MAX_SCALE_UP_RATE = 1000.0
MAX_SCALE_DOWN_RATE = 2.0
DEFAULT_INITIAL = 1
#: Knative leaves max_scale unbounded; one machine is not a cluster, so locally it stops here
LOCAL_MAX_SCALE = 10


@dataclass(frozen=True)
class KpaSettings:
    """The settings the rule needs, in seconds and pods (see :func:`settings_from`)."""

    min_scale: int = 0
    max_scale: int = LOCAL_MAX_SCALE
    initial_scale: int = DEFAULT_INITIAL
    target: float = DEFAULT_TARGET * DEFAULT_UTILIZATION / 100  # per pod, utilization applied
    metric: str = "concurrency"
    window: float = DEFAULT_WINDOW
    scale_down_delay: float = 0.0
    retention: float = 0.0
    concurrency: int = 0  # containerConcurrency: the hard per-pod limit, 0 for none
    hold_timeout: float = 120.0  # how long the router holds a request that no pod can take

    @property
    def panic_window(self) -> float:
        return self.window * PANIC_WINDOW_FRACTION

    @property
    def start_count(self) -> int:
        """Pods at creation: the larger of initial_scale and min_scale (Knative's rule)."""
        return min(max(self.initial_scale, self.min_scale), self.max_scale)


def settings_from(autoscale: dict[str, Any]) -> KpaSettings:
    """KpaSettings from ``Autoscale.to_dict()``, Knative's defaults filling what is unset.

    Without ``target``, the per-pod target is ``concurrency`` when that is set (Knative targets
    the hard limit then), else 100 (concurrency) or 200 (rps).
    """

    def seconds(key: str, default: float) -> float:
        value = autoscale.get(key)
        return float(duration_seconds(value)) if value else default

    metric = autoscale.get("metric") or "concurrency"
    limit = int(autoscale.get("concurrency") or 0)
    target = autoscale.get("target")
    if target is None:
        target = (
            limit
            if limit and metric == "concurrency"
            else (DEFAULT_RPS_TARGET if metric == "rps" else DEFAULT_TARGET)
        )
    utilization = autoscale.get("target_utilization") or DEFAULT_UTILIZATION
    top = autoscale.get("max_scale") or LOCAL_MAX_SCALE
    low = autoscale.get("min_scale") or 0
    initial = autoscale.get("initial_scale")
    deadline = autoscale.get("progress_deadline")
    return KpaSettings(
        min_scale=min(low, top),
        max_scale=top,
        initial_scale=DEFAULT_INITIAL if initial is None else int(initial),
        target=max(float(target) * utilization / 100, 1e-6),
        metric=metric,
        window=seconds("window", DEFAULT_WINDOW),
        scale_down_delay=seconds("scale_down_delay", 0.0),
        retention=seconds("scale_to_zero_retention", 0.0),
        concurrency=limit,
        hold_timeout=float(duration_seconds(deadline)) if deadline else 120.0,
    )


@dataclass(frozen=True)
class KpaMemory:
    """What the rule remembers between ticks (a value: each tick returns a new one)."""

    panic_since: float | None = None  # the last tick over the panic threshold
    max_panic: int = 0  # the highest count desired while panicking
    zero_since: float | None = None  # since when the count has wanted zero


@dataclass(frozen=True)
class Decision:
    desired: int
    stable: float  # the observed metric over the stable window
    panic: float  # ... over the panic window
    panicking: bool
    memory: KpaMemory


def kpa_decide(
    s: KpaSettings, stable: float, panic: float, ready: int, now: float, memory: KpaMemory
) -> Decision:
    """One tick of Knative's KPA rule, before the scale-down delay (see the module doc)."""
    ready_n = max(ready, 1)
    up_limit = math.ceil(MAX_SCALE_UP_RATE * ready_n)
    down_limit = math.floor(ready / MAX_SCALE_DOWN_RATE)
    want_stable = min(max(math.ceil(stable / s.target), down_limit), up_limit)
    want_panic = min(max(math.ceil(panic / s.target), down_limit), up_limit)
    over = want_panic / ready_n >= PANIC_THRESHOLD
    if over:
        memory = replace(memory, panic_since=now)
    elif memory.panic_since is not None and now >= memory.panic_since + s.window:
        memory = replace(memory, panic_since=None, max_panic=0)
    desired = want_stable
    if memory.panic_since is not None:
        memory = replace(memory, max_panic=max(memory.max_panic, want_panic))
        desired = max(memory.max_panic, want_stable)
    return Decision(desired, stable, panic, memory.panic_since is not None, memory)


class Decider:
    """The rule over time: samples in, desired pods out. Deterministic; ``now`` is given."""

    def __init__(self, settings: KpaSettings, now: float) -> None:
        self.settings = settings
        self.samples: deque[tuple[float, float]] = deque()
        self.delayed: deque[tuple[float, int]] = deque()  # (time, desired) for the delay
        self.memory = KpaMemory()
        self.hold_until = now + settings.window  # no scale-down before a window of data
        self.last: Decision | None = None

    def hold(self, now: float) -> None:
        """Keep the current count for a stable window from now (after a deploy, or when a pod
        became ready): the rule has not seen a window of traffic for it yet."""
        self.hold_until = max(self.hold_until, now + self.settings.window)

    def record(self, now: float, value: float) -> None:
        """One sample: the concurrency averaged over the last tick, or its requests/second."""
        self.samples.append((now, value))
        while self.samples and self.samples[0][0] <= now - self.settings.window:
            self.samples.popleft()

    def average(self, now: float, window: float) -> float:
        values = [v for t, v in self.samples if t > now - window]
        return sum(values) / len(values) if values else 0.0

    def decide(self, now: float, ready: int, current: int) -> int:
        """The desired pod count now; ``current`` is how many pods the service has (ready or
        starting), ``ready`` how many serve."""
        s = self.settings
        d = kpa_decide(
            s,
            self.average(now, s.window),
            self.average(now, s.panic_window),
            ready,
            now,
            self.memory,
        )
        self.memory = d.memory
        self.last = d
        desired = d.desired
        if s.scale_down_delay > 0:  # the highest count of the trailing delay
            while self.delayed and self.delayed[-1][1] <= desired:
                self.delayed.pop()
            self.delayed.append((now, desired))
            while self.delayed[0][0] <= now - s.scale_down_delay:
                self.delayed.popleft()
            desired = self.delayed[0][1]
        if now < self.hold_until:
            desired = max(desired, current)
        desired = min(max(desired, s.min_scale), s.max_scale)
        if desired == 0 and current > 0 and s.retention > 0:  # the pod retention period
            zero_since = self.memory.zero_since if self.memory.zero_since is not None else now
            self.memory = replace(self.memory, zero_since=zero_since)
            if now < zero_since + s.retention:
                desired = 1
        elif desired > 0:
            self.memory = replace(self.memory, zero_since=None)
        return desired


__all__ = ["Decider", "Decision", "KpaMemory", "KpaSettings", "kpa_decide", "settings_from"]
