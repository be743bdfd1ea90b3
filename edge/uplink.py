"""The uplink stage: the durable outbox and the publisher that drains it.

Every stage hands its messages to :meth:`Uplink.send`; when it returns they are on disk
(one fsynced transaction) and the publisher has been woken. Rows leave the outbox only on
the broker's PUBACK (see :mod:`fallwatch.edge.publisher`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import paho.mqtt.client as mqtt

from fallwatch.config import FallwatchConfig
from fallwatch.edge.messages import Messages
from fallwatch.edge.outbox import Outbox, Pending
from fallwatch.edge.publisher import Publisher
from fallwatch.mqtt import Will


class Uplink:
    """Outbox + publisher of one hub; ``outbox`` and ``publisher`` are None until started."""

    def __init__(self, cfg: FallwatchConfig, messages: Messages) -> None:
        self.cfg = cfg
        self.messages = messages
        self.outbox: Outbox | None = None
        self.publisher: Publisher | None = None

    def open(self) -> Outbox:
        """Open the outbox (a new boot: ``boot_id`` goes up and is stamped on every envelope)."""
        self.outbox = Outbox(self.cfg.edge.outbox_path)
        self.messages.boot_id = self.outbox.boot_id
        self.messages.install_id = self.outbox.install_id
        return self.outbox

    def connect(
        self,
        will: Will,
        on_connect: Callable[[mqtt.Client], None],
        on_message: Callable[[mqtt.MQTTMessage], None],
    ) -> None:
        """Start the publisher (connect with the last will; drain on its own thread)."""
        assert self.outbox is not None, "open() first"
        e = self.cfg.edge
        self.publisher = Publisher(
            self.cfg.mqtt,
            self.outbox,
            client_id=f"edge-{e.site_id}-{e.device_id}",
            will=will,
            on_connect=on_connect,
            on_message=on_message,
        )
        self.publisher.start()

    @property
    def is_open(self) -> bool:
        return self.outbox is not None

    def send(self, items: list[Pending], done_pending: list[str] | None = None) -> list[int]:
        """Persist ``items`` in order (one transaction, which also deletes the ``done_pending``
        decisions), wake the publisher; returns their seqs."""
        if not items and not done_pending:
            return []
        if self.outbox is None:
            if not items:
                return []
            raise RuntimeError("EdgeAgent.start() first")
        seqs = self.outbox.append_many(items, done_pending or ())
        if self.publisher is not None:
            self.publisher.kick()
        return seqs

    def save_pending(self, key: str, body: str, due_ms: int) -> bool:
        """Persist a pending decision; False when there is no outbox to keep it in (not started)."""
        if self.outbox is None:
            return False
        self.outbox.save_pending(key, body, due_ms)
        return True

    def pending_decisions(self) -> list[tuple[str, str, int]]:
        return self.outbox.pending_decisions() if self.outbox is not None else []

    def depth(self) -> int:
        return self.outbox.depth() if self.outbox is not None else 0

    def thin(self, max_rows: int) -> int:
        """Backpressure: drop telemetry spread over the backlog beyond ``max_rows`` (see Outbox.thin)."""
        return self.outbox.thin(max_rows) if self.outbox is not None else 0

    def flush(self, timeout_s: float) -> bool:
        """Wait until every outbox row is acknowledged by the broker."""
        assert self.outbox is not None and self.publisher is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.publisher.kick()
            if self.outbox.depth() == 0:
                return True
            time.sleep(0.02)
        return self.outbox.depth() == 0

    def warnings(self) -> list[str]:
        """What the uplink must tell in the next heartbeat (rows the broker refused, retried)."""
        return self.publisher.refusals() if self.publisher is not None else []

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.stop()
        if self.outbox is not None:
            self.outbox.close()

    def stats(self, started: bool) -> dict[str, int | float]:
        out: dict[str, int | float] = {}
        if self.outbox is not None and started:
            out["outbox_depth"] = self.outbox.depth()
            out["next_seq"] = self.outbox.next_seq
            out["outbox_thinned"] = self.outbox.thinned
        if self.publisher is not None:
            p = self.publisher
            out.update(published=p.published, acked=p.acked, connects=p.connects,
                       disconnects=p.disconnects, rejected=p.rejected, refused=p.refused,
                       refused_pending=p.refused_pending, refused_retries=p.refused_retries)
        return out
