"""``kt.fn`` and ``kt.cls``: wrap user code, deploy it with ``.to()``, call it through a handle.

Call options live on the handle (``handle.with_options(timeout=...)``), never in the user's own
keyword arguments. On a pod, ``.to()`` returns the local object, so a module that deploys at
import time still imports cleanly there.

Async twins follow one rule: every blocking action ``x(...)`` has ``await x.aio(...)``, which
returns what ``x(...)`` returns::

    remote = await kt.fn(f).to.aio(compute)          # deploy (in a worker thread)
    model = await kt.cls(Model).to.aio(compute, init_args={...})
    y = await remote.aio(x)                           # call
    y = await model.predict.aio(x)                    # method call

A generator function's call returns an iterator of its items as the pod yields them
(``for item in remote(n)``); its async twin an async iterator
(``async for item in await remote.aio(n)``). With several pods, a call returns one result per
pod in rank order, and for a generator one iterator per pod.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import shlex
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from hotpod import coderef, membership, routing
from hotpod.backends import PodInfo, ServiceInfo, get_backend
from hotpod.client import CallOptions, PodClient
from hotpod.codesync import find_project_root
from hotpod.compute import Compute
from hotpod.config import settings
from hotpod.deploy import Deployment, check_name, deploy, service_name
from hotpod.distribute import COLLECTIVE_KINDS
from hotpod.errors import CallError, SpecError

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
S = TypeVar("S")
TP = ParamSpec("TP")
TR = TypeVar("TR")


class _Twin(Generic[S, TP, TR]):
    """A method with an async twin: ``obj.to(...)``, and ``await obj.to.aio(...)`` which runs
    the same method in a worker thread (``asyncio.to_thread``)."""

    def __init__(self, func: Callable[Concatenate[S, TP], TR]) -> None:
        self._func = func
        self.__doc__ = func.__doc__
        self.__name__ = func.__name__

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _Twin[S, TP, TR]: ...

    @overload
    def __get__(self, obj: S, owner: type | None = None) -> _BoundTwin[TP, TR]: ...

    def __get__(self, obj: S | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return _BoundTwin(self._func, obj)


class _BoundTwin(Generic[TP, TR]):
    def __init__(self, func: Callable[..., TR], obj: Any) -> None:
        self._func = func
        self._obj = obj
        self.__doc__ = func.__doc__

    def __call__(self, *args: TP.args, **kwargs: TP.kwargs) -> TR:
        return self._func(self._obj, *args, **kwargs)

    async def aio(self, *args: TP.args, **kwargs: TP.kwargs) -> TR:
        """The async twin: the same, awaited (it runs in a worker thread)."""
        import asyncio

        return await asyncio.to_thread(self._func, self._obj, *args, **kwargs)


def _report(dep: Deployment) -> None:
    n = len(dep.service.pods)
    rollout = dep.service.rollout
    if rollout in ("created", "replaced"):
        change = f"pods {rollout}"
    elif rollout == "scaled":
        change = f"scaled; code loaded on {dep.reloaded} new" if dep.reloaded else "scaled"
    elif dep.reloaded:
        change = f"code loaded on {dep.reloaded}"
    else:
        change = "nothing changed"
    if dep.steps_run:
        change += f"; {dep.steps_run} setup step{'s' if dep.steps_run != 1 else ''} ran"
    print(
        f"hotpod: {dep.service.name!r} ready on {n} pod{'s' if n != 1 else ''} in "
        f"{dep.seconds:.2f} s ({change}; launch {dep.spec['launch_id']})",
        file=sys.stderr,
        flush=True,
    )


class _Remote:
    """What handles share: the service, its pods and the call options."""

    def __init__(self, service: ServiceInfo, client: PodClient, options: CallOptions) -> None:
        self._service = service
        self._client = client
        self._options = options

    @property
    def name(self) -> str:
        return self._service.name

    @property
    def pods(self) -> list[str]:
        return [p.name for p in self._service.pods]

    @property
    def options(self) -> CallOptions:
        return self._options

    def _with(self, **options: Any) -> dict[str, Any]:
        current = dataclasses.asdict(self._options)
        unknown = set(options) - set(current)
        if unknown:
            raise SpecError(
                f"unknown call option(s) {sorted(unknown)}: expected "
                + ", ".join(f"{k}=" for k in current)
            )
        current.update(options)
        return current

    def _routed(self) -> PodInfo | None:
        """An autoscaled service's router, as the one 'pod' its calls go to (load-balanced)."""
        return routing.router_pod(self._service)

    def _targets(self) -> tuple[list[PodInfo], bool]:
        """The pods a call goes to (``workers=``; a Ray pool's head alone), whether it returns
        one value rather than a list, after ``restart=True`` gave them fresh workers."""
        opts = self._options
        pods = membership.select(self._service, self._client, opts.workers)
        if opts.restart:
            membership.restart(self._client, pods)
        single = membership.kind(self._service) == "ray" or (
            opts.workers is None and len(pods) == 1 and membership.procs(self._service) == 1
        )
        return pods, single

    def _invoke(self, method: str, args: tuple, kwargs: dict) -> Any:
        if self._routed() is not None:  # one pod, picked by the router (``routing``)
            return routing.call(self, method, args, kwargs, self._options)
        pods, single = self._targets()
        if single:
            return self._client.call(pods[0], method, args, kwargs, self._options)
        watch = membership.watch_for(self._service, self._client, pods)
        procs = membership.procs(self._service)
        return self._client.broadcast(pods, method, args, kwargs, self._options, watch, procs)

    async def _ainvoke(self, method: str, args: tuple, kwargs: dict) -> Any:
        import asyncio

        from hotpod import aioclient

        if self._routed() is not None:  # one pod, picked by the router (``routing``)
            return await routing.acall(self, method, args, kwargs, self._options)
        if self._options.restart or self._options.workers == "ready":  # (they ask the pods)
            pods, single = await asyncio.to_thread(self._targets)
        else:
            pods, single = self._targets()
        if single:
            return await aioclient.call(self._client, pods[0], method, args, kwargs, self._options)
        watch = None
        if membership.kind(self._service) in COLLECTIVE_KINDS:  # (it asks the backend)
            watch = await asyncio.to_thread(membership.watch_for, self._service, self._client, pods)
        procs = membership.procs(self._service)
        return await aioclient.broadcast(
            self._client, pods, method, args, kwargs, self._options, watch, procs
        )

    def teardown(self) -> bool:
        """Delete the service and its pods. Returns False if it was already gone."""
        return get_backend().teardown(self._service.name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} on {len(self.pods)} pod(s)>"


class RemoteFn(_Remote, Generic[P, R]):
    """A deployed function. Calling it runs the function on every pod of the service.

    With one pod the call returns the function's result; with several, a list of results in rank
    order (broadcast, SPMD). A generator function's call returns an iterator of its items as
    they are produced (one iterator per pod when there are several). ``await remote.aio(...)``
    is the async twin.
    """

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._invoke("", args, kwargs)  # type: ignore[no-any-return]

    async def aio(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """The async twin of a call: ``await remote.aio(x)`` returns what ``remote(x)`` does,
        with a generator's items as an async iterator (``async for item in await ...``).

        Cancelling it closes the connection: the pod cancels async code; sync code cannot be
        interrupted, so it runs to its end on the pod and its result is dropped.
        """
        return await self._ainvoke("", args, kwargs)  # type: ignore[no-any-return]

    def with_options(
        self,
        *,
        timeout: float | Any | None = ...,
        serialization: str | Any = ...,
        stream_logs: bool | Any = ...,
        debug_rank: int | Any | None = ...,
        post_mortem: bool | Any = ...,
        debugger: str | Any = ...,
        workers: str | Sequence[int] | Any | None = ...,
        restart: bool | Any = ...,
    ) -> RemoteFn[P, R]:
        """A handle to the same service with other call options (see :class:`CallOptions`)."""
        given = {k: v for k, v in locals().items() if k != "self" and v is not ...}
        return RemoteFn(self._service, self._client, CallOptions(**self._with(**given)))


class RemoteMethod:
    """A method of a deployed class instance."""

    def __init__(self, owner: RemoteCls[Any], name: str) -> None:
        self._owner = owner
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._owner._invoke(self._name, args, kwargs)

    async def aio(self, *args: Any, **kwargs: Any) -> Any:
        """The async twin: ``await remote.method.aio(x)`` (see :meth:`RemoteFn.aio`)."""
        return await self._owner._ainvoke(self._name, args, kwargs)

    def __repr__(self) -> str:
        return f"<RemoteMethod {self._owner.name}.{self._name}>"


class RemoteCls(_Remote, Generic[T]):
    """A deployed class: one instance per pod, kept between calls.

    ``remote.method(...)`` calls the method on every pod's instance (a list of results in rank
    order when there are several pods).
    """

    def __getattr__(self, name: str) -> RemoteMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return RemoteMethod(self, name)

    def with_options(
        self,
        *,
        timeout: float | Any | None = ...,
        serialization: str | Any = ...,
        stream_logs: bool | Any = ...,
        debug_rank: int | Any | None = ...,
        post_mortem: bool | Any = ...,
        debugger: str | Any = ...,
        workers: str | Sequence[int] | Any | None = ...,
        restart: bool | Any = ...,
    ) -> RemoteCls[T]:
        """A handle to the same service with other call options (see :class:`CallOptions`)."""
        given = {k: v for k, v in locals().items() if k != "self" and v is not ...}
        return RemoteCls(self._service, self._client, CallOptions(**self._with(**given)))


class Fn(Generic[P, R]):
    """A function to deploy: ``kt.fn(train).to(compute)``."""

    def __init__(self, func: Callable[P, R], name: str | None = None) -> None:
        if inspect.isclass(func) or not callable(func):
            raise SpecError(
                f"kt.fn expects a function, got {func!r}"
                + ("; use kt.cls for a class" if inspect.isclass(func) else "")
            )
        self.func = func
        self.name = check_name(name) if name is not None else service_name(func.__name__)

    @_Twin
    def to(self, compute: Compute) -> RemoteFn[P, R]:
        """Deploy to ``compute`` (or patch the service of this name); returns a handle.

        ``await fn.to.aio(compute)`` is the async twin. On a pod this returns the function
        itself.
        """
        if settings().in_pod:
            return _LocalFn(self.func)  # type: ignore[return-value]
        dep = deploy(self.func, "fn", self.name, compute)
        compute._deployed_as(self.name)  # (compute.pod_names())
        _report(dep)
        return RemoteFn(dep.service, dep.client, CallOptions())

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function locally."""
        return self.func(*args, **kwargs)


class _LocalFn:
    """What ``kt.fn(f).to(...)`` gives on a pod: ``f`` itself, with the handle's methods."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.__wrapped__ = func

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__(*args, **kwargs)

    async def aio(self, *args: Any, **kwargs: Any) -> Any:
        result = self.__wrapped__(*args, **kwargs)
        return await result if inspect.isawaitable(result) else result

    def with_options(self, **_: Any) -> _LocalFn:
        return self

    def teardown(self) -> bool:
        return False


class _LocalInstance:
    """What ``kt.cls(C).to(...)`` gives on a pod: the class, built lazily with the init args."""

    def __init__(self, klass: type, args: tuple, kwargs: dict) -> None:
        self.__dict__["_spec"] = (klass, args, kwargs)
        self.__dict__["_obj"] = None

    def with_options(self, **_: Any) -> _LocalInstance:
        return self

    def teardown(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        if self.__dict__["_obj"] is None:
            klass, args, kwargs = self.__dict__["_spec"]
            self.__dict__["_obj"] = klass(*args, **kwargs)
        return getattr(self.__dict__["_obj"], name)


class Cls(Generic[T]):
    """A class to deploy: ``kt.cls(Model).to(compute, init_args={...})``."""

    def __init__(self, klass: type[T], name: str | None = None) -> None:
        if not inspect.isclass(klass):
            raise SpecError(
                f"kt.cls expects a class, got {klass!r}"
                + ("; use kt.fn for a function" if callable(klass) else "")
            )
        self.klass = klass
        self.name = check_name(name) if name is not None else service_name(klass.__name__)

    @_Twin
    def to(
        self,
        compute: Compute,
        init_args: Mapping[str, Any] | Sequence[Any] | None = None,
    ) -> RemoteCls[T]:
        """Deploy to ``compute``; each pod builds one instance with ``init_args``.

        ``init_args`` is a dict of keyword arguments (or a list/tuple of positional ones). When
        they and the code are unchanged, a later ``.to()`` keeps the running instances.
        ``await cls.to.aio(compute, init_args=...)`` is the async twin.
        """
        if init_args is None:
            args: tuple = ()
            kwargs: dict = {}
        elif isinstance(init_args, Mapping):
            args, kwargs = (), dict(init_args)
        elif isinstance(init_args, (list, tuple)):
            args, kwargs = tuple(init_args), {}
        else:
            raise SpecError(
                f"init_args={init_args!r}: expected a dict of keyword arguments or a list of "
                "positional arguments"
            )
        if settings().in_pod:
            return _LocalInstance(self.klass, args, kwargs)  # type: ignore[return-value]
        dep = deploy(self.klass, "cls", self.name, compute, (args, kwargs))
        compute._deployed_as(self.name)  # (compute.pod_names())
        _report(dep)
        return RemoteCls(dep.service, dep.client, CallOptions())


def fn(func: Callable[P, R], name: str | None = None) -> Fn[P, R]:
    """Wrap a function for deployment: ``kt.fn(train).to(compute)``."""
    return Fn(func, name=name)


def cls(klass: type[T], name: str | None = None) -> Cls[T]:
    """Wrap a class for deployment: ``kt.cls(Model).to(compute, init_args={...})``."""
    return Cls(klass, name=name)


_PYTHON_WORDS = re.compile(r"python(\d+(\.\d+)?)?$")


def app_name(command: str | Sequence[str]) -> str:
    """A service name from a command: its first word that is not an interpreter or an option,
    made a DNS label (``python -m uvicorn main:app`` -> ``uvicorn``, ``python train.py`` ->
    ``train``)."""
    words = shlex.split(command) if isinstance(command, str) else list(command)
    for word in words:
        base = os.path.basename(word)
        if not base or base.startswith("-") or _PYTHON_WORDS.match(base) or "=" in base:
            continue
        return service_name(os.path.splitext(base)[0] if base.endswith(".py") else base)
    return "app"


def _app_code(caller: str | None) -> coderef.CodeRef:
    """What an app's pods get: the project around the file that called ``kt.app`` (the command
    runs in that file's directory in the pods' copy), else the one around the working directory
    (the command runs in the same relative directory)."""
    file = Path(caller).absolute() if caller and not caller.startswith("<") else None
    if file is not None and file.is_file():
        root: Path | None = find_project_root(file)
        here = file.parent
    else:
        root = coderef._cwd_project()
        here = Path.cwd()
    rel = ""
    if root is not None:
        try:
            rel = here.relative_to(root).as_posix()
        except ValueError:
            rel = ""
    return coderef.CodeRef(root, ("" if rel == "." else rel,), None, None, "", None)


class RemoteApp(_Remote):
    """A deployed app: its process runs on every pod; its port is reached through the pods'
    servers, at ``url`` (pod 0) or ``urls`` (one per pod), with the service token.

    ``app.get("/hello")``, ``app.post("/items", json={...})`` and ``app.request(method, path,
    **httpx_kwargs)`` send a request to pod 0's app (``pod=N`` for another) with the token and
    return the ``httpx.Response``; while the app is down (it exited; the pod starts it again)
    they raise ``CallError`` naming it and its exit code. Another client needs the ``headers``.
    """

    _http: Any = None  # one httpx.Client for every app handle of the process (warm connections)
    _http_lock = threading.Lock()

    def __init__(self, service: ServiceInfo, client: PodClient) -> None:
        super().__init__(service, client, CallOptions())

    @property
    def urls(self) -> list[str]:
        """Each pod's base URL of the app, in rank order."""
        return [f"{p.url}/app" for p in sorted(self._service.pods, key=lambda p: p.rank)]

    @property
    def url(self) -> str:
        """Pod 0's base URL of the app: ``f"{app.url}/hello"`` is the app's ``/hello``."""
        return self.urls[0]

    @property
    def headers(self) -> dict[str, str]:
        """What a request to ``url`` needs: the service token."""
        return {"Authorization": f"Bearer {self._service.token}"}

    def request(self, method: str, path: str = "/", *, pod: int = 0, **kwargs: Any) -> Any:
        """Send ``method path`` to the app of pod ``pod`` (its rank); returns the
        ``httpx.Response``. ``kwargs`` are httpx's (``json=``, ``params=``, ``timeout=``...)."""
        import httpx

        urls = self.urls
        if not 0 <= pod < len(urls):
            raise SpecError(f"pod={pod!r}: expected a rank from 0 to {len(urls) - 1}")
        with RemoteApp._http_lock:
            if RemoteApp._http is None:
                RemoteApp._http = httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0))
        headers = {**self.headers, **(kwargs.pop("headers", None) or {})}
        response = self._http.request(
            method, urls[pod] + "/" + path.lstrip("/"), headers=headers, **kwargs
        )
        if response.status_code == 503 and response.headers.get("x-hotpod-app-down"):
            raise CallError(response.json().get("error", response.text))  # (the pod restarts it)
        return response

    def get(self, path: str = "/", **kwargs: Any) -> Any:
        """``GET path`` on the app (see :meth:`request`)."""
        return self.request("GET", path, **kwargs)

    def post(self, path: str = "/", **kwargs: Any) -> Any:
        """``POST path`` on the app (see :meth:`request`)."""
        return self.request("POST", path, **kwargs)

    def teardown(self) -> bool:
        """Stop the app and delete the service and its pods. False if it was already gone."""
        return super().teardown()


class _LocalApp:
    """What ``kt.app(...).to(...)`` gives on a pod: nothing to call, nothing to tear down."""

    url = ""
    urls: list[str] = []

    def teardown(self) -> bool:
        return False


class App:
    """A process to deploy: ``kt.app("python -m uvicorn main:app --port $PORT").to(compute)``."""

    def __init__(
        self,
        command: str | Sequence[str],
        port: int | None = None,
        name: str | None = None,
        health: str | None = None,
        _caller: str | None = None,
    ) -> None:
        if isinstance(command, str):
            if not command.strip():
                raise SpecError("command='': expected a command line or a list of arguments")
            self.command: str | list[str] = command
        elif isinstance(command, Sequence) and command and all(isinstance(a, str) for a in command):
            self.command = list(command)
        else:
            raise SpecError(
                f"command={command!r}: expected a command line (run by /bin/sh) or a non-empty "
                "list of arguments"
            )
        if port is not None and (
            isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536
        ):
            raise SpecError(f"port={port!r}: expected a port number from 1 to 65535, or None")
        if health is not None and (not isinstance(health, str) or not health.startswith("/")):
            raise SpecError(f"health={health!r}: expected a path like '/health', or None")
        self.port = port
        self.health = health
        self.name = check_name(name) if name is not None else app_name(self.command)
        self._caller = _caller if _caller is not None else sys._getframe(1).f_code.co_filename

    @_Twin
    def to(self, compute: Compute) -> RemoteApp:
        """Deploy to ``compute``: sync the code, apply the image, start the command on every pod
        and wait until it answers; a later ``.to()`` with any change restarts it. Returns a
        handle; ``await app.to.aio(compute)`` is the async twin. On a pod this returns a stand-in.
        """
        if settings().in_pod:
            return _LocalApp()  # type: ignore[return-value]
        if self.port is not None and isinstance(compute, Compute) and compute.replicas > 1:
            raise SpecError(
                f"port={self.port} with replicas={compute.replicas}: the local backend's pods "
                "share this machine's network, so they cannot all listen on one port; leave "
                "port=None and have the command listen on $HOTPOD_APP_PORT (or $PORT)"
            )
        extra = {
            "app": {"command": self.command, "port": self.port, "health": self.health},
            "timeout": compute.launch_timeout if isinstance(compute, Compute) else None,
        }
        dep = deploy(None, "app", self.name, compute, ref=_app_code(self._caller), extra=extra)
        compute._deployed_as(self.name)  # (compute.pod_names())
        _report(dep)
        return RemoteApp(dep.service, dep.client)


def app(
    command: str | Sequence[str],
    port: int | None = None,
    name: str | None = None,
    health: str | None = None,
) -> App:
    """Wrap a process for deployment: ``kt.app("python -m uvicorn main:app --port $PORT")``.

    The command runs on every pod (a string under ``/bin/sh -c``, a list as it is, ``python``
    being the pods' interpreter) in the directory of the calling file in the pods' copy of the
    project. It must listen on ``$HOTPOD_APP_PORT`` (also ``$PORT``): ``port`` when given
    (a single pod only, on the local backend), else a port the pod picks. ``health``: a path
    that must answer 2xx before the deploy succeeds (else a TCP connect suffices).
    """
    return App(
        command, port=port, name=name, health=health, _caller=sys._getframe(1).f_code.co_filename
    )
