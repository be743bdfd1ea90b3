"""Non-blocking delivery for network channels: a queue and one worker thread per channel.

A channel's ``notify`` runs on the gateway's alert worker, which must never wait for a
mail server or a web hook. :class:`DeliveryQueue` takes the event, returns a
``Delivery(..., ok=True, detail="queued")`` at once, and its worker thread calls the
channel's ``send`` with retries: a failed send is tried again after ``backoff_s``,
``2 × backoff_s``, ``4 × backoff_s`` … (capped at ``backoff_max_s``) up to ``attempts``
tries, then logged at ERROR and counted as failed (:meth:`DeliveryQueue.failed`).
Every try is recorded with its time and result (:meth:`DeliveryQueue.attempts`): in
memory for now, the audit log integration is later work (issue 13).

:class:`QueuedChannel` is the shared base of the smtp, webhook, mqtt and apprise
channels: it filters by the configured ``actions`` and hands the rest to the queue.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from fallwatch.gateway.channels import Action, AlertEvent, Delivery
from fallwatch.plugins import PluginConfig

_logger = logging.getLogger("fallwatch.gateway.channels")


class QueuedChannelConfig(PluginConfig):
    """Settings every queued channel has (its own config class adds ``type`` and the rest)."""

    type: str
    name: str | None = None  # shown in deliveries and logs, and what a person's contact names; default: the type
    # every event to the channel's own target (the behaviour before paging); false = only the
    # messages the pager addresses to people through this channel
    broadcast: bool = True
    locale: Literal["sv", "en"] | None = None  # broadcast messages' language; None: gateway.locale
    # the resident's name in the message (health data about a named person): only on channels the
    # municipality trusts with it; the flat and the resident id are always there
    resident_names: bool = False
    actions: list[Action] = Field(default_factory=lambda: [Action.RAISED, Action.ESCALATED], min_length=1)
    retry_attempts: int = Field(default=5, ge=1, le=50)
    retry_backoff_s: float = Field(default=1.0, gt=0, le=3600)
    retry_backoff_max_s: float = Field(default=60.0, gt=0, le=3600)
    queue_size: int = Field(default=1000, ge=1)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try to deliver one event to one recipient."""

    alert_id: str
    action: Action
    recipient: str
    attempt: int  # 1, 2, …
    at_s: float  # wall clock (time.time()) when the try ended
    ok: bool
    detail: str = ""


def backoff_delay(attempt: int, base_s: float, max_s: float) -> float:
    """Seconds to wait after failed try number ``attempt`` (1-based): base · 2^(attempt-1), capped."""
    return float(min(max_s, base_s * (2 ** (attempt - 1))))


class DeliveryQueue:
    """A bounded queue of events and the worker thread that sends them with retries."""

    def __init__(self, name: str, send: Callable[[AlertEvent], str], recipient: str, *, attempts: int = 5,
                 backoff_s: float = 1.0, backoff_max_s: float = 60.0, maxsize: int = 1000) -> None:
        self.name = name
        self.recipient = recipient
        self._send = send
        self._max_attempts = attempts
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._q: queue.Queue[AlertEvent | None] = queue.Queue(maxsize=maxsize)
        self._lock = threading.Lock()
        self._attempts: list[Attempt] = []
        self._delivered = 0
        self._failed = 0
        self._busy = 0  # events taken off the queue and not finished
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"channel-{name}", daemon=True)
        self._thread.start()

    def submit(self, event: AlertEvent) -> Delivery:
        if self._stop.is_set():
            return Delivery(self.name, self.recipient, False, "channel closed")
        try:
            self._q.put_nowait(event)
        except queue.Full:
            with self._lock:
                self._failed += 1
            _logger.error("channel %s: queue full, %s %s not sent", self.name, event.action, event.alert_id)
            return Delivery(self.name, self.recipient, False, "queue full")
        return Delivery(self.name, self.recipient, True, "queued")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                # :meth:`close` wakes this with ``None``: looking for a stop ten times a second
                # was ~1.3 ms of CPU a second per channel in an idle gateway (issue 16)
                event = self._q.get(timeout=5.0)
            except queue.Empty:
                continue
            if event is None:
                continue
            with self._lock:
                self._busy += 1
            try:
                self._deliver(event)
            finally:
                with self._lock:
                    self._busy -= 1

    def _deliver(self, event: AlertEvent) -> None:
        for n in range(1, self._max_attempts + 1):
            try:
                detail = self._send(event) or "sent"
                ok = True
            except Exception as exc:
                detail, ok = f"{type(exc).__name__}: {exc}", False
            with self._lock:
                self._attempts.append(Attempt(event.alert_id, event.action, self.recipient, n, time.time(), ok,
                                              detail))
                if ok:
                    self._delivered += 1
            if ok:
                return
            if n < self._max_attempts:
                delay = backoff_delay(n, self._backoff_s, self._backoff_max_s)
                _logger.warning("channel %s: try %d of %d for %s %s failed (%s); again in %.1f s", self.name, n,
                                self._max_attempts, event.action, event.alert_id, detail, delay)
                if self._stop.wait(delay):
                    break
        with self._lock:
            self._failed += 1
        _logger.error("channel %s: %s %s NOT DELIVERED to %s after %d tries: %s", self.name, event.action,
                      event.alert_id, self.recipient, n, detail)

    def attempts(self) -> list[Attempt]:
        with self._lock:
            return list(self._attempts)

    def delivered(self) -> int:
        """Events delivered (after however many tries)."""
        with self._lock:
            return self._delivered

    def failed(self) -> int:
        """Events given up on (all tries failed, the queue was full, or closed while retrying)."""
        with self._lock:
            return self._failed

    def pending(self) -> int:
        with self._lock:
            return self._q.qsize() + self._busy

    def close(self, drain_s: float = 2.0) -> None:
        """Give queued events up to ``drain_s`` to go out, then stop the worker."""
        deadline = time.monotonic() + drain_s
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._q.put_nowait(None)  # wakes the worker (a full queue wakes it anyway)
        self._thread.join(timeout=max(1.0, drain_s))
        left = 0
        while True:  # what was never sent (not the wake-up)
            try:
                left += self._q.get_nowait() is not None
            except queue.Empty:
                break
        if left:
            with self._lock:
                self._failed += left
            _logger.error("channel %s closed with %d event(s) not sent", self.name, left)


class QueuedChannel:
    """Base of a network channel: ``send(event)`` runs on the queue's worker, never in ``notify``."""

    name: str

    #: language and time zone of what this channel broadcasts (a paged event carries its reader's)
    locale: str = "en"
    tz: str = "UTC"

    def __init__(self, cfg: QueuedChannelConfig, recipient: str) -> None:
        self.name = cfg.name or cfg.type
        if cfg.locale is not None:
            self.locale = cfg.locale
        self.broadcast = cfg.broadcast
        self.names = cfg.resident_names
        self.actions = frozenset(cfg.actions)
        self.queue = DeliveryQueue(self.name, self.send, recipient, attempts=cfg.retry_attempts,
                                   backoff_s=cfg.retry_backoff_s, backoff_max_s=cfg.retry_backoff_max_s,
                                   maxsize=cfg.queue_size)

    def send(self, event: AlertEvent) -> str:
        """Deliver one event now to the channel's own target (on the worker thread)."""
        return self.send_to(event, "")

    def send_to(self, event: AlertEvent, address: str) -> str:
        """Deliver one event now to ``address`` ("" = the configured target); raise on failure;
        return a detail. The pager calls this on its own delivery threads."""
        raise NotImplementedError

    def notify(self, event: AlertEvent) -> list[Delivery]:
        if not self.broadcast or event.action not in self.actions:
            return []
        return [self.queue.submit(event)]

    def attempts(self) -> list[Attempt]:
        return self.queue.attempts()

    def delivered(self) -> int:
        return self.queue.delivered()

    def failed(self) -> int:
        return self.queue.failed()

    def close(self) -> None:
        self.queue.close()
