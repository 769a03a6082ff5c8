"""``Autoscale``: how an autoscaled pool grows and shrinks with its traffic, as a value.

``compute.autoscale(min_scale=0, max_scale=5, target=10, metric="rps", ...)`` returns a new
Compute carrying one. An autoscaled pool routes each call to one pod (load balancing) instead of
broadcasting, and on Kubernetes compiles to a Knative Service: every field below reaches its
``autoscaling.knative.dev/*`` annotation on the revision template, or its spec field.

==========================  ===========================================================
field                       Knative
==========================  ===========================================================
min_scale                   ``autoscaling.knative.dev/min-scale``
max_scale                   ``autoscaling.knative.dev/max-scale``
initial_scale               ``autoscaling.knative.dev/initial-scale``
target                      ``autoscaling.knative.dev/target``
target_utilization          ``autoscaling.knative.dev/target-utilization-percentage``
metric                      ``autoscaling.knative.dev/metric``
window                      ``autoscaling.knative.dev/window``
scale_down_delay            ``autoscaling.knative.dev/scale-down-delay``
scale_to_zero_retention     ``autoscaling.knative.dev/scale-to-zero-pod-retention-period``
autoscaler_class            ``autoscaling.knative.dev/class``
progress_deadline           ``serving.knative.dev/progress-deadline``
concurrency                 ``spec.template.spec.containerConcurrency``
==========================  ===========================================================

Durations are Go-style strings (``"60s"``, ``"1m30s"``) or a whole number of seconds.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, fields
from typing import Any

from hotpod._quantity import short_repr, spec_error
from hotpod.errors import SpecError

METRICS = ("concurrency", "rps", "cpu", "memory")
AUTOSCALER_CLASSES = {
    "kpa": "kpa.autoscaling.knative.dev",
    "hpa": "hpa.autoscaling.knative.dev",
}
#: The names the upstream API (and Kubernetes users) use for some fields.
ALIASES = {
    "min_replicas": "min_scale",
    "max_replicas": "max_scale",
    "initial_replicas": "initial_scale",
    "scale_to_zero_pod_retention_period": "scale_to_zero_retention",
    "container_concurrency": "concurrency",
}

_DURATION_RE = re.compile(r"^(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?$")
_DURATION_EXPECTED = "a duration like '60s', '1m30s' or '2m', or a whole number of seconds"


def duration_seconds(value: str) -> int:
    """Seconds in a duration string this module produced: ``"1m30s"`` -> 90."""
    match = _DURATION_RE.fullmatch(value)
    assert match is not None
    return sum(int(match[unit] or 0) * size for unit, size in (("h", 3600), ("m", 60), ("s", 1)))


def _duration(value: object, arg: str, low: int, high: int | None) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise spec_error(arg, value, _DURATION_EXPECTED)
        text = f"{value}s"
    elif isinstance(value, str) and value.strip() and _DURATION_RE.fullmatch(value.strip()):
        text = value.strip()
    else:
        raise spec_error(arg, value, _DURATION_EXPECTED)
    seconds = duration_seconds(text)
    if seconds < low or (high is not None and seconds > high):
        bounds = f"between {low}s and {high}s" if high is not None else f"at least {low}s"
        raise spec_error(arg, value, f"{_DURATION_EXPECTED}, {bounds}")
    return text


def _whole(value: object, arg: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise spec_error(arg, value, f"a whole number >= {low}")
    return value


@dataclass(frozen=True)
class Autoscale:
    """Autoscaling settings; ``None`` leaves a setting to the cluster's default."""

    min_scale: int | None = None
    max_scale: int | None = None
    initial_scale: int | None = None
    target: float | None = None
    target_utilization: int | None = None
    metric: str | None = None
    window: str | None = None
    concurrency: int | None = None
    scale_down_delay: str | None = None
    scale_to_zero_retention: str | None = None
    autoscaler_class: str | None = None
    progress_deadline: str | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        for name in ("min_scale", "initial_scale", "concurrency"):
            if getattr(self, name) is not None:
                _whole(getattr(self, name), name, 0)
        if self.max_scale is not None:
            _whole(self.max_scale, "max_scale", 1)
        top = self.max_scale
        for name in ("min_scale", "initial_scale"):
            value = getattr(self, name)
            if value is not None and top is not None and value > top:
                raise SpecError(
                    f"autoscale: {name}={value} is above max_scale={top}; "
                    f"raise max_scale or lower {name}"
                )
        if self.target is not None:
            target = self.target
            if (
                isinstance(target, bool)
                or not isinstance(target, (int, float))
                or not math.isfinite(target)
                or target < 0.01
            ):
                raise spec_error("target", target, "a number >= 0.01, like 10 or 0.5")
        if self.target_utilization is not None:
            value = self.target_utilization
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
                raise spec_error("target_utilization", value, "a whole percentage from 1 to 100")
        if self.metric is not None and self.metric not in METRICS:
            raise spec_error("metric", self.metric, f"one of {', '.join(METRICS)}")
        if self.window is not None:
            put("window", _duration(self.window, "window", 6, 3600))
        if self.scale_down_delay is not None:
            put("scale_down_delay", _duration(self.scale_down_delay, "scale_down_delay", 0, 3600))
        if self.scale_to_zero_retention is not None:
            put(
                "scale_to_zero_retention",
                _duration(self.scale_to_zero_retention, "scale_to_zero_retention", 0, None),
            )
        if self.progress_deadline is not None:
            put(
                "progress_deadline", _duration(self.progress_deadline, "progress_deadline", 1, None)
            )
        if self.autoscaler_class is not None:
            full = AUTOSCALER_CLASSES.get(self.autoscaler_class, self.autoscaler_class)
            if full not in AUTOSCALER_CLASSES.values():
                raise spec_error(
                    "autoscaler_class",
                    self.autoscaler_class,
                    "'kpa' (Knative's, the default) or 'hpa' (the Horizontal Pod Autoscaler), "
                    "or their full names like 'kpa.autoscaling.knative.dev'",
                )
            put("autoscaler_class", full)
        self._check_class()

    def _check_class(self) -> None:
        hpa = self.autoscaler_class == AUTOSCALER_CLASSES["hpa"]
        if self.metric in ("cpu", "memory") and not hpa:
            raise SpecError(
                f"autoscale: metric={self.metric!r} needs the HPA autoscaler; "
                "pass autoscaler_class='hpa' as well"
            )
        if hpa and self.metric in ("concurrency", "rps"):
            raise SpecError(
                f"autoscale: metric={self.metric!r} is measured by Knative's own autoscaler; "
                "use autoscaler_class='kpa' (or leave it out), or metric='cpu' or 'memory' with HPA"
            )
        if hpa and self.window is not None:
            raise SpecError(
                "autoscale: window= only applies to Knative's own autoscaler (kpa); "
                "leave it out with autoscaler_class='hpa'"
            )

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> Autoscale:
        """An Autoscale from keyword arguments, accepting the upstream aliases (``ALIASES``).

        An unknown argument raises :class:`SpecError` naming the closest known one.
        """
        names = [f.name for f in fields(cls)]
        values: dict[str, Any] = {}
        for key, value in kwargs.items():
            name = ALIASES.get(key, key)
            if name not in names:
                close = difflib.get_close_matches(key, [*names, *ALIASES], n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise SpecError(
                    f"autoscale() got an unknown argument {key}={short_repr(value)}{hint} "
                    f"(known: {', '.join(names)})"
                )
            if name in values:
                raise SpecError(
                    f"autoscale() got {name} twice (as {key!r} and under another name); "
                    "pass it once"
                )
            values[name] = value
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __repr__(self) -> str:
        parts = [f"{k}={v!r}" for k, v in self.to_dict().items() if v is not None]
        return f"Autoscale({', '.join(parts)})"


__all__ = ["ALIASES", "AUTOSCALER_CLASSES", "METRICS", "Autoscale", "duration_seconds"]
