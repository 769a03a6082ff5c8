"""The one exception tree of hotpod.

Every error hotpod raises derives from :class:`HotpodError`. Errors of lower layers (httpx,
subprocesses, SQLite) are translated at the boundary into one of these, with a message that says
what happened, why, and what to do next.
"""

from __future__ import annotations

from typing import Any


class HotpodError(Exception):
    """Root of every error hotpod raises."""


class SpecError(HotpodError, ValueError):
    """A spec value (Compute, Image, Secret, Volume, Endpoint) was given a bad argument.

    Subclasses ``ValueError`` so code that validates input generically still catches it.
    """


class ConfigError(HotpodError):
    """hotpod's own configuration (environment variables, config file) is invalid."""


class DeployError(HotpodError):
    """``.to()`` could not bring the service up: a pod failed to start or to load the code."""


class ResourceUnavailableError(DeployError):
    """The backend cannot meet what the Compute asks for (more GPUs than the machine has)."""


class ApiError(HotpodError):
    """The Kubernetes API server refused or failed a request; ``status`` is its HTTP status
    (0: no answer), ``reason`` its reason (``NotFound``, ``Forbidden``...)."""

    def __init__(self, message: str, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class ServiceNotFoundError(HotpodError, LookupError):
    """No service of that name exists on the backend."""


class CallError(HotpodError):
    """A call could not be completed for a reason other than the remote code raising."""


class CallTimeoutError(CallError, TimeoutError):
    """A call did not finish within the handle's timeout."""


class PodUnreachableError(CallError, ConnectionError):
    """A pod could not be reached, or it went away during a call."""

    def __init__(self, message: str, pod: str | None = None) -> None:
        super().__init__(message)
        self.pod = pod


class PodTerminatedError(PodUnreachableError):
    """A pod went away during a call: its process died or was stopped mid-call.

    The call's work on that pod is lost; the request is not sent again. ``pod`` names the pod.
    """


class WorkerMembershipChanged(CallError):
    """The pods of a distributed pool changed while a call ran on them: a pod was added,
    removed, or restarted (a new process) mid-call.

    A collective formed over the old set of pods cannot finish, so the call fails at once
    instead of hanging; the pods still in the call get fresh workers. Call again, or re-form
    the pool (``compute.distribute(...)`` then ``.to()``). ``added``, ``removed`` and
    ``restarted`` name the pods.
    """

    def __init__(
        self,
        message: str,
        *,
        added: list[str] | None = None,
        removed: list[str] | None = None,
        restarted: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.added = added or []
        self.removed = removed or []
        self.restarted = restarted or []


class ProtocolError(CallError):
    """The client and the pod do not speak the same protocol, or a response was malformed."""


class RemoteError(HotpodError):
    """The remote code raised an exception whose type cannot be imported here.

    ``type_name`` is the remote exception's qualified type name, ``remote_traceback`` the
    traceback as formatted on the pod.
    """

    def __init__(
        self,
        message: str,
        *,
        type_name: str = "",
        remote_traceback: str = "",
        pod: str | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.remote_traceback = remote_traceback
        self.pod = pod
        self.rank = rank

    def __str__(self) -> str:
        base = super().__str__()
        return f"{self.type_name}: {base}" if self.type_name else base


class BroadcastError(HotpodError):
    """A broadcast call failed on some pods.

    ``errors`` maps rank to the exception raised for that pod; ``results`` holds every pod's
    result in rank order, with ``None`` where the pod failed; ``pods`` names the pods by rank.
    """

    def __init__(
        self, message: str, *, errors: dict[int, BaseException], results: list[Any], pods: list[str]
    ) -> None:
        super().__init__(message)
        self.errors = errors
        self.results = results
        self.pods = pods


class RemoteTraceback(Exception):
    """Carries the remote traceback text; set as ``__cause__`` of a re-raised remote exception."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return "\n\nRemote traceback:\n" + self.tb.rstrip()


__all__ = [
    "ApiError",
    "BroadcastError",
    "CallError",
    "CallTimeoutError",
    "ConfigError",
    "DeployError",
    "HotpodError",
    "PodTerminatedError",
    "PodUnreachableError",
    "ProtocolError",
    "RemoteError",
    "RemoteTraceback",
    "ResourceUnavailableError",
    "ServiceNotFoundError",
    "SpecError",
    "WorkerMembershipChanged",
]
