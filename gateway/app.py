"""The gateway: MQTT in, validated and de-duplicated, durably stored, then acknowledged.

Threads, one stop event, wired top to bottom in :meth:`Gateway.start`:

* paho's network thread only enqueues (fall alerts on their own queue, everything
  else on the bulk queue) and remembers the packet id for the ack;
* the **alert worker** stores each fall alert on its own (series point + state DB
  lifecycle + a log line for staff) so an alert never waits behind a telemetry batch;
* the **bulk writer** drains its queue in natural micro-batches: decode strictly,
  drop duplicates by ``msg_id`` (state DB), write one batch to the series store — or to
  the disk spool when the store is down — then mark the keys seen and ack;
* the **drainer** empties the spool into the store, oldest first, when it is back;
* the **supervisor** raises "device offline" (silence > ``offline_after_s``) and "test
  alarm overdue" (> ``test_alarm_max_age_h``) alerts and prunes old idempotency keys.

A QoS 1 message is acknowledged only after what it carries is durable (written to the
store or to the spool); rejected messages are acknowledged after they were counted and
dead-lettered, duplicates straight away. Nothing is acknowledged out of arrival order.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fallwatch.config import FallwatchConfig
from fallwatch.gateway.acks import AckEntry, AckTracker
from fallwatch.gateway.metrics import Counters, Metrics
from fallwatch.gateway.points import SeriesPoint, to_points
from fallwatch.gateway.sinks import SeriesSink, SinkError, make_sink
from fallwatch.gateway.spool import Spool
from fallwatch.gateway.state import DeviceUpdate, StateStore
from fallwatch.mqtt import Will, is_v5, make_client
from fallwatch.protocol import contract, topics

log = logging.getLogger("fallwatch.gateway")
staff_log = logging.getLogger("fallwatch.gateway.alerts")

#: (topic, payload, ack entry or None, receive time ns, retained)
Item = tuple[str, bytes, AckEntry | None, int, bool]

_dlq_encoder = msgspec.json.Encoder()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Gateway:
    def __init__(self, cfg: FallwatchConfig) -> None:
        self.cfg = cfg
        g = cfg.gateway
        self.gateway_id = g.gateway_id
        self.state = StateStore(g.state_db)
        self.spool = Spool(g.spool_dir, int(g.spool_max_mb * 1024 * 1024))
        self.counters = Counters()
        self.metrics = Metrics(self.counters, self._gauges)
        self._stop = threading.Event()
        self._bulk_q: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._alert_q: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._sinks: list[SeriesSink] = []
        self._store_ready = False
        self._closing = False
        self._last_rx = 0.0
        self._in_progress = 0
        self._offline_open: set[tuple[str, str]] = set()
        self._test_open: set[tuple[str, str]] = set()
        self.http: Any = None
        #: optional ``probe(path, e2e_ms)`` called per stored message with now - envelope ``sent_ms``
        #: (benchmarks measure end-to-end latency with it; None costs nothing)
        self.latency_probe: Callable[[str, float], None] | None = None
        prefix = f"$share/{g.shared_group}/" if g.shared_group else ""
        base_id = cfg.mqtt.client_id or g.gateway_id
        # two connections: fall alerts get their own TCP stream, session and paho thread, so
        # they are never parsed behind a burst of telemetry queued on the same socket
        self.bulk_link = _Link(
            self,
            "bulk",
            base_id,
            [prefix + f for f in BULK_FILTERS],
            self._bulk_q,
            receive_max=min(65535, max(100, 20 * g.batch_max)),
        )
        self.alert_link = _Link(
            self, "alerts", f"{base_id}-alerts", [prefix + f for f in ALERT_FILTERS], self._alert_q, receive_max=100
        )
        self.links = (self.alert_link, self.bulk_link)
        self.client = self.bulk_link.client  # publishes dead letters

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Open state and spool, start workers and the HTTP endpoints, then connect."""
        self.state.setup()
        self._load_open_alerts()
        self._start_thread("alerts", self._alert_loop)
        self._start_thread("bulk", self._bulk_loop)
        self._start_thread("drain", self._drain_loop)
        self._start_thread("supervisor", self._supervise_loop)
        self._start_http()
        for link in self.links:
            link.start()
        log.info(
            "gateway %s started: store %s, state %s, spool %s",
            self.gateway_id,
            self._new_sink().name,
            "postgresql" if self.state.postgres else self.state.dsn,
            self.spool.path,
        )

    def stop(self) -> None:
        """Disconnect first (no new messages), let the workers finish what they hold, close."""
        self._closing = True
        for link in self.links:
            link.stop()
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        if self.http is not None:
            self.http.close()
        for s in self._sinks:
            s.close()
        self.spool.close()
        self.state.close()
        log.info("gateway %s stopped", self.gateway_id)

    def _start_thread(self, name: str, target: Any) -> None:
        t = threading.Thread(target=self._guard(target), name=f"gw-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def _guard(self, target: Any) -> Any:
        """Keep a worker alive through an unexpected error (logged), so one bug never stops ingest."""

        def run() -> None:
            while not self._stop.is_set():
                try:
                    target()
                    return
                except Exception:
                    log.exception("worker %s crashed; restarting it in 1 s", target.__name__)
                    self._stop.wait(1.0)

        return run

    def _start_http(self) -> None:
        from fallwatch.gateway.http import HttpServer

        g = self.cfg.gateway
        self.http = HttpServer(self, g.http_host, g.http_port)
        self.http.start()

    @property
    def http_url(self) -> str | None:
        return self.http.url if self.http is not None else None

    def _new_sink(self) -> SeriesSink:
        sink = make_sink(self.cfg.influx)
        self._sinks.append(sink)
        return sink

    @property
    def connected(self) -> bool:
        return all(link.connected for link in self.links)

    def _received(self, item: Item) -> None:
        self._last_rx = time.monotonic()
        with self.counters.lock:
            self.counters.received += 1
            self._in_progress += 1

    # ------------------------------------------------------------------ decode / reject
    def _decode(self, items: list[Item]) -> list[tuple[contract.Message, Item, list[SeriesPoint]]]:
        """Strict decode + conversion to points; anything that fails is rejected, never raised."""
        good: list[tuple[contract.Message, Item, list[SeriesPoint]]] = []
        for item in items:
            topic, payload = item[0], item[1]
            try:
                msg = contract.decode(topic, payload)
                good.append((msg, item, to_points(msg, item[3] // 1_000_000)))
            except contract.ContractError as exc:
                self._reject(exc.reason, exc.detail, topic, payload)
            except Exception as exc:
                self._reject("internal", f"{type(exc).__name__}: {exc}", topic, payload)
        return good

    def _reject(self, reason: str, detail: str, topic: str, payload: bytes) -> None:
        self.counters.reject(reason)
        log.warning("rejected message on %r: %s: %s", topic[:200], reason, detail[:300])
        body = _dlq_encoder.encode(
            {
                "reason": reason,
                "detail": detail[:1000],
                "topic": topic[:1000],
                "gateway_id": self.gateway_id,
                "received_ms": _now_ms(),
                "payload_b64": base64.b64encode(payload[: contract.MAX_PAYLOAD_BYTES]).decode(),
            }
        )
        try:
            self.client.publish(topics.dead_letter(reason), body, qos=1)
            self.counters.add(dead_lettered=1)
        except Exception:
            log.exception("could not publish dead letter")

    # ------------------------------------------------------------------ storing
    def _store(self, points: list[SeriesPoint], sink: SeriesSink, path: str) -> bool:
        """Make points durable: the store if it takes them, else the disk spool.

        Returns False only when stopping with a full spool; the caller then leaves the
        messages unacknowledged so the broker delivers them again.
        """
        if not points:
            return True
        while self.spool.full:
            if self._stop.wait(0.2):
                return False
        if self.spool.depth == 0 and self._store_ready:
            t0 = time.perf_counter()
            try:
                sink.write(points)
            except SinkError as exc:
                if not exc.retryable:
                    self._refused(points, exc)
                    return True
                log.warning("series store unavailable (%s); spooling to disk", exc)
                self._store_ready = False
            else:
                self.metrics.write_latency.labels(path).observe(time.perf_counter() - t0)
                self.counters.add(points_written=len(points))
                return True
        self.spool.append(points)
        self.counters.add(points_spooled=len(points))
        return True

    def _refused(self, points: list[SeriesPoint], exc: SinkError) -> None:
        self.counters.add(points_refused=len(points))
        self.counters.reject("store_refused")
        log.error("series store refused %d points for good (%s); first: %s", len(points), exc, points[0][:2])

    def _finish(self, items: list[Item]) -> None:
        with self.counters.lock:
            self._in_progress -= len(items)
        trackers: dict[int, tuple[AckTracker, list[AckEntry]]] = {}
        for i in items:
            e = i[2]
            if e is not None:
                trackers.setdefault(id(e.owner), (e.owner, []))[1].append(e)
        for tracker, entries in trackers.values():
            tracker.done(entries)

    def _retrying(self, fn: Any, *args: Any) -> None:
        """Run one batch to completion: an unexpected error (state DB locked, a bug) is logged
        and the same batch retried, so its messages are neither lost nor left unacknowledged."""
        delay = 0.5
        while True:
            try:
                fn(*args)
                return
            except Exception:
                log.exception("%s failed; retrying the same messages in %.1f s", fn.__name__, delay)
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, 10.0)

    # ------------------------------------------------------------------ bulk path
    def _collect(self, q: queue.SimpleQueue[Item], first_wait_s: float) -> list[Item]:
        try:
            batch = [q.get(timeout=first_wait_s)]
        except queue.Empty:
            return []
        # Natural batching: take whatever queued up while the previous batch was written. An
        # optional linger (batch_max_delay_ms) waits for more; measured, it cost both latency
        # and throughput here, so the default is 0.
        limit = self.cfg.gateway.batch_max
        linger_until = time.monotonic() + self.cfg.gateway.batch_max_delay_ms / 1000.0
        while len(batch) < limit:
            try:
                batch.append(q.get_nowait())
            except queue.Empty:
                left = linger_until - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    break
                try:
                    batch.append(q.get(timeout=left))
                except queue.Empty:
                    break
        return batch

    def _bulk_loop(self) -> None:
        sink = self._new_sink()
        while True:
            batch = self._collect(self._bulk_q, 0.2)
            if not batch:
                if self._stop.is_set():
                    return
                continue
            self._retrying(self._process_bulk, batch, sink)

    def _process_bulk(self, batch: list[Item], sink: SeriesSink) -> None:
        good = self._decode(batch)
        candidates = list(dict.fromkeys(m.msg_id for m, _, _ in good))
        new = self.state.filter_new(candidates)
        points: list[SeriesPoint] = []
        new_ids: list[str] = []
        devices: dict[tuple[str, str], DeviceUpdate] = {}
        dups = tele = 0
        for msg, item, pts in good:
            if msg.msg_id not in new:
                dups += 1
                continue
            new.discard(msg.msg_id)
            new_ids.append(msg.msg_id)
            recv_ms = item[3] // 1_000_000
            if isinstance(msg, contract.Telemetry):
                tele += len(pts)
            points.extend(pts)
            upd = _device_update(msg, msg.ts_ms if item[4] else recv_ms)
            key = (msg.site_id, msg.device_id)
            if key in devices:
                devices[key].merge(upd)
            else:
                devices[key] = upd
        if not self._store(points, sink, "bulk"):
            return  # stopping with a full spool: leave unacknowledged, the broker re-sends
        self.state.commit_batch(new_ids, _now_ms(), list(devices.values()))
        done_ns = time.time_ns()
        hist = self.metrics.ingest_latency.labels("bulk")
        for _, item, _ in good:
            hist.observe((done_ns - item[3]) / 1e9)
        if self.latency_probe is not None:
            done_ms = done_ns / 1e6
            for msg, _, _ in good:
                self.latency_probe("bulk", done_ms - msg.sent_ms)
        self.counters.add(stored=len(new_ids), duplicates=dups, telemetry_points=tele, batches=1)
        self._finish(batch)

    # ------------------------------------------------------------------ alert path
    def _alert_loop(self) -> None:
        sink = self._new_sink()
        while True:
            try:
                item = self._alert_q.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            self._retrying(self._process_alert, item, sink)

    def _process_alert(self, item: Item, sink: SeriesSink) -> None:
        for msg, _, points in self._decode([item]):
            assert isinstance(msg, contract.FallAlert)  # the topic check guarantees it
            if not self.state.filter_new([msg.msg_id]):
                self.counters.add(duplicates=1)
                continue
            recv_ms = item[3] // 1_000_000
            if not self._store(points, sink, "alert"):
                return
            new, alert_id = self.state.record_fall(msg, recv_ms, _device_update(msg, recv_ms))
            done_ns = time.time_ns()
            self.metrics.ingest_latency.labels("alert").observe((done_ns - item[3]) / 1e9)
            if self.latency_probe is not None:
                self.latency_probe("alert", done_ns / 1e6 - msg.sent_ms)
            self.counters.add(stored=1, fall_alerts=1)
            d = msg.data
            if new and d.status == "alert":
                staff_log.warning(
                    "FALL ALERT %s: site %s hub %s resident %s sensor %s room %s, confidence %.2f, "
                    "peak %.1f g, lying %.0f s (reasons: %s)",
                    alert_id,
                    msg.site_id,
                    msg.device_id,
                    msg.resident_id or "?",
                    d.sensor or "?",
                    d.room or "?",
                    d.confidence,
                    d.peak_g,
                    d.lying_s,
                    ",".join(r.code for r in d.reasons) or "-",
                )
            elif new:
                staff_log.info(
                    "pre-alarm cancelled by the wearer %s: site %s hub %s resident %s",
                    alert_id,
                    msg.site_id,
                    msg.device_id,
                    msg.resident_id or "?",
                )
        self._finish([item])

    # ------------------------------------------------------------------ spool drainer
    def _drain_loop(self) -> None:
        sink = self._new_sink()
        backoff = 0.5
        while not self._stop.is_set():
            if not self._store_ready:
                try:
                    sink.setup()
                except SinkError as exc:
                    log.warning("series store not ready (%s); retrying in %.1f s", exc, backoff)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                if self.spool.depth == 0:
                    self._store_ready = True
                    backoff = 0.5
            if self.spool.depth == 0:
                self._store_ready = True
                self._stop.wait(0.05)
                continue
            failed = False
            for batch_id, points in self.spool.oldest(8):
                t0 = time.perf_counter()
                try:
                    sink.write(points)
                except SinkError as exc:
                    if exc.retryable:
                        failed = True
                        log.warning(
                            "spool drain: store still unavailable (%s); %d points waiting",
                            exc,
                            self.spool.depth,
                        )
                        break
                    self._refused(points, exc)
                else:
                    self.metrics.write_latency.labels("drain").observe(time.perf_counter() - t0)
                    self.counters.add(points_drained=len(points))
                self.spool.remove([batch_id])
            if failed:
                self._store_ready = False
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            else:
                backoff = 0.5
                if self.spool.depth == 0:
                    log.info("spool drained; writing directly again")

    # ------------------------------------------------------------------ supervision
    def _load_open_alerts(self) -> None:
        for a in self.state.alerts(kind="device_offline"):
            if a["status"] in ("raised", "acknowledged"):
                self._offline_open.add((a["site_id"], a["device_id"]))
        for a in self.state.alerts(kind="test_overdue"):
            if a["status"] in ("raised", "acknowledged"):
                self._test_open.add((a["site_id"], a["device_id"]))

    def _supervise_loop(self) -> None:
        g = self.cfg.gateway
        period = min(5.0, max(0.2, g.offline_after_s / 10))
        last_prune = 0.0
        while not self._stop.wait(period):
            self.check_devices(_now_ms())
            self.check_escalations(_now_ms())
            if time.monotonic() - last_prune > 3600:
                last_prune = time.monotonic()
                self.state.prune_seen(_now_ms() - self.cfg.mqtt.session_expiry_s * 1000 * 2)

    def check_escalations(self, now_ms: int) -> list[dict[str, Any]]:
        """Re-announce fall alerts nobody acknowledged within ``escalate_after_s``, and again
        every ``escalate_after_s`` until someone does (social-alarm practice: an alarm is
        repeated until the receiving side confirms it)."""
        escalated = self.state.escalate_due(now_ms, int(self.cfg.gateway.escalate_after_s * 1000))
        for a in escalated:
            staff_log.error(
                "ESCALATION %d: fall alert %s (site %s hub %s resident %s) not acknowledged for %.0f s",
                a["escalations"],
                a["alert_id"],
                a["site_id"],
                a["device_id"],
                a.get("resident_id") or "?",
                (now_ms - int(a["raised_ms"])) / 1000,
            )
        with self.counters.lock:
            self.counters.escalations += len(escalated)
        return escalated

    def check_devices(self, now_ms: int) -> None:
        """Raise or clear "device offline" and "test alarm overdue" alerts (called periodically)."""
        g = self.cfg.gateway
        offline_ms = g.offline_after_s * 1000
        test_ms = g.test_alarm_max_age_h * 3600 * 1000
        for d in self.state.devices():
            key = (d["site_id"], d["device_id"])
            silent = now_ms - int(d["last_seen_ms"])
            if d.get("state") == "lost" or silent > offline_ms:
                why = (
                    f"device {d['device_id']} at {d['site_id']} silent for {silent / 1000:.0f} s "
                    f"(state {d.get('state') or '?'}, last seen {d['last_seen_ms']})"
                )
                if self.state.raise_alert("device_offline", *key, now_ms, why):
                    staff_log.warning("DEVICE OFFLINE: %s", why)
                self._offline_open.add(key)
            elif key in self._offline_open:
                self.state.resolve_alerts("device_offline", *key, now_ms, "device heard from again")
                self._offline_open.discard(key)
                staff_log.warning("device back online: %s at %s", d["device_id"], d["site_id"])
            ref = d.get("last_test_ms") or d["first_seen_ms"]
            if now_ms - int(ref) > test_ms:
                why = (
                    f"no daily test alarm from {d['device_id']} at {d['site_id']} for "
                    f"{(now_ms - int(ref)) / 3.6e6:.1f} h"
                )
                if self.state.raise_alert("test_overdue", *key, now_ms, why):
                    staff_log.warning("TEST ALARM OVERDUE: %s", why)
                self._test_open.add(key)
            elif key in self._test_open:
                self.state.resolve_alerts("test_overdue", *key, now_ms, "test alarm received")
                self._test_open.discard(key)

    # ------------------------------------------------------------------ views
    def _gauges(self) -> dict[str, float]:
        return {
            "spool_depth_points": float(self.spool.depth),
            "spool_bytes": float(self.spool.nbytes),
            "queue_depth": float(self._in_progress),
            "mqtt_connected": float(self.connected),
            "devices_offline": float(len(self._offline_open)),
            "devices_test_overdue": float(len(self._test_open)),
        }

    def stats(self) -> dict[str, Any]:
        c = self.counters
        with c.lock:
            return {
                "received": c.received,
                "stored": c.stored,
                "rejected": c.rejected,
                "rejected_by_reason": dict(c.rejected_by_reason),
                "duplicates": c.duplicates,
                "fall_alerts": c.fall_alerts,
                "telemetry_points": c.telemetry_points,
                "points_written": c.points_written + c.points_drained,
                "points_spooled": c.points_spooled,
                "points_refused": c.points_refused,
                "dead_lettered": c.dead_lettered,
                "spool_depth": self.spool.depth,
                "in_progress": self._in_progress,
                "acked": sum(link.acks.acked for link in self.links),
                "batches": c.batches,
                "connected": self.connected,
                "escalations": c.escalations,
                "devices_offline": len(self._offline_open),
                "devices_test_overdue": len(self._test_open),
            }

    def ready(self) -> tuple[bool, str]:
        for link in self.links:
            if not link.connected or not link.subscribed:
                return False, f"MQTT link {link.name!r} not connected/subscribed"
        if self.spool.full:
            return False, "spool full"
        return True, "ok"

    def wait_idle(self, timeout_s: float, quiet_s: float = 0.3) -> bool:
        """True once nothing received is still unstored, the spool is empty and input is quiet."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._in_progress == 0 and self.spool.depth == 0 and time.monotonic() - self._last_rx >= quiet_s:
                return True
            time.sleep(0.02)
        return False

    def alerts(self) -> list[dict[str, Any]]:
        """Fall alerts (state DB) with lifecycle ``status`` and the device's ``data_status``."""
        return self.state.alerts(kind="fall")

    def device_alerts(self) -> list[dict[str, Any]]:
        return [a for a in self.state.alerts() if a["kind"] != "fall"]

    def devices(self) -> list[dict[str, Any]]:
        return self.state.devices()

    def count_points(self, measurement: str) -> int:
        """Points of a measurement read back from the series store."""
        sink = make_sink(self.cfg.influx)
        try:
            return sink.count(measurement)
        finally:
            sink.close()


_GW_PRESENCE_PREFIX = f"{topics.PREFIX}/_gw/"

#: Subscriptions of the two links: together exactly the uplink kinds of ``topics.UPLINK_FILTERS``.
ALERT_FILTERS = (f"{topics.PREFIX}/+/+/evt/fall",)
BULK_FILTERS = (
    *(f for f in topics.UPLINK_FILTERS if not f.endswith("/evt/+")),
    f"{topics.PREFIX}/+/+/evt/risk",
    f"{topics.PREFIX}/+/+/evt/test",
)


class _Link:
    """One MQTT connection: its own persistent session, subscriptions, queue and in-order acks."""

    def __init__(
        self, gw: Gateway, name: str, client_id: str, filters: list[str], q: queue.SimpleQueue[Item], receive_max: int
    ) -> None:
        self.gw = gw
        self.name = name
        self.filters = filters
        self.q = q
        self.receive_max = receive_max
        self.connected = False
        self.subscribed = False
        mcfg = gw.cfg.mqtt.model_copy(update={"client_id": None})
        self.presence = f"{topics.PREFIX}/_gw/{gw.gateway_id}/state" if name == "bulk" else None
        will = None
        if self.presence:
            # retained gateway presence (Homie/Sparkplug style): dashboards and ops alerting see a
            # dead gateway as "lost" without polling it
            will = Will(self.presence, _presence("lost", gw.gateway_id))
        self.client = make_client(mcfg, client_id, manual_ack=True, will=will)
        self.acks = AckTracker(self.client.ack)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def start(self) -> None:
        m = self.gw.cfg.mqtt
        if is_v5(m):
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = m.session_expiry_s
            # bound what the broker sends us unacknowledged: the rest waits, queued, at the broker
            props.ReceiveMaximum = self.receive_max
            self.client.connect_async(m.host, m.port, keepalive=m.keepalive_s, clean_start=False, properties=props)
        else:
            self.client.connect_async(m.host, m.port, keepalive=m.keepalive_s)
        self.client.loop_start()

    def stop(self) -> None:
        try:
            if self.presence and self.connected:
                info = self.client.publish(self.presence, _presence("offline", self.gw.gateway_id), qos=1, retain=True)
                with contextlib.suppress(RuntimeError, ValueError):
                    info.wait_for_publish(2.0)
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            log.error("MQTT %s link: connect refused: %s", self.name, rc)
            return
        self.acks.new_connection()
        self.connected = True
        client.subscribe([(f, 1) for f in self.filters])
        if self.presence:
            client.publish(self.presence, _presence("ready", self.gw.gateway_id), qos=1, retain=True)
        log.info("MQTT %s link connected (session present: %s)", self.name, getattr(flags, "session_present", "?"))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any = None) -> None:
        bad = [str(r) for r in rcs if getattr(r, "is_failure", False)]
        if bad:
            log.error("MQTT %s link: subscription refused by the broker (check its ACL): %s", self.name, bad)
            return
        self.subscribed = True

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self.connected = False
        self.subscribed = False
        if not self.gw._closing:
            log.warning("MQTT %s link disconnected (%s); paho reconnects with backoff", self.name, rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        recv = time.time_ns()
        entry = self.acks.track(msg.mid, msg.qos) if msg.qos > 0 else None
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = msg._topic.decode("utf-8", "replace")  # broker should have refused it; rejected later
        if topic.startswith(_GW_PRESENCE_PREFIX):
            # gateways' own presence matches the uplink filter {site}/{device}/state: not device data
            self.acks.done([entry])
            return
        item: Item = (topic, msg.payload, entry, recv, bool(msg.retain))
        self.gw._received(item)
        self.q.put(item)


def _presence(state: str, gateway_id: str) -> bytes:
    return _dlq_encoder.encode({"state": state, "gateway_id": gateway_id, "ts_ms": _now_ms()})


def _device_update(msg: contract.Message, seen_ms: int) -> DeviceUpdate:
    u = DeviceUpdate(msg.site_id, msg.device_id, seen_ms)
    if isinstance(msg, contract.Health):
        d = msg.data
        u.outbox_depth, u.uptime_s = d.outbox_depth, d.uptime_s
        u.fw = d.fw or None
        u.model_version = d.model_version or None
        batteries = [s.battery_pct for s in d.sensors.values() if s.battery_pct is not None]
        u.min_battery_pct = min(batteries) if batteries else None
        u.sensors = {
            k: {
                "battery_pct": s.battery_pct,
                "rssi_dbm": s.rssi_dbm,
                "status": s.status,
                "last_seen_ms": s.last_seen_ms,
            }
            for k, s in d.sensors.items()
        }
    elif isinstance(msg, contract.State):
        d2 = msg.data
        u.state, u.heartbeat_s, u.boot_id = d2.state, d2.heartbeat_s, msg.boot_id
        u.fw = d2.fw or None
        u.model_version = d2.model_version or None
    elif isinstance(msg, contract.TestAlarm):
        u.last_test_ms = msg.ts_ms
    return u
