"""The outbox drain: publishes outbox rows in seq order at QoS 1 and deletes a row only
on the broker's PUBACK.

Division of labour with paho: within one process paho keeps every unacknowledged
QoS 1 publish in memory and re-sends it, in order and with the DUP flag, after a
reconnect; across processes (crash, SIGKILL, power loss) the SQLite outbox does, since
a new publisher starts from the oldest row still on disk. Each row is therefore handed
to paho once per process, and at most ``window`` rows are in paho's memory at a time so
a long outage costs disk, not RAM.

A publish the broker refuses (an MQTT 5 PUBACK with a failure reason code, e.g. "not
authorized" from an ACL gap) is never the end of an alert: only telemetry
(:data:`~fallwatch.edge.outbox.THINNABLE`) is given up, moved aside and counted; any other
row stays in the outbox and is re-published with backoff (1 s doubling to
:data:`REFUSED_RETRY_MAX_S`), and :meth:`Publisher.refusals` says so in every health
heartbeat until the broker takes it. The backoff holds across reconnects on purpose:
Mosquitto 2.0 closes the connection after a refused QoS 1 publish, so retrying at every
reconnect would keep the link down for everything else (health included).

Reconnects use paho's exponential backoff (up to 30 s) starting from a random 0.5-2 s
after each outage, so a site's hubs do not reconnect in lock-step after a broker restart.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from fallwatch.config import MqttConfig
from fallwatch.edge.outbox import THINNABLE, Outbox
from fallwatch.mqtt import Will, connect, make_client, publish_properties

log = logging.getLogger(__name__)
_MISSING = object()

#: An alert (any row but telemetry) in flight this long without a PUBACK is reported in
#: health: Mosquitto may close the socket on a refusal before its PUBACK leaves, and paho's
#: re-send on reconnect can meet the same fate, so the delay must be visible, not silent.
UNACKED_WARN_S = 10.0
#: Longest wait between two re-publishes of a row the broker refused.
REFUSED_RETRY_MAX_S = 15.0
#: MQTT 5 PUBACK reason code: the broker accepted the message but no client was subscribed
NO_MATCHING_SUBSCRIBERS = 0x10


class Publisher:
    """Drains an :class:`Outbox` to the broker on a background thread."""

    def __init__(
        self,
        cfg: MqttConfig,
        outbox: Outbox,
        client_id: str,
        *,
        will: Will | None = None,
        window: int = 256,
        on_connect: Callable[[mqtt.Client], None] | None = None,
        on_message: Callable[[mqtt.MQTTMessage], None] | None = None,
        jitter_s: float = 0.0,
    ) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self.window = window
        self.client = make_client(cfg, client_id, will=will)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self._user_on_connect = on_connect
        self._user_on_message = on_message
        self._jitter_s = jitter_s
        self._lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # mid -> seq
        #: highest seq handed to paho in this process, per lane: alerts (and state, health,
        #: risk, replies) never queue behind a telemetry backlog; order holds within a lane
        self._sent_upto = {"prio": 0, "bulk": 0}
        self.prio_extra = 64  # in-flight slots only the priority lane may use
        self.client.max_inflight_messages_set(window + self.prio_extra)  # paho must not queue on its own
        self._acked: list[int] = []
        self._early: dict[int, Any] = {}  # mid -> reason code of PUBACKs seen before the mid was mapped
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()
        self.published = 0
        self.acked = 0
        self.connects = 0
        self.disconnects = 0
        self.rejected = 0
        #: broker refusals of rows that are kept and retried (alerts, state, health, ...)
        self.refused = 0
        #: re-publishes of refused rows (Mosquitto may close the socket before its PUBACK arrives)
        self.refused_retries = 0
        #: seq -> (kind, attempts, next retry (monotonic), last reason) of refused rows held back
        self._refused: dict[int, tuple[str, int, float, str]] = {}
        #: seq -> (kind, monotonic time first handed to paho) of rows (not telemetry) not yet PUBACKed
        self._unacked: dict[int, tuple[str, float]] = {}
        #: seq -> monotonic time its PUBACK arrived (only while ``track_acks`` is set; benchmarks)
        self.track_acks = False
        self.ack_times: dict[int, float] = {}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._jitter_s:
            time.sleep(random.uniform(0, self._jitter_s))
        connect(self.client, self.cfg)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, name="edge-publisher", daemon=True)
        self._thread.start()

    def stop(self, final: tuple[str, bytes, bool] | None = None, timeout_s: float = 5.0) -> None:
        """Stop draining; optionally publish one last message (the 'offline' state) and wait for it."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if final is not None and self.connected.is_set():
            topic, payload, retain = final
            info = self.client.publish(
                topic, payload, qos=1, retain=retain, properties=publish_properties(self.cfg)
            )
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout_s)
        self.client.disconnect()
        self.client.loop_stop()
        self._flush_acks()

    def kick(self) -> None:
        """New rows are in the outbox: drain now rather than at the next poll."""
        self._wake.set()

    # ------------------------------------------------------------------ paho callbacks (network thread)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if getattr(reason_code, "is_failure", False):
            log.warning("broker refused connection: %s", reason_code)
            return
        self.connects += 1
        self.connected.set()
        if self._user_on_connect is not None:
            self._user_on_connect(client)
        self._wake.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if self.connected.is_set():
            self.disconnects += 1
            log.info("disconnected from broker: %s", reason_code)
            # jitter: paho's backoff doubles from min_delay; a random start per outage keeps a
            # site's hubs from reconnecting in lock-step after a broker restart
            client.reconnect_delay_set(min_delay=random.uniform(0.5, 2.0), max_delay=30)  # type: ignore[arg-type]  # paho annotates int; a float jitters the reconnect of many hubs
        self.connected.clear()
        with self._lock:  # a retry cut off by the disconnect is tried again after its backoff
            now = time.monotonic()
            self._refused = {s: (k, n, min(at, now + min(REFUSED_RETRY_MAX_S, 2.0 ** (n - 1))), r)
                             for s, (k, n, at, r) in self._refused.items()}

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        with self._lock:
            seq = self._inflight.pop(mid, None)
            if seq is None:
                # PUBACK raced ahead of the mid being mapped (or the final 'offline' state)
                self._early[mid] = reason_code
                return
        self._settle(seq, reason_code)

    def _settle(self, seq: int, reason_code: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            self._refuse(seq, str(reason_code))
        elif getattr(reason_code, "value", 0) == NO_MATCHING_SUBSCRIBERS and not self._retained(seq):
            self._refuse(seq, str(reason_code), keep=True)
        else:
            with self._lock:
                self._refused.pop(seq, None)
                self._unacked.pop(seq, None)
                self._acked.append(seq)
                if self.track_acks:
                    self.ack_times[seq] = time.monotonic()
        self._wake.set()

    def _retained(self, seq: int) -> bool:
        """A retained row (the birth state) is kept by the broker for later subscribers, so
        "No matching subscribers" is no loss for it."""
        row = self.outbox.row(seq)
        return row is not None and row.retain

    def _refuse(self, seq: int, reason: str, keep: bool = False) -> None:
        """The broker refused a row: telemetry is given up (counted), anything else kept and retried.

        ``keep``: the broker took the row but nobody was subscribed (MQTT 5 PUBACK "No matching
        subscribers"), so it went nowhere: kept and retried whatever its kind. Mosquitto does
        not restore shared subscriptions from persistence, so after a broker restart every
        message until the gateways re-subscribe is answered so and dropped (found by
        ``fallwatch chaos``; docs/chaos.md)."""
        row = self.outbox.row(seq)
        if row is None:
            return
        if row.kind in THINNABLE and not keep:
            log.error("broker refused %s seq %d: %s; given up (counted)", row.kind, seq, reason)
            self.outbox.reject(seq, reason)
            self.rejected += 1
            return
        with self._lock:
            _, attempts, _, _ = self._refused.get(seq, (row.kind, 0, 0.0, reason))
            attempts += 1
            delay = min(REFUSED_RETRY_MAX_S, 2.0 ** (attempts - 1))
            self._refused[seq] = (row.kind, attempts, time.monotonic() + delay, reason)
            self.refused += 1
        log.error("broker refused %s seq %d (%s, attempt %d); kept, retrying in %.0f s",
                  row.kind, seq, reason, attempts, delay)

    def refusals(self) -> list[str]:
        """One line per row the broker refused and that is still held back (health warnings)."""
        now = time.monotonic()
        with self._lock:
            held = sorted(self._refused.items())
            waiting = sorted((s, k, now - t) for s, (k, t) in self._unacked.items()
                             if s not in self._refused and now - t >= UNACKED_WARN_S)
        return [f"{kind} seq {seq} refused by the broker ({reason}), retrying (attempt {n})"
                for seq, (kind, n, _, reason) in held] + [
                f"{kind} seq {seq} not acknowledged by the broker for {age:.0f} s, kept and sent again"
                for seq, kind, age in waiting]

    @property
    def refused_pending(self) -> int:
        with self._lock:
            return len(self._refused)

    def _retry_refused(self, props: Any) -> None:
        """Re-publish refused rows whose backoff has run out (they keep their seq and msg_id)."""
        now = time.monotonic()
        with self._lock:
            due = [s for s, (k, n, at, r) in self._refused.items() if at <= now]
            for s in due:  # not again until it is refused again (or the connection is new)
                k, n, _, r = self._refused[s]
                self._refused[s] = (k, n, float("inf"), r)
        for seq in due:
            row = self.outbox.row(seq)
            if row is None:
                with self._lock:
                    self._refused.pop(seq, None)
                continue
            info = self.client.publish(row.topic, row.payload, qos=row.qos, retain=row.retain, properties=props)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                with self._lock:
                    k, n, _, r = self._refused[seq]
                    self._refused[seq] = (k, n, now + 1.0, r)
                continue
            with self._lock:
                early = self._early.pop(info.mid, _MISSING)
                if early is _MISSING:
                    self._inflight[info.mid] = seq
            if early is not _MISSING:
                self._settle(seq, early)
            self.published += 1
            self.refused_retries += 1

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self._user_on_message is not None:
            try:
                self._user_on_message(msg)
            except Exception:  # one bad downlink never stops the network loop
                log.exception("downlink handler failed for %s", msg.topic)

    # ------------------------------------------------------------------ drain loop

    def _flush_acks(self) -> None:
        with self._lock:
            acked, self._acked = self._acked, []
        if acked:
            self.acked += self.outbox.ack(acked)

    def _run(self) -> None:
        props = publish_properties(self.cfg)
        while not self._stop.is_set():
            self._wake.wait(0.2)
            self._wake.clear()
            self._flush_acks()
            if self._refused:
                self._retry_refused(props)
            full = False
            for lane in ("prio", "bulk"):
                with self._lock:
                    room = self.window - len(self._inflight) + (self.prio_extra if lane == "prio" else 0)
                if room <= 0:
                    continue
                rows = self.outbox.peek(self._sent_upto[lane], room, lane=lane)
                self._send(rows, lane, props)
                full = full or len(rows) == room
            if full:
                self._wake.set()

    def _send(self, rows: list[Any], lane: str, props: Any) -> None:
        for row in rows:
            # not under self._lock: paho calls on_publish holding its own mutex (lock order)
            info = self.client.publish(
                row.topic, row.payload, qos=row.qos, retain=row.retain, properties=props
            )
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                log.warning("publish of seq %d failed locally: %s; will retry", row.seq, info.rc)
                break
            with self._lock:
                early = self._early.pop(info.mid, _MISSING)
                if early is _MISSING:
                    self._inflight[info.mid] = row.seq
                if row.kind not in THINNABLE:
                    self._unacked.setdefault(row.seq, (row.kind, time.monotonic()))
            if early is not _MISSING:
                self._settle(row.seq, early)
            self._sent_upto[lane] = row.seq
            self.published += 1

    def inflight(self) -> int:
        with self._lock:
            return len(self._inflight)
