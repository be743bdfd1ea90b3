"""A small simulated care home for the console's browser tests and screenshots.

Six residents in the provisioning registry (names and flats), each with their own hub; six
weeks of daily fall-risk scores per resident, scored by the shipped risk model from daily
features that drift the way the risk literature describes (walking slows, nights get
restless, sway grows — or, after balance training, walking improves), published over the
real broker as each hub would publish them (``evt/risk``), with the day's morning as their
timestamp; and falls: old ones resolved with outcomes, and today's still open.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from fallwatch.protocol import contract as c
from fallwatch.protocol import topics

DAY_MS = 86_400_000


@dataclass
class Resident:
    resident_id: str
    name: str
    flat: str
    #: feature -> (value six weeks ago, value today); the others stay at BASE
    drift: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: how many of the last days the drift took (it starts then; before, the first value holds)
    drift_days: int = 42


BASE = {"gait_speed_m_s": 0.95, "gait_speed_trend_pct_wk": -0.5, "cadence_spm": 102.0, "stride_time_cv": 0.03,
        "sit_to_stand_s": 2.5, "tug_s": 10.5, "time_upright_h": 5.3, "night_activity_events": 2.5,
        "night_bathroom_visits": 1.2, "sway_rms_mg": 30.0, "falls_past_12m": 0.0}

RESIDENTS = [
    # walking slows over the last twelve days: the planning list's first name
    Resident("r01", "Astrid Lindqvist", "lgh 1101", {"gait_speed_m_s": (0.95, 0.83), "gait_speed_trend_pct_wk":
             (-0.5, -3.0), "tug_s": (10.5, 12.0), "time_upright_h": (5.3, 4.4)}, drift_days=12),
    # restless nights, up to the bathroom more often
    Resident("r02", "Karl-Erik Johansson", "lgh 1102", {"night_bathroom_visits": (1.2, 4.5),
             "night_activity_events": (2.5, 9.0)}, drift_days=10),
    # a fall last year and some sway: high, but steady
    Resident("r03", "Margareta Berg", "lgh 1203", {"falls_past_12m": (1.0, 1.0), "sway_rms_mg": (45.0, 46.0)}),
    # balance training is working: walking gets better
    Resident("r04", "Sven Nilsson", "lgh 1204", {"gait_speed_m_s": (0.80, 0.92), "tug_s": (12.5, 11.0),
             "gait_speed_trend_pct_wk": (-2.0, 2.0)}, drift_days=21),
    Resident("r05", "Ingrid Holm", "lgh 1305", {"gait_speed_m_s": (1.05, 1.05), "time_upright_h": (6.5, 6.5)}),
    # slowly more sway and a slower rise from the chair over a month
    Resident("r06", "Gunnar Ek", "lgh 1306", {"sway_rms_mg": (30.0, 55.0), "sit_to_stand_s": (2.5, 3.4)},
             drift_days=30),
]


def features_on(r: Resident, days_ago: int, rng: random.Random) -> dict[str, float]:
    """One day's features: the drift's value that day plus day-to-day noise."""
    out = dict(BASE)
    for name, (then, now) in r.drift.items():
        frac = 0.0 if days_ago >= r.drift_days else 1.0 - days_ago / r.drift_days
        out[name] = then + (now - then) * frac
    for name in ("gait_speed_m_s", "cadence_spm", "tug_s", "time_upright_h", "sway_rms_mg", "sit_to_stand_s"):
        out[name] *= 1.0 + rng.gauss(0, 0.03)
    for name in ("night_activity_events", "night_bathroom_visits"):
        out[name] = max(0.0, round(out[name] + rng.gauss(0, 0.7)))
    return out


def hub(r: Resident) -> str:
    return f"hub-{r.flat.split()[-1]}"


def risk_messages(site: str, now_ms: int, days: int = 42, seed: int = 14) -> list[tuple[str, bytes]]:
    """Every resident's daily risk score for ``days`` days up to today, scored by the shipped
    model, as (topic, payload) the way their hub publishes them (once a day, in the morning)."""
    from datetime import UTC, datetime

    from fallwatch.models.risk import RiskModel

    model = RiskModel()
    rng = random.Random(seed)
    out: list[tuple[str, bytes]] = []
    for r in RESIDENTS:
        for k, days_ago in enumerate(range(days - 1, -1, -1)):
            ts = now_ms - days_ago * DAY_MS - rng.randint(60_000, 3_600_000)  # this morning, not this instant
            features = features_on(r, days_ago, rng)
            score, level, factors = model.score(features)
            day = datetime.fromtimestamp(ts / 1000, UTC).date().isoformat()
            msg = c.RiskScore(schema=1, site_id=site, device_id=hub(r), boot_id=1, seq=10_000 + k,
                              msg_id=c.make_msg_id(hub(r), 10_000 + k), ts_ms=ts, sent_ms=ts,
                              resident_id=r.resident_id,
                              data=c.RiskData(day=day, score=round(score, 4), level=level,  # type: ignore[arg-type]
                                              factors=factors, features={k2: round(v, 4) for k2, v in features.items()},
                                              model=model.tag))
            out.append((topics.risk(site, hub(r)), c.encode(msg)))
    return out


def fall_message(site: str, r: Resident, seq: int, ts_ms: int, room: str, *, lying_s: float = 45.0,
                 reasons: tuple[str, ...] = ("impact", "lying", "no_room_motion"),
                 status: str = "alert") -> tuple[str, bytes]:
    """A fall as the resident's hub reports it."""
    msg = c.FallAlert(schema=1, site_id=site, device_id=hub(r), boot_id=1, seq=seq,
                      msg_id=c.make_msg_id(hub(r), seq), ts_ms=ts_ms, sent_ms=ts_ms, resident_id=r.resident_id,
                      data=c.FallData(event_id=f"{hub(r)}-ev{seq}", status=status,  # type: ignore[arg-type]
                                      impact_ms=ts_ms - int(lying_s * 1000), confidence=0.91, peak_g=3.1,
                                      lying_s=lying_s, room=room, sensor=f"wear-{r.resident_id}",
                                      reasons=[c.Reason(code) for code in reasons], model="fall-cnn@1.0.0"))
    return topics.fall(site, hub(r)), c.encode(msg)


def register(registry: Any, site: str, team: str) -> None:
    """The residents in the provisioning registry (names and flats are what staff read)."""
    for r in RESIDENTS:
        registry.add_resident(site, r.resident_id, actor="test", name=r.name, flat=r.flat, team=team)
