"""A fake Kubernetes cluster for end-to-end tests: an API server on loopback and one node whose
pods are local processes.

``FakeCluster().start()`` serves the Kubernetes API at ``url`` (kmock's scaffold with a stateful
API of our own, see ``api.py``), writes a ``kubeconfig`` for it, and runs the controllers
(``controllers.py``) and a kubelet (``kubelet.py``, ``runner.py``) on an event loop in a
background thread. Pods get IPs ``127.0.0.N`` and run their container commands as process groups;
``python`` is this test's interpreter, so images are ignored except for ``missing_images``.

Tests use the ``fake_cluster`` fixture (``fixture.py``), which also points ``KUBECONFIG`` at it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import functools
import gzip
import importlib.resources
import secrets
import shutil
import socket
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

if TYPE_CHECKING:  # the heavy imports (kmock, aiohttp, the kubernetes client) wait for start()
    from .api import FakeApiServer
    from .controllers import Controllers
    from .kubelet import Kubelet

__all__ = ["FakeCluster"]

T = TypeVar("T")
TICK = 0.05

#: The custom resources declared besides kmock's bundled built-in kinds.
CRDS = {
    "serving.knative.dev/v1/services": ("Service", "ksvc"),
    "ray.io/v1/rayclusters": ("RayCluster", None),
}


@functools.cache
def _bundled_resources() -> bytes:
    """kmock's bundled built-in kinds (its ``load_bundled`` uses a deprecated importlib call,
    and this suite turns warnings into errors)."""
    packed = importlib.resources.files("kmock._internal").joinpath("resources.json.gz")
    return gzip.decompress(packed.read_bytes())


class FakeCluster:
    """One fake cluster; see the module docstring. Not reusable once stopped."""

    def __init__(self, root: Path | None = None) -> None:
        self._own_root = root is None
        # a short path: pods' directories live under it, and unix sockets in them must stay
        # under the 108-byte limit
        self.root = Path(tempfile.mkdtemp(prefix="k8s-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.id = uuid.uuid4().hex[:12]
        self.token = secrets.token_urlsafe(24)
        self.namespace = "default"
        self.missing_images: set[str] = set()
        self.kubeconfig = self.root / "kubeconfig"
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._failures: list[str] = []
        self.api: FakeApiServer | None = None
        self.kubelet: Kubelet | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeCluster:
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="k8sfake", daemon=True
        )
        self._thread.start()
        started.result(timeout=30)
        self.kubeconfig.write_text(yaml.safe_dump(self._kubeconfig_data()))
        return self

    def __enter__(self) -> FakeCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _kubeconfig_data(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "fake", "namespace": self.namespace},
                }
            ],
            "current-context": "fake",
        }

    def _run(self, started: concurrent.futures.Future[None]) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main(started))
        except BaseException as e:
            if not started.done():
                started.set_exception(e)
            else:
                self._failures.append(f"the fake cluster's loop failed: {e!r}")
        finally:
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _main(self, started: concurrent.futures.Future[None]) -> None:
        import aiohttp.web
        import kmock

        from .api import FakeApiServer
        from .controllers import Controllers
        from .kubelet import Kubelet

        self._stop = asyncio.Event()
        api = FakeApiServer(token=self.token)
        api.resources.load_data(_bundled_resources())
        for res, (kind, short) in CRDS.items():
            api.resources[res] = kmock.ResourceInfo(
                kind=kind,
                namespaced=True,
                singular=kind.lower(),
                shortnames=[short] if short else [],
                verbs=[
                    "create",
                    "delete",
                    "deletecollection",
                    "get",
                    "list",
                    "patch",
                    "update",
                    "watch",
                ],
                subresources=["status"],
            )
        api.refresh_kinds()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        async with api:
            runner = aiohttp.web.ServerRunner(
                aiohttp.web.Server(api, handler_cancellation=True), shutdown_timeout=1.0
            )
            await runner.setup()
            site = aiohttp.web.SockSite(runner, sock)
            await site.start()
            kubelet = Kubelet(api, self.root, self.missing_images, self.id, port)
            api.kubelet = kubelet
            self.api, self.kubelet = api, kubelet
            controllers = Controllers(api.store, api.kind, api.all_kinds)
            store = api.store
            for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
                store.create(
                    api.kind("", "namespaces"), None, {"metadata": {"name": ns}, "spec": {}}
                )
            store.create(api.kind("", "nodes"), None, kubelet.node.object())
            started.set_result(None)
            try:
                await self._loop_forever(controllers, kubelet)
            finally:
                await kubelet.stop()
                if kubelet.probe_session is not None:
                    await kubelet.probe_session.close()
                await api.cancel_requests()
                await runner.cleanup()

    async def _loop_forever(self, controllers: Controllers, kubelet: Kubelet) -> None:
        assert self._stop is not None
        store = controllers.store
        seen: set[str] = set()
        while not self._stop.is_set():
            changed = store.changed()
            try:
                controllers.reconcile()
                kubelet.sync()
            except Exception as e:  # a bug in the fake: keep serving, report at the end
                import traceback

                text = traceback.format_exc()
                if repr(e) not in seen:
                    seen.add(repr(e))
                    self._failures.append(f"controllers: {text}")
            stop = asyncio.ensure_future(self._stop.wait())
            change = asyncio.ensure_future(changed.wait())
            await asyncio.wait({stop, change}, timeout=TICK, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            change.cancel()
            await asyncio.sleep(0.005)  # let writes settle before the next pass

    def stop(self) -> None:
        """Kill every pod's processes and stop the server (idempotent)."""
        if self._loop is None or self._thread is None:
            return
        if self._stop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)
        self._loop = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- calls into the loop -------------------------------------------------------------------

    def _call(self, fn: Callable[[], T], timeout: float = 10) -> T:
        if self._loop is None:
            raise RuntimeError("the fake cluster is not running")

        async def call() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout)

    @property
    def failures(self) -> list[str]:
        """Errors inside the fake (its API, controllers or kubelet): a test should see none."""
        out = list(self._failures)
        if self.api is not None:
            out += self.api.failures
        if self.kubelet is not None:
            out += self.kubelet.failures
        return out

    # -- the API the tests use -----------------------------------------------------------------

    def set_node(
        self,
        cpu: str = "16",
        memory: str = "64Gi",
        gpus: int = 0,
        labels: dict[str, str] | None = None,
    ) -> None:
        """Set the one node's allocatable resources (and extra labels)."""

        def apply() -> None:
            assert self.api is not None and self.kubelet is not None
            self.kubelet.node.set(cpu, memory, gpus, labels)
            store, kind = self.api.store, self.api.kind("", "nodes")
            node = self.kubelet.node.object()
            store.replace(kind, None, node["metadata"]["name"], node, check_version=False)
            store.replace(
                kind,
                None,
                node["metadata"]["name"],
                node,
                subresource="status",
                check_version=False,
            )

        self._call(apply)

    def pods(
        self, namespace: str = "default", selector: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """The Pod objects as stored (copies), optionally those with all of ``selector``'s labels."""

        def read() -> list[dict[str, Any]]:
            assert self.api is not None
            sel = ",".join(f"{k}={v}" for k, v in (selector or {}).items()) or None
            return copy.deepcopy(self.api.store.select(self.api.kind("", "pods"), namespace, sel))

        return self._call(read)

    def get(
        self, plural: str, name: str, namespace: str = "default", group: str = ""
    ) -> dict[str, Any] | None:
        """Any stored object (a copy), or None."""

        def read() -> dict[str, Any] | None:
            assert self.api is not None
            return copy.deepcopy(self.api.store.get(self.api.kind(group, plural), namespace, name))

        return self._call(read)

    def kill(self, pod: str, namespace: str = "default") -> None:
        """SIGKILL the pod's container process groups: a crash (the containers restart)."""

        def crash() -> None:
            assert self.kubelet is not None
            self.kubelet.crash(namespace, pod)

        self._call(crash)

    def processes(self) -> list[int]:
        """Pids of the live container processes (one per running container)."""

        def read() -> list[int]:
            assert self.kubelet is not None
            return self.kubelet.processes()

        return self._call(read)

    def leftovers(self) -> list[int]:
        """Pids of any live process started in this cluster's containers, children included."""
        if self.kubelet is None:
            return []
        with contextlib.suppress(Exception):
            return [p.pid for p in self.kubelet.leftovers()]
        return []
