"""What the Pod objects of a service say: rank, status, restarts, and why one is not ready.

Pure functions over the API's plain dicts (the Pod and its Events), tested without a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hotpod.k8s.compile import ROLE_LABEL
from hotpod.k8s.pod import CONTAINER_NAME

#: the pod-index label the StatefulSet and indexed Job controllers set: a stable rank
POD_INDEX_LABELS = ("apps.kubernetes.io/pod-index", "batch.kubernetes.io/job-completion-index")
_IMAGE_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull")
_CONFIG_REASONS = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")


def _meta(pod: dict[str, Any]) -> dict[str, Any]:
    return pod.get("metadata") or {}


def _status(pod: dict[str, Any]) -> dict[str, Any]:
    return pod.get("status") or {}


def rank_key(pod: dict[str, Any]) -> tuple[int, str, str]:
    """Pods in a stable order: by their index label (StatefulSet, indexed Job), else by age,
    then name, so that pods keep their ranks while others come and go after them."""
    labels = _meta(pod).get("labels") or {}
    if labels.get(ROLE_LABEL) == "head":  # a Ray pool's head is rank 0 (its calls go there)
        return (-1, "", _meta(pod).get("name", ""))
    for label in POD_INDEX_LABELS:
        value = labels.get(label)
        if isinstance(value, str) and value.isdigit():
            return (int(value), "", _meta(pod).get("name", ""))
    return (1 << 30, _meta(pod).get("creationTimestamp") or "", _meta(pod).get("name", ""))


def runtime_container(pod: dict[str, Any]) -> str:
    """The name of the container that runs hotpod's runtime: ``hotpod`` in hotpod's own pods;
    else the first whose environment sets ``HOTPOD_`` variables (pods a selector adopts), else
    the first (a manifest's, which gets the runtime merged into its first container)."""
    containers = [c for c in (pod.get("spec") or {}).get("containers") or [] if isinstance(c, dict)]
    names = [str(c.get("name") or "") for c in containers]
    if CONTAINER_NAME in names or not names:
        return CONTAINER_NAME
    for c in containers:
        if any(str(e.get("name", "")).startswith("HOTPOD_") for e in c.get("env") or []):
            return str(c.get("name") or "")
    return names[0]


def container_status(pod: dict[str, Any]) -> dict[str, Any]:
    """The status of the container that runs hotpod's runtime (:func:`runtime_container`)."""
    statuses = _status(pod).get("containerStatuses") or []
    name = runtime_container(pod)
    for status in statuses:
        if status.get("name") == name:
            return dict(status)
    return dict(statuses[0]) if statuses else {}


def restarts(pod: dict[str, Any]) -> int:
    return int(container_status(pod).get("restartCount") or 0)


def last_exit(pod: dict[str, Any]) -> int | None:
    terminated = (container_status(pod).get("lastState") or {}).get("terminated") or {}
    code = terminated.get("exitCode")
    return int(code) if isinstance(code, int) else None


def is_ready(pod: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in _status(pod).get("conditions") or []
    )


def status(pod: dict[str, Any]) -> str:
    """hotpod's words for a pod: starting | running | restarting | stopped."""
    phase = _status(pod).get("phase") or "Pending"
    if _meta(pod).get("deletionTimestamp") or phase in ("Succeeded", "Failed"):
        return "stopped"
    waiting = (container_status(pod).get("state") or {}).get("waiting") or {}
    if waiting.get("reason") == "CrashLoopBackOff" or (
        phase == "Running" and restarts(pod) and not is_ready(pod)
    ):
        return "restarting"
    if phase == "Running" and is_ready(pod):
        return "running"
    return "starting"


def waiting_reason(pod: dict[str, Any]) -> tuple[str, str]:
    """(reason, message) of the container's waiting state, ("", "") when it is not waiting."""
    waiting = (container_status(pod).get("state") or {}).get("waiting") or {}
    return str(waiting.get("reason") or ""), str(waiting.get("message") or "")


def unschedulable(pod: dict[str, Any]) -> str | None:
    """The scheduler's reason when it cannot place the pod (``0/3 nodes are available: ...``)."""
    for cond in _status(pod).get("conditions") or []:
        if (cond.get("type"), cond.get("status"), cond.get("reason")) == (
            "PodScheduled",
            "False",
            "Unschedulable",
        ):
            return str(cond.get("message") or "no node fits it")
    return None


def image_of(pod: dict[str, Any]) -> str:
    image = container_status(pod).get("image")
    if image:
        return str(image)
    for c in (pod.get("spec") or {}).get("containers") or []:
        if c.get("name") == CONTAINER_NAME:
            return str(c.get("image") or "?")
    return "?"


def events_for(pod: dict[str, Any], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pod's events, oldest first."""
    name, uid = _meta(pod).get("name"), _meta(pod).get("uid")
    mine = [
        e
        for e in events
        if (e.get("involvedObject") or {}).get("kind", "Pod") == "Pod"
        and (e.get("involvedObject") or {}).get("name") == name
        and (not uid or (e.get("involvedObject") or {}).get("uid") in (None, uid))
    ]
    return sorted(mine, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")


@dataclass(frozen=True)
class Trouble:
    """Why a pod is not ready. ``kind``: image | config | crashloop | unschedulable | scaling
    (unschedulable while the cluster autoscaler adds a node) | init (an init container
    failed) | waiting. ``final``: it will not
    fix itself (raise now); else it may (raise past a grace period; ``scaling``: at the timeout).
    """

    kind: str
    message: str
    final: bool


def init_trouble(pod: dict[str, Any]) -> Trouble | None:
    """An init container (the ``init`` bootstrap's copy of the runtime) that cannot run or
    failed: the pod's own container never starts."""
    name = _meta(pod).get("name", "?")
    for st in _status(pod).get("initContainerStatuses") or []:
        state = st.get("state") or {}
        waiting, done = state.get("waiting") or {}, state.get("terminated") or {}
        reason, message = str(waiting.get("reason") or ""), str(waiting.get("message") or "")
        what = f"init container {st.get('name', '?')!r} of pod {name}"
        if reason in _IMAGE_REASONS:
            return Trouble(
                "image",
                f"{what} cannot pull its image {st.get('image') or '?'!r} ({reason}"
                f"{': ' + message if message else ''}). Check the runtime image's name and tag "
                "(HOTPOD_K8S_BOOTSTRAP_IMAGE), and that the cluster may pull it.",
                reason != "ErrImagePull",
            )
        failed = (st.get("lastState") or {}).get("terminated") or done
        code = failed.get("exitCode")
        if reason == "CrashLoopBackOff" or (isinstance(code, int) and code != 0):
            return Trouble(
                "init",
                f"{what} failed (exit code {code}"
                f"{': ' + str(failed.get('message')) if failed.get('message') else ''}); the pod's "
                "own container cannot start.",
                True,
            )
    return None


def trouble(pod: dict[str, Any], events: list[dict[str, Any]], restarts0: int) -> Trouble | None:
    """What keeps the pod from being ready, as far as its status and events tell."""
    name = _meta(pod).get("name", "?")
    early = init_trouble(pod)
    if early is not None:
        return early
    reason, message = waiting_reason(pod)
    if reason in _IMAGE_REASONS:
        final = reason != "ErrImagePull"  # (the first failure; the next is ImagePullBackOff)
        return Trouble(
            "image",
            f"pod {name} cannot pull its image {image_of(pod)!r} ({reason}"
            f"{': ' + message if message else ''}). Check the image name and tag, and that the "
            "cluster may pull it (imagePullSecrets for a private registry).",
            final,
        )
    if reason in _CONFIG_REASONS:
        return Trouble(
            "config",
            f"pod {name} cannot start its container ({reason}: {message or 'no message'}). A "
            "Secret or ConfigMap it names may be missing: create it in the namespace.",
            True,
        )
    if reason == "CrashLoopBackOff" or restarts(pod) - restarts0 >= 3:
        code = last_exit(pod)
        return Trouble(
            "crashloop",
            f"pod {name} keeps crashing ({restarts(pod)} restarts"
            f"{f', last exit code {code}' if code is not None else ''}).",
            True,
        )
    why = unschedulable(pod)
    if why is None:
        failed = [e for e in events_for(pod, events) if e.get("reason") == "FailedScheduling"]
        if failed and (_status(pod).get("phase") or "Pending") == "Pending":
            why = str(failed[-1].get("message") or "")
    if why is not None:
        scaling = any(e.get("reason") == "TriggeredScaleUp" for e in events_for(pod, events))
        return Trouble(
            "scaling" if scaling else "unschedulable",
            f"pod {name} is Pending: the scheduler cannot place it ({why})"
            + (
                "; the cluster autoscaler is adding a node"
                if scaling
                else ". Ask for less (cpus, memory, gpus), or add nodes that have it"
            ),
            False,
        )
    if reason:
        return Trouble("waiting", f"pod {name} is waiting ({reason}: {message})", False)
    return None


__all__ = [
    "POD_INDEX_LABELS",
    "Trouble",
    "container_status",
    "events_for",
    "image_of",
    "init_trouble",
    "is_ready",
    "last_exit",
    "rank_key",
    "runtime_container",
    "restarts",
    "status",
    "trouble",
    "unschedulable",
    "waiting_reason",
]
