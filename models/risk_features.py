"""The fall-risk feature contract: one row per resident-day, names, units, meaning.

Versioned so the three parties agree: the edge computes these from the wearable and
room sensors, the simulator drifts them, the risk model reads them. A model trained on a
real cohort can replace the simulated one as long as it reads (a subset of) these names
with these units; the model's ONNX metadata names the contract version it was built for.

Changing a unit or meaning is a new *major* version; adding a feature is a minor one.
"""

from __future__ import annotations

from dataclasses import dataclass

CONTRACT_VERSION = "1.0.0"


@dataclass(frozen=True)
class RiskFeature:
    name: str
    unit: str
    description: str
    #: +1: higher value = higher risk in the literature; -1: lower value = higher risk.
    direction: int
    #: Plausible range; values outside are clipped before scoring (sensor glitches).
    lo: float
    hi: float
    source: str


FEATURES: tuple[RiskFeature, ...] = (
    RiskFeature("gait_speed_m_s", "m/s", "median in-home walking speed over walking bouts of the day",
                -1, 0.1, 2.0, "gait speed decline precedes falls (in-home monitoring studies)"),
    RiskFeature("gait_speed_trend_pct_wk", "%/week", "slope of daily gait speed over the last 28 days, "
                "percent of the 28-day mean per week", -1, -20.0, 20.0,
                "in-home walking speed falls week by week before a fall"),
    RiskFeature("cadence_spm", "steps/min", "median cadence over walking bouts", -1, 40.0, 160.0,
                "+10 steps/min ~ 13 % fewer falls"),
    RiskFeature("stride_time_cv", "ratio", "coefficient of variation (std/mean, 0.03 = 3 %) of stride "
                "time within walking bouts", +1, 0.005, 0.3, "stride-time variability predicts falls"),
    RiskFeature("sit_to_stand_s", "s", "median duration of one sit-to-stand transition of the day "
                "(x5 plus pauses ~ the clinical five-times sit-to-stand)", +1, 0.5, 15.0,
                "5x sit-to-stand time"),
    RiskFeature("tug_s", "s", "estimated Timed Up and Go time (rise, walk 3 m, turn, sit)",
                +1, 5.0, 60.0, "TUG >= 12 s marks fall risk"),
    RiskFeature("time_upright_h", "h", "hours standing or walking in the day", -1, 0.0, 18.0,
                "low physical activity"),
    RiskFeature("night_activity_events", "count", "movement bouts out of bed 22:00-06:00", +1, 0.0, 30.0,
                "restless nights"),
    RiskFeature("night_bathroom_visits", "count", "bathroom visits 22:00-06:00", +1, 0.0, 15.0,
                ">= 2 per night OR 1.84; >= 3 RR 1.28"),
    RiskFeature("sway_rms_mg", "milli-g", "RMS horizontal acceleration while standing still", +1, 0.0, 200.0,
                "body sway"),
    RiskFeature("falls_past_12m", "count", "falls detected or reported in the last 12 months", +1, 0.0, 10.0,
                "a previous fall, OR 7.3"),
)

NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
BY_NAME: dict[str, RiskFeature] = {f.name: f for f in FEATURES}

#: Score bands (probability of a fall in the next 30 days) -> RiskData.level.
LEVELS: tuple[tuple[str, float], ...] = (("low", 0.0), ("medium", 0.15), ("high", 0.35))


def level_of(score: float) -> str:
    """Map a calibrated 30-day fall probability to the contract's low/medium/high."""
    level = LEVELS[0][0]
    for name, lo in LEVELS:
        if score >= lo:
            level = name
    return level
