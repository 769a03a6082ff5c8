"""Code the debugger tests deploy (imported by module name on the pods)."""

from __future__ import annotations

import os


def compute(x):
    y = x * 2
    rank = int(os.environ["HOTPOD_RANK"])
    breakpoint()
    return y + 1 + 0 * rank


def explode(x):
    doomed = x * 3
    raise ValueError(f"boom {doomed}")
