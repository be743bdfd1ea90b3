"""Alerts derived from what hubs report besides falls: the room's concerns, batteries, a
wearable nobody wears, a risk score that has become high.

The bulk worker hands every freshly stored message here (after it is durable, so an
alert never points at data that was lost). Most messages are not of interest and cost
one type check; open alerts are remembered in memory so an "all is well again" report
clears its alert without a state-DB read per message.

=====================  ==========================================  ====================
reported                                                           alert kind (urgency)
=====================  ==========================================  ====================
telemetry ``concern``  ``bed_exit_no_return`` (out of bed at       ``bed_exit_night``
                       night, not back)                            (high)
telemetry ``concern``  ``prolonged_inactivity``                    ``inactivity`` (urgent)
health                 a wearable ``stale`` (not heard for         ``not_worn`` (normal),
                       ``wearable_stale_s``: off the wrist, out    cleared when heard
                       of range, flat battery)
health                 a sensor's battery < ``LOW_BATTERY_PCT``    ``low_battery``
                                                                   (normal), cleared ≥ 25 %
risk score             level ``high``                              ``fall_risk``
                                                                   (planning), cleared
                                                                   when it is not
=====================  ==========================================  ====================
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from fallwatch.gateway.state import StateStore
from fallwatch.protocol import contract

log = logging.getLogger("fallwatch.gateway")
LOW_BATTERY_PCT = 15.0
BATTERY_OK_PCT = 25.0
KINDS = ("bed_exit_night", "inactivity", "not_worn", "low_battery", "fall_risk")
_CONCERNS = {"bed_exit_no_return": "bed_exit_night", "prolonged_inactivity": "inactivity"}

Raise = Callable[..., None]  # (kind, site_id, device_id, why, resident_id=None)


class Observer:
    def __init__(self, state: StateStore, raise_alert: Raise, resolve_alert: Raise) -> None:
        self.state = state
        self.raise_alert = raise_alert
        self.resolve_alert = resolve_alert
        self.open: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()

    def load_open(self) -> None:
        for kind in KINDS:
            for a in self.state.alerts(kind=kind, open_only=True):
                self.open.add((kind, a["site_id"], a["device_id"]))

    def observe(self, msgs: Iterable[contract.Message]) -> None:
        for m in msgs:
            try:
                if isinstance(m, contract.Telemetry):
                    concern = m.data.fields.get("concern")
                    if concern is not None:
                        self._concern(m, str(concern))
                elif isinstance(m, contract.Health):
                    self._health(m)
                elif isinstance(m, contract.RiskScore):
                    self._risk(m)
            except Exception:  # a derived alert must never stop storing; say so loudly
                log.exception("deriving an alert from %s %s failed", type(m).__name__, m.msg_id)

    def _set(self, kind: str, m: contract.Message, on: bool, why: str, resident_id: str | None = None) -> None:
        key = (kind, m.site_id, m.device_id)
        with self._lock:
            was = key in self.open
            if on:
                self.open.add(key)
            else:
                self.open.discard(key)
        if on and not was:
            if resident_id is not None:
                self.raise_alert(kind, m.site_id, m.device_id, why, resident_id=resident_id)
            else:
                self.raise_alert(kind, m.site_id, m.device_id, why)
        elif not on and was:  # the append-only log gets no resident's data (gateway/privacy.py)
            self.resolve_alert(kind, m.site_id, m.device_id, why if resident_id is None else f"{kind} over")

    def _concern(self, m: contract.Telemetry, concern: str) -> None:
        kind = _CONCERNS.get(concern)
        if kind is None:
            return
        minutes = m.data.fields.get("concern_minutes")
        where = f" in {m.data.room}" if m.data.room else ""
        what = "out of bed at night and not back" if kind == "bed_exit_night" else "no movement in the flat"
        self._set(kind, m, True, f"{what}{where} for {minutes} min (sensor {m.data.sensor}, hub {m.device_id} at "
                                 f"{m.site_id})")
        with self._lock:  # a one-off report: staff resolve it, and the next one raises again
            self.open.discard((kind, m.site_id, m.device_id))

    def _health(self, m: contract.Health) -> None:
        warn = " ".join(m.data.warnings)
        stale = [sid for sid, s in m.data.sensors.items() if s.status == "stale" and f"wearable {sid}" in warn]
        self._set("not_worn", m, bool(stale), f"wearable {', '.join(stale)} not heard from (not worn, out of range "
                                              f"or flat)" if stale else "wearable heard from again")
        low = {sid: s.battery_pct for sid, s in m.data.sensors.items()
               if s.battery_pct is not None and s.battery_pct < LOW_BATTERY_PCT}
        ok = all(s.battery_pct is None or s.battery_pct >= BATTERY_OK_PCT for s in m.data.sensors.values())
        if low:
            self._set("low_battery", m, True, "battery low: " + ", ".join(f"{k} {v:.0f} %" for k, v in low.items()))
        elif ok:
            self._set("low_battery", m, False, "batteries charged")

    def _risk(self, m: contract.RiskScore) -> None:
        d = m.data
        top = ", ".join(f.name for f in sorted(d.factors, key=lambda f: -f.contribution)[:3])
        self._set("fall_risk", m, d.level == "high",
                  f"fall risk {d.level} ({d.score:.2f}) on {d.day} for resident {m.resident_id or '?'}"
                  + (f": {top}" if top else ""), resident_id=m.resident_id)
