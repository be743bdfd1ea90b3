"""Run a loop at ``speed`` times real time: the one pacing helper.

The simulator's fleet, the edge's replay source and the demo pipeline all step a
source clock (sim or recorded seconds) and, when asked to, hold it to the wall clock.
Pacing against the start (not sleeping ``step / speed`` per step) keeps a slow step from
accumulating: after a late step the next ones catch up instead of drifting.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Pacer"]


class Pacer:
    """Holds source time ``t_s`` to the wall clock at ``speed`` source seconds per wall second.

    ``speed`` None or 0 = as fast as possible (:meth:`wait` returns at once). ``start_s`` is
    the source time at which the wall clock is read (:meth:`restart`, or construction).
    """

    def __init__(self, speed: float | None, start_s: float = 0.0, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.speed = speed or 0.0
        self._clock, self._sleep = clock, sleep
        self.restart(start_s)

    def restart(self, start_s: float = 0.0) -> None:
        """Source time ``start_s`` is now."""
        self.start_s = start_s
        self._wall0 = self._clock()

    def lag_s(self, t_s: float) -> float:
        """Wall seconds until source time ``t_s`` is due (negative: behind)."""
        if self.speed <= 0:
            return 0.0
        return (t_s - self.start_s) / self.speed - (self._clock() - self._wall0)

    def wait(self, t_s: float) -> None:
        """Sleep until source time ``t_s`` is due on the wall clock."""
        lag = self.lag_s(t_s)
        if lag > 0:
            self._sleep(lag)
