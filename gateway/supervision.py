"""Supervision: "device offline" and "test alarm overdue" alerts, raised and cleared.

A device is offline after ``offline_after_s`` of silence (≤ 180 s: three missed 60 s
heartbeats) or at once on a last-will ``lost`` state; its daily silent test alarm is
overdue after ``test_alarm_max_age_h``. One alert per outage, cleared by the gateway
when the device is heard from again. The supervisor worker also runs the fall-alert
escalation check and prunes old idempotency keys.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from fallwatch.config import GatewayConfig
from fallwatch.gateway.channels import Action, AlertEvent, Notifier
from fallwatch.gateway.dedup import Deduplicator
from fallwatch.gateway.state import StateStore
from fallwatch.protocol import contract


class Supervisor:
    def __init__(self, cfg: GatewayConfig, state: StateStore, dedup: Deduplicator, notifier: Notifier,
                 escalate: Callable[[int], object], keep_keys_ms: int, stop: threading.Event) -> None:
        self.cfg = cfg
        self.notifier = notifier
        self.state = state
        self.dedup = dedup
        self.escalate = escalate
        self.keep_keys_ms = keep_keys_ms
        self.stop = stop
        self.offline: set[tuple[str, str]] = set()
        self.test_overdue: set[tuple[str, str]] = set()
        #: slower checks (certificate expiry), run about once a minute: ``check(now_ms)``
        self.minutely: list[Callable[[int], object]] = []

    def load_open(self) -> None:
        """Pick up the device alerts still open from before a restart."""
        for a in self.state.alerts(kind="device_offline", open_only=True):  # all of them, never capped
            self.offline.add((a["site_id"], a["device_id"]))
        for a in self.state.alerts(kind="test_overdue", open_only=True):
            self.test_overdue.add((a["site_id"], a["device_id"]))

    def loop(self) -> None:
        """Worker: check devices and escalations every ``min(5 s, offline_after_s / 10)``."""
        period = min(5.0, max(0.2, self.cfg.offline_after_s / 10))
        last_prune = last_minutely = 0.0
        while not self.stop.wait(period):
            self.check_devices(contract.now_ms())
            self.escalate(contract.now_ms())
            if time.monotonic() - last_minutely > 60:
                last_minutely = time.monotonic()
                for check in self.minutely:
                    check(contract.now_ms())
            if time.monotonic() - last_prune > 3600:
                last_prune = time.monotonic()
                self.dedup.prune(contract.now_ms() - self.keep_keys_ms)

    def check_devices(self, now_ms: int) -> None:
        """Raise or clear "device offline" and "test alarm overdue" alerts (called periodically)."""
        offline_ms = self.cfg.offline_after_s * 1000
        test_ms = self.cfg.test_alarm_max_age_h * 3600 * 1000
        # only the devices that are late, and those with an alert open that may have recovered:
        # for every other device both tests below are false and nothing happens (issue 16)
        due = self.state.devices_due(now_ms - offline_ms, now_ms - test_ms)
        tracked = (self.offline | self.test_overdue) - {(d["site_id"], d["device_id"]) for d in due}
        rows = due + (self.state.devices(tracked) if tracked else [])
        for d in sorted(rows, key=lambda r: (r["site_id"], r["device_id"])):
            key = (d["site_id"], d["device_id"])
            silent = now_ms - int(d["last_seen_ms"])
            if d.get("state") == "lost" or silent > offline_ms:
                why = (
                    f"device {d['device_id']} at {d['site_id']} silent for {silent / 1000:.0f} s "
                    f"(state {d.get('state') or '?'}, last seen {d['last_seen_ms']})"
                )
                alert_id = self.state.raise_alert("device_offline", *key, now_ms, why)
                if alert_id:
                    self._tell("device_offline", Action.RAISED, alert_id, key, now_ms, why)
                self.offline.add(key)
            elif key in self.offline:
                ids = self.state.resolve_alerts("device_offline", *key, now_ms, "device heard from again")
                self.offline.discard(key)
                self._tell("device_offline", Action.RECOVERED, ids[0] if ids else "", key, now_ms,
                           "device heard from again")
            ref = d.get("last_test_ms") or d["first_seen_ms"]
            if now_ms - int(ref) > test_ms:
                why = (
                    f"no daily test alarm from {d['device_id']} at {d['site_id']} for "
                    f"{(now_ms - int(ref)) / 3.6e6:.1f} h"
                )
                alert_id = self.state.raise_alert("test_overdue", *key, now_ms, why)
                if alert_id:
                    self._tell("test_overdue", Action.RAISED, alert_id, key, now_ms, why)
                self.test_overdue.add(key)
            elif key in self.test_overdue:
                ids = self.state.resolve_alerts("test_overdue", *key, now_ms, "test alarm received")
                self.test_overdue.discard(key)
                if ids:
                    self._tell("test_overdue", Action.RECOVERED, ids[0], key, now_ms, "test alarm received")

    def _tell(self, kind: str, action: Action, alert_id: str, key: tuple[str, str], now_ms: int, why: str) -> None:
        raised_ms = now_ms if action is Action.RAISED else None
        self.notifier.notify(AlertEvent(kind=kind, action=action, alert_id=alert_id, site_id=key[0],
                                        device_id=key[1], at_ms=now_ms, detail=why, raised_ms=raised_ms))
