"""A *simulated* cohort of home-care residents for the fall-risk model.

There is no real cohort in this project yet. This generator makes residents whose daily
features (the contract in :mod:`fallwatch.models.risk_features`) and 30-day fall outcome follow the
directions and rough sizes of published findings (see ``docs/models.md``):

- a previous fall: OR 7.3;
- >= 2 night bathroom visits: OR 1.84;
- +10 steps/min cadence: ~13 % fewer falls (OR 0.87 per +10 spm);
- TUG >= 12 s, slower gait, a week-by-week decline in gait speed, higher stride-time
  variability, slower five-times sit-to-stand, less time upright, more sway: higher risk.

Each resident has a latent frailty, a chance of an *acute decline* (infection, a new drug)
that shows as a falling gait-speed trend and more night activity, and a nocturia level.
Features of each day are the resident's true values plus day-to-day measurement noise;
the outcome depends on the true values. Everything is seeded and deterministic.

The simulation's effect sizes are assumptions: what a model learns here shows the
pipeline works, not how well falls can be predicted in real homes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fallwatch.models.risk_features import BY_NAME, NAMES

#: Log-odds effects on the 30-day fall outcome (per unit stated). "published": the size
#: quoted in docs/domain.md; "assumed": direction published, size chosen for this simulation.
EFFECTS = {
    "previous_fall": np.log(7.3),  # published: any fall in the last 12 months, OR 7.3
    "bathroom_ge2": np.log(1.84),  # published: >= 2 visits per night, OR 1.84
    "cadence_per_10spm": np.log(0.87),  # published: +10 steps/min ~ 13 % fewer falls
    "tug_ge12": np.log(2.0),  # assumed size (TUG >= 12 s cut-off is published)
    "gait_per_0.1_m_s_slower": np.log(1.6),  # assumed
    "trend_per_1pct_wk_decline": np.log(1.8),  # assumed
    "stride_cv_per_0.01": np.log(1.35),  # assumed (per 1 percentage point of CV)
    "sts_per_s": np.log(1.34),  # assumed: OR 1.06 per s of five-times STS ~ 1.34 per s of one transition
    "upright_per_h_less": np.log(1.2),  # assumed
    "sway_per_10mg": np.log(1.1),  # assumed
}
#: The effects whose size is a published figure (the others only have a published direction).
PUBLISHED = frozenset({"previous_fall", "bathroom_ge2", "cadence_per_10spm"})
BASE_LOGIT = -3.5


@dataclass
class Cohort:
    X: np.ndarray  # (residents * days, len(NAMES)) float32, contract order
    y: np.ndarray  # (residents * days,) 1 = fell within 30 days of the day
    resident: np.ndarray  # (residents * days,) resident index
    risk: np.ndarray  # (residents,) true 30-day fall probability


def simulate(n_residents: int = 4000, days: int = 7, seed: int = 0) -> Cohort:
    """Simulate ``n_residents`` residents, ``days`` feature rows each."""
    rng = np.random.default_rng(seed)
    n = n_residents
    z = rng.normal(size=n)  # frailty
    acute = rng.random(n) < 0.15
    nocturia = rng.normal(size=n)

    true = {
        "gait_speed_m_s": 1.0 - 0.17 * z - 0.08 * acute + rng.normal(0, 0.06, n),
        "gait_speed_trend_pct_wk": rng.normal(0, 0.8, n) - 3.0 * acute,
        "cadence_spm": 104 - 7 * z - 4 * acute + rng.normal(0, 5, n),
        "stride_time_cv": np.exp(np.log(0.026) + 0.28 * z + 0.2 * acute + rng.normal(0, 0.15, n)),
        "sit_to_stand_s": 2.4 + 0.56 * z + rng.normal(0, 0.3, n),
        "tug_s": 10 + 2.8 * z + 1.5 * acute + rng.normal(0, 1.2, n),
        "time_upright_h": 5.5 - 1.1 * z - 0.8 * acute + rng.normal(0, 0.8, n),
        "night_bathroom_visits": np.exp(0.25 * z + 0.5 * nocturia + 0.3 * acute),  # Poisson mean
        "sway_rms_mg": 25 * np.exp(0.3 * z + rng.normal(0, 0.2, n)),
        "falls_past_12m": rng.poisson(np.exp(-1.6 + 0.7 * z)).astype(float),
    }
    true["night_activity_events"] = true["night_bathroom_visits"] + 1.0 + 0.5 * acute + 0.3 * np.maximum(z, 0)

    e = EFFECTS
    logit = (
        BASE_LOGIT
        + e["previous_fall"] * (true["falls_past_12m"] > 0)
        + e["bathroom_ge2"] * (true["night_bathroom_visits"] >= 2)
        + e["cadence_per_10spm"] * (true["cadence_spm"] - 104) / 10
        + e["tug_ge12"] * (true["tug_s"] >= 12)
        + e["gait_per_0.1_m_s_slower"] * (1.0 - true["gait_speed_m_s"]) / 0.1
        + e["trend_per_1pct_wk_decline"] * (-true["gait_speed_trend_pct_wk"])
        + e["stride_cv_per_0.01"] * (true["stride_time_cv"] - 0.026) / 0.01
        + e["sts_per_s"] * (true["sit_to_stand_s"] - 2.4)
        + e["upright_per_h_less"] * (5.5 - true["time_upright_h"])
        + e["sway_per_10mg"] * (true["sway_rms_mg"] - 25) / 10
    )
    risk = 1 / (1 + np.exp(-logit))
    fell = rng.random(n) < risk

    # Day rows: true value + that day's measurement noise (counts drawn per night).
    noise_sd = {
        "gait_speed_m_s": 0.05, "gait_speed_trend_pct_wk": 0.5, "cadence_spm": 3.0, "stride_time_cv": 0.003,
        "sit_to_stand_s": 0.2, "tug_s": 0.8, "time_upright_h": 0.6, "sway_rms_mg": 3.0,
    }
    rows = np.empty((n, days, len(NAMES)), dtype=np.float64)
    for j, name in enumerate(NAMES):
        base = np.repeat(true[name][:, None], days, axis=1)
        if name in ("night_bathroom_visits", "night_activity_events"):
            val = rng.poisson(base).astype(float)
        elif name == "falls_past_12m":
            val = base
        else:
            val = base + rng.normal(0, noise_sd[name], base.shape)
        f = BY_NAME[name]
        rows[:, :, j] = np.clip(val, f.lo, f.hi)
    X = rows.reshape(n * days, len(NAMES)).astype(np.float32)
    return Cohort(X, np.repeat(fell, days).astype(np.int8), np.repeat(np.arange(n), days), risk)
