"""Dockerfiles in and out of :class:`~hotpod.image.Image`.

* :func:`parse_dockerfile` (``Image.from_dockerfile``) reads a single-stage Dockerfile into an
  Image whose steps a pod can apply live. What a running pod cannot do (``CMD``, ``EXPOSE``,
  later build stages, ``ADD`` of a URL, ...) becomes a ``dockerfile`` step that keeps the
  instruction's text and says why: nothing is dropped silently.
* :func:`compile_dockerfile` (``Image.to_dockerfile``) writes the standard Dockerfile that
  builds the same image, and :func:`write_build_context` stages the local files it copies next
  to it, so that ``docker build DIR`` works.

Unlike the rest of the spec layer, these functions read (and write) files.
"""

from __future__ import annotations

from hotpod.dockerfile.compile import compile_dockerfile, write_build_context
from hotpod.dockerfile.parse import DEFAULT_BASE, PACKAGES_DIR, PIP_DIR, parse_dockerfile

__all__ = [
    "DEFAULT_BASE",
    "PACKAGES_DIR",
    "PIP_DIR",
    "compile_dockerfile",
    "parse_dockerfile",
    "write_build_context",
]
