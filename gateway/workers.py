"""The gateway's worker threads: started by name, kept alive through bugs, joined on stop.

A worker that raises is logged and restarted after a second instead of dying, so one bug
never stops ingest; ``/healthz`` reports any thread that is dead, crash-looping or stuck.

:func:`run_batch` is the per-batch counterpart, and it tells two kinds of failure apart
(EN 50134 practice: a message may be delayed, never dropped, and every delay is visible):

* a **transient** error (the state DB or the series store unreachable, a lock, a timeout)
  is retried, same batch, with backoff, for as long as it lasts; after a few failures the
  worker is reported *stuck* in ``/healthz`` and ``/readyz`` until the batch goes through;
* any **other** error (a value the database refuses, a bug) will not go away by waiting:
  after :data:`ATTEMPTS` tries the batch is split in halves to find the message that
  fails, that one message goes to ``poison`` (dead-lettered, counted, acknowledged) and the
  rest is stored. Before this, one such message made a worker retry it for ever while
  everything behind it waited and ``/healthz`` said OK.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("fallwatch.gateway")

T = TypeVar("T")

#: tries of a batch that fails with a non-transient error before it is split
ATTEMPTS = 3
#: transient failures of one batch before the worker is reported stuck
STUCK_AFTER = 3
#: crashes within :data:`CRASH_WINDOW_S` that make a worker "crash-looping"
CRASH_LOOP = 3
CRASH_WINDOW_S = 60.0

#: DB-API / stdlib exception class names that mean "try again later", whichever driver raised it
_TRANSIENT = frozenset({"OperationalError", "InterfaceError", "ConnectionError", "TimeoutError", "OSError"})


def is_transient(exc: BaseException) -> bool:
    """Whether waiting can make this error go away (an outage), as opposed to a poison message."""
    retryable = getattr(exc, "retryable", None)
    if isinstance(retryable, bool):  # SinkError says so itself
        return retryable
    return any(k.__name__ in _TRANSIENT for k in type(exc).__mro__)


class Workers:
    """The named daemon threads of one gateway, sharing one stop event, and their health."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stuck: dict[str, str] = {}
        self._crashes: dict[str, list[tuple[float, str]]] = {}

    def start(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=self._guard(name, target), name=f"gw-{name}", daemon=True)
        t.start()
        self.threads.append(t)

    def _guard(self, name: str, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            while not self.stop.is_set():
                try:
                    target()
                    return
                except Exception as exc:
                    log.exception("worker %s crashed; restarting it in 1 s", name)
                    with self._lock:
                        self._crashes.setdefault(name, []).append((time.monotonic(), f"{type(exc).__name__}: {exc}"))
                    self.stop.wait(1.0)

        return run

    def report_stuck(self, name: str, problem: str | None) -> None:
        """Set (or clear, with None) why worker ``name`` is not getting anywhere."""
        with self._lock:
            if problem is None:
                self._stuck.pop(name, None)
            else:
                self._stuck[name] = problem

    def dead(self) -> list[str]:
        """Names of started workers that are no longer running."""
        return [t.name for t in self.threads if not t.is_alive()]

    def problems(self) -> dict[str, str]:
        """Workers that are alive but stuck on one batch or crash-looping, and why."""
        now = time.monotonic()
        with self._lock:
            out = {f"gw-{k}": f"stuck: {v}" for k, v in self._stuck.items()}
            for name, crashes in self._crashes.items():
                recent = [c for c in crashes if now - c[0] < CRASH_WINDOW_S]
                self._crashes[name] = recent
                if len(recent) >= CRASH_LOOP:
                    out[f"gw-{name}"] = f"crash-looping: {len(recent)} crashes in {CRASH_WINDOW_S:.0f} s, " \
                                        f"last {recent[-1][1][:200]}"
        return out

    def join(self, timeout_s: float = 30.0) -> None:
        for t in self.threads:
            t.join(timeout=timeout_s)


def run_batch(stop: threading.Event, workers: Workers, name: str, process: Callable[[list[T]], None],
              items: list[T], poison: Callable[[T, Exception], None]) -> None:
    """Run ``process(items)`` to completion (see the module doc): transient errors are retried
    until they pass (reported stuck meanwhile); others are retried :data:`ATTEMPTS` times, then
    the batch is split until the one failing item is found and handed to ``poison``."""
    delay = 0.5
    transient = failures = 0
    while True:
        try:
            process(items)
            if transient >= STUCK_AFTER:
                log.warning("worker %s going again after %d failed tries", name, transient)
            if transient:
                workers.report_stuck(name, None)
            return
        except Exception as exc:
            if is_transient(exc):
                transient += 1
                log.warning("worker %s: %d messages wait for a transient error (%s: %s); retry %d in %.1f s",
                            name, len(items), type(exc).__name__, exc, transient, delay)
                if transient >= STUCK_AFTER:
                    workers.report_stuck(name, f"{len(items)} messages waiting since {transient} tries: "
                                               f"{type(exc).__name__}: {str(exc)[:200]}")
                if stop.wait(delay):
                    return
                delay = min(delay * 2, 10.0)
                continue
            failures += 1
            log.exception("worker %s: %d messages failed (%d/%d)", name, len(items), failures, ATTEMPTS)
            if failures < ATTEMPTS:
                if stop.wait(0.1 * failures):
                    return
                continue
            if transient:
                workers.report_stuck(name, None)
            if len(items) == 1:
                poison(items[0], exc)
                return
            mid = len(items) // 2
            run_batch(stop, workers, name, process, items[:mid], poison)
            run_batch(stop, workers, name, process, items[mid:], poison)
            return
