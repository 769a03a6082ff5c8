"""The real frameworks (torch, JAX, Ray) that some tests run: skipped where one is missing,
except in CI (``CI`` set), where ``.ci/run`` installs them and a missing one fails the test."""

from __future__ import annotations

import importlib.util
import os

import pytest


def need(module: str, install: str) -> None:
    """Go on when ``module`` imports; else skip, or fail in CI, saying what installs it."""
    if importlib.util.find_spec(module) is not None:
        return
    why = f"{module} is not installed here; `{install}` installs it (.ci/run does)"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {why}")
    pytest.skip(why)
