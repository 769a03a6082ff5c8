"""What ``.to()`` shows while it works: the pods' setup steps and readiness.

On a terminal, a live display with one line per pod (rich); otherwise plain lines, one per step
header, so logs of CI jobs stay readable. The output of setup commands is not shown as it
streams (it is in the pod logs); the tail of a failing step's output is in the error.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, TextIO


def escape(text: str) -> str:
    """Text shown as is in the live display (no rich markup)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


class Progress:
    def __init__(self, service: str, pods: list[str], out: TextIO | None = None) -> None:
        self.service = service
        self.out = out or sys.stderr
        self.state = {p: "waiting" for p in pods}
        self._lock = threading.Lock()
        self._live: Any = None
        if self.out.isatty() and len(pods) <= 64:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(
                self._render(),
                console=Console(file=self.out),
                transient=True,
                refresh_per_second=8,
            )
            self._live.start()

    def _render(self) -> Any:
        from rich.table import Table

        table = Table.grid(padding=(0, 2))
        for pod, text in self.state.items():
            table.add_row(f"[bold]{pod}[/]", text)
        return table

    def line(self, pod: str, text: str) -> None:
        """A progress line from a pod; command output (indented) only updates the display."""
        with self._lock:
            if self._live is not None:
                if text.startswith("    "):  # output of the running step, under its header
                    header = self.state.get(pod, "").split("\n", 1)[0]
                    self.state[pod] = f"{header}\n[dim]{escape(text.strip()[:110])}[/]"
                else:
                    self.state[pod] = escape(text.strip()[:120])
                self._live.update(self._render())
            elif not text.startswith("    "):
                self.out.write(f"({pod}) {text}\n")
                self.out.flush()

    def done(self, pod: str, text: str) -> None:
        with self._lock:
            self.state[pod] = text
            if self._live is not None:
                self._live.update(self._render())

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
