"""The gateway's worker threads: started by name, kept alive through bugs, joined on stop.

A worker that raises is logged and restarted after a second instead of dying, so one bug
never stops ingest; ``/healthz`` reports any thread that is nevertheless dead.
:func:`retrying` is the per-batch counterpart: an unexpected error while handling a batch
(state DB locked, a bug) is logged and the *same* batch retried, so its messages are
neither lost nor left unacknowledged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVarTuple

log = logging.getLogger("fallwatch.gateway")

Ts = TypeVarTuple("Ts")


class Workers:
    """The named daemon threads of one gateway, sharing one stop event."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.threads: list[threading.Thread] = []

    def start(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=self._guard(target), name=f"gw-{name}", daemon=True)
        t.start()
        self.threads.append(t)

    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            while not self.stop.is_set():
                try:
                    target()
                    return
                except Exception:
                    log.exception("worker %s crashed; restarting it in 1 s", target.__name__)
                    self.stop.wait(1.0)

        return run

    def dead(self) -> list[str]:
        """Names of started workers that are no longer running."""
        return [t.name for t in self.threads if not t.is_alive()]

    def join(self, timeout_s: float = 30.0) -> None:
        for t in self.threads:
            t.join(timeout=timeout_s)


def retrying(stop: threading.Event, fn: Callable[[*Ts], None], *args: *Ts) -> None:
    """Run one batch to completion: an unexpected error is logged and the same batch retried
    (with backoff up to 10 s) until it succeeds or the gateway stops."""
    delay = 0.5
    while True:
        try:
            fn(*args)
            return
        except Exception:
            log.exception("%s failed; retrying the same messages in %.1f s", getattr(fn, "__name__", fn), delay)
            if stop.wait(delay):
                return
            delay = min(delay * 2, 10.0)
