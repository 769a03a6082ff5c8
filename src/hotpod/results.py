"""What a broadcast returns: a plain list of results in rank order that knows whose each is."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Results(list[Any]):
    """A broadcast's results: a plain list in rank order (``results == [1, 2]`` holds), that
    also knows whose each result is. ``ranks[i]`` and ``pods[i]`` are the rank and the pod (or
    ``pod/K``, the process of local rank K of a pod running several) of ``results[i]``;
    ``by_rank()`` maps each rank to its result; ``items()`` gives (rank, result) pairs."""

    def __init__(self, values: Sequence[Any], ranks: Sequence[int], pods: Sequence[str]) -> None:
        super().__init__(values)
        self.ranks = list(ranks)
        self.pods = list(pods)

    def by_rank(self) -> dict[int, Any]:
        return dict(zip(self.ranks, self, strict=True))

    def items(self) -> list[tuple[int, Any]]:
        return list(zip(self.ranks, self, strict=True))

    def __reduce__(self) -> tuple[Any, ...]:  # (pickled as what it is, with its ranks)
        return (Results, (list(self), self.ranks, self.pods))


__all__ = ["Results"]
