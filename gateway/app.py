"""The gateway: MQTT in, validated and de-duplicated, durably stored, then acknowledged.

:class:`Gateway` is only the composition root: ``__init__`` builds the stages (a flat
list of ``init_*``), :meth:`Gateway.start` starts them (a flat list of ``start_*``), each
stage lives in its own module behind a small interface:

==================  ====================================================================
links               two MQTT connections (fall alerts apart), subscriptions, in-order acks
decode              payload → contract message + series points; rejections dead-lettered
dedup               ``msg_id`` idempotency keys in the state DB (shared by replicas)
store               series store or disk spool (durable either way), and the drainer
ingest              the bulk worker: micro-batches through decode → dedup → store → ack
alerts              the fall-alert worker, and escalation of unacknowledged alerts
channels            staff notification: each alert event to every configured channel
paging              on-call routing, delivery with fallback, escalation, acknowledge links
supervision         device offline / daily test alarm overdue
api + http          the HTTP endpoints, against a narrow read interface
==================  ====================================================================

Threads, one stop event: paho's network threads only enqueue (fall alerts on their own
queue, everything else on the bulk queue); the **alert worker** stores each fall alert on
its own, in the state DB, and the **alert-points writer** puts their series points in the
store when it takes writes; the **bulk writer** drains its queue in natural micro-batches; the **drainer**
empties the spool into the store when it is back; the **supervisor** raises device
alerts, escalates and prunes old idempotency keys.

A QoS 1 message is acknowledged only after what it carries is durable (written to the
store or to the spool); rejected messages are acknowledged after they were counted and
dead-lettered, duplicates straight away. Nothing is acknowledged out of arrival order.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

from fallwatch.config import FallwatchConfig
from fallwatch.gateway.alerts import FallAlerts
from fallwatch.gateway.api import GatewayApi
from fallwatch.gateway.channels import Action, AlertEvent, Channel, ChannelContext, Notifier, parse_channels
from fallwatch.gateway.decode import Decoder, SiteCheck
from fallwatch.gateway.dedup import Deduplicator
from fallwatch.gateway.devices_view import DeviceLimits
from fallwatch.gateway.http import HttpServer
from fallwatch.gateway.ingest import BulkIngest, InFlight, LatencyProbe
from fallwatch.gateway.links import Item, Links
from fallwatch.gateway.metrics import Counters, Metrics
from fallwatch.gateway.observe import Observer
from fallwatch.gateway.paging import Pager
from fallwatch.gateway.paging.store import PagingStore
from fallwatch.gateway.sinks import SINKS, make_sink, sink_type
from fallwatch.gateway.spool import Spool
from fallwatch.gateway.state import DIALECTS, StateStore, state_type
from fallwatch.gateway.store import Storage
from fallwatch.gateway.supervision import Supervisor
from fallwatch.gateway.workers import Workers
from fallwatch.protocol import contract

__all__ = ["Gateway", "check_plugins"]

log = logging.getLogger("fallwatch.gateway")


class Gateway:
    def __init__(self, cfg: FallwatchConfig, *, channels: Sequence[Channel] = ()) -> None:
        """``channels`` are added to the configured ones (an in-process recorder, tests)."""
        self.cfg = cfg
        self.gateway_id = cfg.gateway.gateway_id
        self.http: HttpServer | None = None
        self.init_workers()
        self.init_state()
        self.init_metrics()
        self.init_channels(channels)
        self.init_storage()
        self.init_links()
        self.init_decode()
        self.init_bulk()
        self.init_alerts()
        self.init_observer()
        self.init_supervision()
        self.init_certs()
        self.init_privacy()
        self.init_api()

    # ------------------------------------------------------------------ init: build the stages
    def init_workers(self) -> None:
        self.stop_event = threading.Event()
        self.workers = Workers(self.stop_event)

    def init_state(self) -> None:
        self.state = StateStore(self.cfg.gateway.state_db, self.cfg.gateway.state_db_type)

    def init_metrics(self) -> None:
        self.counters = Counters()
        self.metrics = Metrics(self.counters, self._gauges)
        self.inflight = InFlight(self.counters)
        self.dedup = Deduplicator(self.state, self.counters)

    def init_channels(self, extra: Sequence[Channel]) -> None:
        subs = PagingStore(self.state)
        ctx = ChannelContext(self.gateway_id, push_subscriptions=subs.subscriptions,
                             drop_subscription=subs.drop_subscription, locale=self.cfg.gateway.locale,
                             timezone=self.cfg.gateway.timezone)
        self.notifier = Notifier.from_config(self.cfg.gateway.channels, ctx, extra)
        self.dedup.on_conflict = self._id_conflict
        addressable = {ch.name: ch for ch in self.notifier.channels if hasattr(ch, "send_to")}
        self.pager = Pager(self.cfg.gateway.paging, self.state, addressable,  # type: ignore[arg-type]  # checked by hasattr
                           gateway_id=self.gateway_id, stop=self.stop_event, locale=self.cfg.gateway.locale)
        self.pager.emit = self.notifier.notify
        self.pager.raise_alert = self.raise_device_alert
        self.pager.resolve_alert = self.resolve_device_alert
        self.notifier.channels.append(self.pager)

    def init_storage(self) -> None:
        g = self.cfg.gateway
        self.spool = Spool(g.spool_dir, int(g.spool_max_mb * 1024 * 1024))
        self.storage = Storage(self.cfg.influx, self.spool, self.counters, self.metrics, self.stop_event)

    def init_links(self) -> None:
        self.alert_q: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self.bulk_q: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self.links = Links(self.cfg, self.alert_q, self.bulk_q, self.inflight.received)

    def init_decode(self) -> None:
        self.decoder = Decoder(self.gateway_id, self.counters, self.links.publish,
                               int(self.cfg.gateway.clock_skew_s * 1000), SiteCheck(self.state.device_site,
                                                                              self.state.device_sites))

    def init_bulk(self) -> None:
        self.bulk = BulkIngest(self.cfg.gateway, self.bulk_q, self.decoder, self.dedup, self.storage, self.state,
                               self.inflight, self.counters, self.metrics, self.stop_event, self.workers)
        self.bulk.read_pace = self.links.bulk.read_pace

    def init_alerts(self) -> None:
        self.fall_alerts = FallAlerts(self.alert_q, self.decoder, self.dedup, self.storage, self.state,
                                      self.inflight, self.counters, self.metrics, self.notifier,
                                      self.stop_event, self.cfg.gateway.escalate_after_s, self.workers)

    def init_observer(self) -> None:
        self.observer = Observer(self.state, self.raise_device_alert, self.resolve_device_alert)
        self.bulk.observer = self.observer.observe

    def init_supervision(self) -> None:
        self.supervisor = Supervisor(self.cfg.gateway, self.state, self.dedup, self.notifier,
                                     self.fall_alerts.check_escalations,
                                     self.cfg.mqtt.session_expiry_s * 1000 * 2, self.stop_event)

    def init_certs(self) -> None:
        self.certs_expiring: set[tuple[str, str]] = set()
        self.supervisor.minutely.append(self.check_certs)

    def init_privacy(self) -> None:
        """Erased residents stay erased: their late points and alerts are dropped (gateway/privacy.py)."""
        from fallwatch.gateway.privacy import ErasedFilter, Privacy

        erased = ErasedFilter(self.state, on_drop=lambda n: self.counters.add(erased_dropped=n))
        self.storage.erased = erased.points
        self.fall_alerts.erased = erased.message
        self.bulk.erased = erased.message
        self.privacy = Privacy(self.state, self.cfg.influx, self.cfg.gateway.spool_dir)

    def init_api(self) -> None:
        self.api = GatewayApi(self.state, self.workers, self.metrics, self.notifier, self.stats, self.ready,
                              self.pager, residents=self._resident_label,
                              series=lambda: make_sink(self.cfg.influx),
                              device_limits=DeviceLimits(self.cfg.gateway.offline_after_s,
                                                         self.cfg.gateway.test_alarm_max_age_h),
                              privacy=self.privacy)

    # ------------------------------------------------------------------ start / stop
    def start(self) -> None:
        """Open state and spool, start workers and the HTTP endpoints, then connect."""
        self.start_state()
        self.start_workers()
        self.start_http()
        self.start_links()
        log.info(
            "gateway %s started: store %s, state %s, spool %s",
            self.gateway_id,
            sink_type(self.cfg.influx),
            self.state.dialect.describe(),
            self.spool.path,
        )

    def start_state(self) -> None:
        self.state.setup(clock_skew_ms=int(self.cfg.gateway.clock_skew_s * 1000))
        self.supervisor.load_open()
        self.fall_alerts.load()
        self.pager.setup()
        self.api.care().setup()
        self.observer.load_open()

    def start_workers(self) -> None:
        self.workers.start("alerts", self.fall_alerts.loop)
        self.workers.start("alert-points", self.fall_alerts.points_loop)
        self.workers.start("bulk", self.bulk.loop)
        self.workers.start("drain", self.storage.drain_loop)
        self.workers.start("supervisor", self.supervisor.loop)
        if self.pager.enabled:
            self.workers.start("pager", self.pager.loop)

    def start_http(self) -> None:
        g = self.cfg.gateway
        self.http = HttpServer(self.api, g.http_host, g.http_port, g.staff_users_file)
        self.http.start()
        if self.pager.public_url is None:
            self.pager.public_url = self.http.url

    def start_links(self) -> None:
        self.links.start()

    def stop(self) -> None:
        """Disconnect first (no new messages), let the workers finish what they hold, close."""
        self.links.stop()
        self.stop_event.set()
        self.storage.wake()  # the drainer sleeps while the spool is empty
        self.workers.join(timeout_s=30)
        if self.http is not None:
            self.http.close()
        self.storage.close()
        self.pager.close()  # its sends use the channels: let them finish first
        self.notifier.close()
        self.state.close()
        log.info("gateway %s stopped", self.gateway_id)

    # ------------------------------------------------------------------ the stages' public faces
    @property
    def http_url(self) -> str | None:
        return self.http.url if self.http is not None else None

    @property
    def latency_probe(self) -> LatencyProbe | None:
        """Optional ``probe(path, e2e_ms)`` per stored message (benchmarks; None costs nothing)."""
        return self.bulk.latency_probe

    @latency_probe.setter
    def latency_probe(self, probe: LatencyProbe | None) -> None:
        self.bulk.latency_probe = self.fall_alerts.latency_probe = probe

    @property
    def connected(self) -> bool:
        return self.links.connected

    def check_escalations(self, now_ms: int) -> list[dict[str, Any]]:
        return self.fall_alerts.check_escalations(now_ms)

    def check_devices(self, now_ms: int) -> None:
        self.supervisor.check_devices(now_ms)

    def _gauges(self) -> dict[str, float]:
        return {
            "spool_depth_points": float(self.spool.depth),
            "spool_bytes": float(self.spool.nbytes),
            "alert_points_pending": float(self.fall_alerts.points_pending),
            "queue_depth": float(self.inflight.in_progress),
            "mqtt_connected": float(self.connected),
            "devices_offline": float(len(self.supervisor.offline)),
            "devices_test_overdue": float(len(self.supervisor.test_overdue)),
            "certs_expiring_30d": float(len(self.certs_expiring)),
        }

    def stats(self) -> dict[str, Any]:
        c = self.counters
        with c.lock:
            return {
                "received": c.received,
                "first_received_ms": self.inflight.first_rx_ms,
                "stored": c.stored,
                "rejected": c.rejected,
                "rejected_by_reason": dict(c.rejected_by_reason),
                "duplicates": c.duplicates,
                "fall_alerts": c.fall_alerts,
                "telemetry_points": c.telemetry_points,
                "points_written": c.points_written + c.points_drained,
                "points_spooled": c.points_spooled,
                "spool_write_errors": c.spool_write_errors,
                "points_refused": c.points_refused,
                "dead_lettered": c.dead_lettered,
                "spool_depth": self.spool.depth,
                "alert_points_pending": self.fall_alerts.points_pending,
                "in_progress": self.inflight.in_progress,
                "acked": self.links.acked,
                "batches": c.batches,
                "connected": self.connected,
                "escalations": c.escalations,
                "id_conflicts": c.id_conflicts,
                "clock_clamped": c.clock_clamped,
                "worker_problems": self.workers.problems(),
                "devices_offline": len(self.supervisor.offline),
                "devices_test_overdue": len(self.supervisor.test_overdue),
                "paging": self.pager.stats(),
                "certs_expiring_30d": len(self.certs_expiring),
            }

    def ready(self) -> tuple[bool, str]:
        why = self.links.not_ready()
        if why is not None:
            return False, why
        if self.spool.full:
            return False, "spool full"
        problems = self.workers.problems()
        if problems:
            return False, "; ".join(f"{k} {v}" for k, v in sorted(problems.items()))
        return True, "ok"

    def _id_conflict(self, msg: contract.Message) -> None:
        """A key seen before with different content: an alarm for staff (a device alert)."""
        why = (f"message key {msg.msg_id} from {msg.device_id} at {msg.site_id} arrived again with different "
               f"content: kept, but the hub may have been re-imaged or cloned (check its outbox / install id)")
        self.raise_device_alert("msg_id_conflict", msg.site_id, msg.device_id, why)

    def check_certs(self, now_ms: int, within_days: float = 30.0) -> None:
        """A technician alert for each device whose client certificate expires within 30 days
        (the provisioning registry knows them), cleared when it is renewed or retired."""
        registry = self.pager.registry
        if registry is None:
            return
        try:
            rows = registry.expiring_certs(within_days)
        except Exception:
            log.exception("could not read certificate expiry from the registry")
            return
        now_set = set()
        for r in rows:
            key = (str(r["site_id"] or "-"), str(r["device_id"]))
            now_set.add(key)
            if key not in self.certs_expiring:
                days = (int(r["cert_not_after_ms"]) - now_ms) / 86_400_000
                self.raise_device_alert("cert_expiring", *key, f"client certificate of {key[1]} "
                                        + (f"expires in {days:.0f} days" if days > 0 else "has expired")
                                        + ": renew it (fallwatch device rotate)")
        for key in self.certs_expiring - now_set:
            self.resolve_device_alert("cert_expiring", *key, "certificate renewed or device retired")
        self.certs_expiring = now_set

    def _resident_label(self, site_id: str, resident_id: str) -> dict[str, str] | None:
        """A resident's name and flat from the provisioning registry, for the console (which
        shows alerts only to the roles allowed to see residents)."""
        row = self.pager.resident(site_id, resident_id)
        if row is None:
            return None
        return {k: str(row[k]) for k in ("name", "flat") if row.get(k)}

    def raise_device_alert(self, kind: str, site_id: str, device_id: str, why: str,
                           resident_id: str | None = None) -> None:
        """Open an alert of ``kind`` for a device (or a gateway part) unless one is open, and tell staff."""
        now = contract.now_ms()
        alert_id = self.state.raise_alert(kind, site_id, device_id, now, why, resident_id=resident_id)
        if alert_id:
            self.notifier.notify(AlertEvent(kind=kind, action=Action.RAISED, alert_id=alert_id, site_id=site_id,
                                            device_id=device_id, at_ms=now, detail=why, raised_ms=now,
                                            resident_id=resident_id))

    def resolve_device_alert(self, kind: str, site_id: str, device_id: str, why: str) -> None:
        now = contract.now_ms()
        for alert_id in self.state.resolve_alerts(kind, site_id, device_id, now, why):
            self.notifier.notify(AlertEvent(kind=kind, action=Action.RECOVERED, alert_id=alert_id, site_id=site_id,
                                            device_id=device_id, at_ms=now, detail=why))

    def wait_idle(self, timeout_s: float, quiet_s: float = 0.3) -> bool:
        """True once nothing received is still unstored, the spool and the alert points are
        written, the registry is up to date and input is quiet.

        Light telemetry may wait unread in the bulk link's socket for its read pace
        (:func:`fallwatch.gateway.links.bulk_read_pace_s`), so input counts as quiet only once
        that long has passed since the call, too.
        """
        now = time.monotonic()
        deadline, paced = now + timeout_s, now + 2 * self.links.bulk.read_pace.pace_s
        while time.monotonic() < deadline:
            if (self.inflight.idle(quiet_s) and time.monotonic() >= paced and self.spool.depth == 0
                    and self.fall_alerts.points_pending == 0 and self.bulk.devices.pending == 0):
                return True
            time.sleep(0.02)
        return False

    def alerts(self) -> list[dict[str, Any]]:
        """Fall alerts (state DB) with lifecycle ``status`` and the device's ``data_status``."""
        return self.state.alerts(kind="fall")

    def device_alerts(self) -> list[dict[str, Any]]:
        return [a for a in self.state.alerts(limit=100_000) if a["kind"] != "fall"]

    def devices(self) -> list[dict[str, Any]]:
        return self.state.devices()

    def count_points(self, measurement: str) -> int:
        """Points of a measurement read back from the series store."""
        return self.storage.count_points(measurement)


def check_plugins(cfg: FallwatchConfig) -> None:
    """Resolve every plug-in the config names (series store, state store, channels) without
    connecting to anything; raises ConfigError with a readable report (``--validate-config``)."""
    SINKS.get(sink_type(cfg.influx))
    DIALECTS.get(cfg.gateway.state_db_type or state_type(cfg.gateway.state_db))
    parse_channels(cfg.gateway.channels)
