"""Daily fall risk (part of the telemetry stage): per wearer and day, the gait and night
features of :mod:`fallwatch.edge.risk` scored by the shipped risk model and published.

Days roll over at ``edge.risk_hour`` local time (after the night). The falls raised and the
last 28 daily gait speeds are kept beside the outbox (``Outbox.get_state("risk")``), so
the risk trend and ``falls_past_12m`` survive restarts.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np

from fallwatch.config import EdgeConfig
from fallwatch.edge.counters import Counters
from fallwatch.edge.messages import Messages
from fallwatch.edge.outbox import Pending
from fallwatch.edge.risk import NightCounter, load_risk_model
from fallwatch.edge.sensors import Sensors
from fallwatch.edge.uplink import Uplink
from fallwatch.protocol import contract as C

log = logging.getLogger("fallwatch.edge.agent")

#: Daily gait speeds kept per wearer (the trend feature needs at least 5).
HISTORY_DAYS = 28
#: A day with less wear than this gets no score rather than a made-up one.
MIN_WEAR_S = 60.0


class DailyRisk:
    """Risk day, night counters, scoring and the persisted risk state of one hub."""

    def __init__(
        self, cfg: EdgeConfig, sensors: Sensors, messages: Messages, uplink: Uplink, counters: Counters
    ) -> None:
        self.cfg = cfg
        self.sensors = sensors
        self.messages = messages
        self.uplink = uplink
        self.count = counters.count
        self.model = load_risk_model()  # None when this build ships no risk model
        self.nights = NightCounter(messages.start_epoch_ms)
        self.day = self.day_key(0.0)

    def day_key(self, t_s: float) -> str:
        """The risk day a time belongs to: days roll over at ``risk_hour`` local time, after the night."""
        wall = self.messages.start_epoch_ms / 1000.0 + t_s - self.cfg.risk_hour * 3600
        return time.strftime("%Y-%m-%d", time.localtime(wall))

    def tick(self, now_s: float) -> None:
        if self.day_key(now_s) != self.day:
            self.score(now_s)

    def score(self, now_s: float) -> list[C.RiskData]:
        """Score and publish the day that ends now, per wearer; then start a new day."""
        day, self.day = self.day, self.day_key(now_s)
        out: list[C.RiskData] = []
        if self.model is None:
            return out
        items: list[Pending] = []
        night = self.nights.features() if self.sensors.single_resident else {}
        for w in self.sensors.wearables.values():
            if w.gait.seconds < MIN_WEAR_S:
                continue
            feats = {**w.gait.features(day), **night, "falls_past_12m": float(w.falls)}
            score, level, factors = self.model.score(feats)
            data = C.RiskData(day=day, score=float(np.clip(score, 0, 1)),
                              level=level,  # type: ignore[arg-type]  # RiskModel.score: one of the three levels, as str
                              factors=factors[:16],
                              features={k: float(v) for k, v in list(feats.items())[:32]},
                              model=self.model.tag[:80])
            out.append(data)
            items.append(self.messages.risk(data, now_s, w.resident_id))
            w.gait.reset_day()
            self.count("risk_scores")
        self.nights.reset_day()
        if self.uplink.is_open:
            self.uplink.send(items)
            self.save()
        return out

    def load(self) -> None:
        """Falls counted and daily gait speeds kept by an earlier run (risk trend, falls_past_12m)."""
        assert self.uplink.outbox is not None
        raw = self.uplink.outbox.get_state("risk")
        if not raw:
            return
        try:
            saved = json.loads(raw)
        except ValueError:
            log.error("unreadable risk state in the outbox db: starting afresh")
            return
        for sid, st in saved.items():
            w = self.sensors.wearables.get(sid) or self.sensors.add_wearable(sid, st.get("resident_id"))
            w.falls = int(st.get("falls", 0))
            w.gait.history = [(str(d), float(v)) for d, v in st.get("history", [])][-HISTORY_DAYS:]

    def save(self) -> None:
        """Persist falls and gait history beside the outbox (no-op before start)."""
        if self.uplink.outbox is None:
            return
        state = {w.sensor_id: {"resident_id": w.resident_id, "falls": w.falls, "history": w.gait.history}
                 for w in self.sensors.wearables.values() if w.falls or w.gait.history}
        self.uplink.outbox.set_state("risk", json.dumps(state))
