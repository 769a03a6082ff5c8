"""Kubernetes manifests compiled from a :class:`~hotpod.compute.Compute` (pure, no client).

:func:`compile_manifests` turns ``(name, compute)`` into the plain dicts a deploy applies, in
apply order; :func:`to_yaml` prints them. Nothing here imports a Kubernetes client or does I/O.

What a Compute becomes:

- by default: a ``Deployment`` (``replicas`` pods) and a ``ClusterIP`` ``Service`` named after
  the service; a distributed pool (``compute.distribute("spmd" | "pytorch" | "jax", ...)``) also
  gets a headless Service ``NAME-headless`` through which its pods find each other;
- ``compute.autoscale(...)``: a Knative ``Service`` (``serving.knative.dev/v1``), every
  autoscaling setting on its revision template (see :mod:`hotpod.autoscale`);
- ``compute.distribute("ray", ...)``: a KubeRay ``RayCluster`` (a head and one worker group) and
  a Service to the head;
- ``Compute.from_manifest(...)``: that workload with the runtime merged into its pod templates
  (:mod:`hotpod.k8s.byo`) and a Service to its pods;
- ``Compute(selector=...)``: only a Service selecting those pods (they must already run the
  runtime on port 32300);
- a ``PersistentVolumeClaim`` first for each Volume given a ``size``.

Every object carries ``app.kubernetes.io/managed-by: hotpod`` and ``hotpod.dev/service: NAME``
(claims only the first, so that a teardown by label keeps the data).

How the pod runtime starts inside an image
------------------------------------------
The container runs ``python -m hotpod.runtime.supervisor`` directly, with ``HOTPOD_*``
environment (port 32300 on all interfaces, the service name, the pod's name, namespace and IP
from the downward API, the pod root on an ``emptyDir`` at ``/hotpod``, the world size) and the
service token from the Secret ``NAME-hotpod-token`` (key ``token``), which the backend creates
at apply time. So **the image must have hotpod installed** (and ``ray`` for a Ray pool): build
it from ``hotpod dockerfile`` output plus ``pip install hotpod``, or pass ``runtime_image=`` an
image that has it. Starting it in an image without hotpod (pip-installing it, or copying it
from a runtime image in an init container) is the backend's bootstrap
(:mod:`hotpod.backends.k8s.bootstrap`), applied to these templates at deploy time.

Secrets whose variable names are known here (``env_var=`` or ``values=``) become
``secretKeyRef`` variables (key: the name lower-cased, as :func:`hotpod.secret.kube_key` says);
any other Secret is mounted read-only at ``/etc/hotpod/secrets/<name>`` and announced by
``HOTPOD_SECRETS_DIR`` (turning those files into variables is the pod runtime's part, not done
yet).

Knative notes: fields beyond Knative's default pod-spec subset need its feature flags
(``kubernetes.podspec-nodeselector``, ``-tolerations``, ``-persistent-volume-claim``,
``-emptydir``); the downward-API variables (``HOTPOD_POD_NAME``...) and ``HOTPOD_WORLD_SIZE``
are left out there (``kubernetes.podspec-fieldref`` is off by default, and an autoscaled pool
has no fixed size), so the runtime falls back to the pod's hostname for its name.
"""

from __future__ import annotations

from typing import Any

from hotpod.k8s.compile import compile_manifests


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """The objects as one multi-document YAML text, keys in the order the compiler wrote them."""
    import yaml

    return yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True, width=100)


__all__ = ["compile_manifests", "to_yaml"]
