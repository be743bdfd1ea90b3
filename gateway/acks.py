"""In-order, only-when-durable MQTT acknowledgments for a manual-ack paho client.

MQTT 5 (4.6.0-2) wants PUBACKs in the order the PUBLISHes arrived. Messages are
handled on two paths (fall alerts jump ahead of telemetry batches), so the one that
finishes first marks its messages done and the tracker releases acks only for the
contiguous done prefix. Packet ids belong to one connection: after a reconnect the
broker re-sends everything unacknowledged, so entries of an older connection are
dropped instead of being acked (an old packet id on the new connection could ack a
different message).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable


class AckEntry:
    __slots__ = ("done", "gen", "mid", "owner", "qos")

    def __init__(self, owner: AckTracker, mid: int, qos: int, gen: int) -> None:
        self.owner = owner
        self.mid = mid
        self.qos = qos
        self.gen = gen
        self.done = False


class AckTracker:
    def __init__(self, send: Callable[[int, int], object],
                 send_many: Callable[[list[int]], object] | None = None) -> None:
        """``send(mid, qos)`` acks one message; ``send_many(mids)``, if given, acks several QoS 1
        messages in that order at once (one write instead of one per message, issue 16)."""
        self._send = send
        self._send_many = send_many
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pending: deque[AckEntry] = deque()
        self._gen = 0
        self.acked = 0

    def new_connection(self) -> None:
        """Forget unacknowledged entries of the previous connection (the broker re-sends them)."""
        with self._lock:
            self._gen += 1
            self._pending.clear()

    def track(self, mid: int, qos: int) -> AckEntry:
        entry = AckEntry(self, mid, qos, self._gen)
        with self._lock:
            self._pending.append(entry)
        return entry

    @property
    def pending(self) -> int:
        return len(self._pending)

    def done(self, entries: Iterable[AckEntry | None]) -> None:
        """Mark messages durable (or deliberately dropped) and send the acks now allowed."""
        with self._send_lock:
            ready: list[AckEntry] = []
            with self._lock:
                for e in entries:
                    if e is not None:
                        e.done = True
                while self._pending and self._pending[0].done:
                    ready.append(self._pending.popleft())
            if self._send_many is not None and len(ready) > 1:
                run: list[int] = []
                for e in ready:  # consecutive QoS 1 acks together; anything else in between on its own
                    if e.qos == 1:
                        run.append(e.mid)
                        continue
                    if run:
                        self._send_many(run)
                        run = []
                    self._send(e.mid, e.qos)
                if run:
                    self._send_many(run)
            else:
                for e in ready:
                    self._send(e.mid, e.qos)
            self.acked += len(ready)
