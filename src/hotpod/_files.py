"""Small file helpers shared across layers."""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path


def tail(path: str | os.PathLike[str] | None, lines: int = 15) -> str:
    """The last ``lines`` lines of a text file, or ``(no log)`` when it cannot be read."""
    if not path:
        return "(no log)"
    try:
        with open(Path(path), errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines)).rstrip() or "(empty log)"
    except OSError:
        return "(no log)"
