"""An in-process channel that records every event with its wall-clock time.

A test helper, not a ``type`` one can configure (nobody could read it back from a config
file): the benchmarks and the tests add one to the gateway (``Gateway(cfg, channels=[rec])``)
to see exactly what staff would be told, and when — the e2e benchmark measures the time
from a simulated impact to the notification with it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from fallwatch.gateway.channels import Action, AlertEvent, Delivery


@dataclass(frozen=True, slots=True)
class Recorded:
    wall_s: float  # time.time() when the channel was called
    event: AlertEvent


class RecordingChannel:
    name = "recording"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[Recorded] = []

    def notify(self, event: AlertEvent) -> list[Delivery]:
        with self._lock:
            self._events.append(Recorded(time.time(), event))
        return [Delivery(self.name, "memory", True)]

    def events(self, kind: str | None = None, action: Action | None = None) -> list[AlertEvent]:
        """Recorded events, in order, optionally of one alert kind and/or action."""
        with self._lock:
            return [r.event for r in self._events
                    if (kind is None or r.event.kind == kind) and (action is None or r.event.action == action)]

    def first_times(self, kind: str, action: Action) -> dict[str, float]:
        """alert_id → wall time of its first event of that kind and action."""
        out: dict[str, float] = {}
        with self._lock:
            for r in self._events:
                if r.event.kind == kind and r.event.action == action:
                    out.setdefault(r.event.alert_id, r.wall_s)
        return out

    def close(self) -> None:
        """Keeps its records: they are read after the gateway stopped."""
