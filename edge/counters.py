"""The agent's counters (``EdgeAgent.stats()``): one flat dict every stage adds to.

Why one shared object rather than counters per stage: the names are the public, documented
``stats()`` keys (docs/edge.md) and several stages count under one name (``frame_errors``,
``sensors_discovered``); a plain dict keeps a count one dict update on the hot path.
"""

from __future__ import annotations


class Counters:
    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    def count(self, key: str, n: int = 1) -> None:
        v = self.values
        v[key] = v.get(key, 0) + n

    def get(self, key: str) -> int:
        return self.values.get(key, 0)
