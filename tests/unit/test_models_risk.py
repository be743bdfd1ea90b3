"""Fall-risk model: contract, monotonicity, explanation, ONNX parity, held-out discrimination."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from fallwatch.models import risk
from fallwatch.models import risk_features as RF
from fallwatch.models.risk_cohort import simulate

TYPICAL = {
    "gait_speed_m_s": 0.9, "gait_speed_trend_pct_wk": 0.0, "cadence_spm": 100.0, "stride_time_cv": 0.03,
    "sit_to_stand_s": 2.5, "tug_s": 11.0, "time_upright_h": 5.0, "night_activity_events": 2.0,
    "night_bathroom_visits": 1.0, "sway_rms_mg": 25.0, "falls_past_12m": 0.0,
}


@pytest.fixture(scope="module")
def model() -> risk.RiskModel:
    if not risk.DEFAULT_PATH.exists():
        pytest.skip("no shipped risk model (run `fallwatch models train-risk`)")
    return risk.RiskModel()


def test_typical_resident_covers_the_contract() -> None:
    assert set(TYPICAL) == set(RF.NAMES)
    for f in RF.FEATURES:
        assert f.lo <= TYPICAL[f.name] <= f.hi and f.direction in (-1, 1) and f.unit


def test_slower_gait_gives_a_higher_score(model: risk.RiskModel) -> None:
    scores = [model.score({**TYPICAL, "gait_speed_m_s": v})[0] for v in (1.3, 1.0, 0.8, 0.6, 0.4)]
    assert all(b > a for a, b in itertools.pairwise(scores)), scores


@pytest.mark.parametrize("feature", RF.NAMES)
def test_every_feature_moves_the_score_in_its_published_direction(model: risk.RiskModel, feature: str) -> None:
    f = RF.BY_NAME[feature]
    worse = TYPICAL[feature] + f.direction * (f.hi - f.lo) * 0.05
    assert model.score({**TYPICAL, feature: worse})[0] > model.score(TYPICAL)[0]


def test_factors_explain_the_score(model: risk.RiskModel) -> None:
    resident = {**TYPICAL, "night_bathroom_visits": 4.0, "falls_past_12m": 1.0, "gait_speed_m_s": 0.5}
    p, level, factors = model.score(resident, top=5)
    names = [f.name for f in factors]
    assert {"night_bathroom_visits", "falls_past_12m", "gait_speed_m_s"} <= set(names)
    contribs = [f.contribution for f in factors]
    assert contribs == sorted(contribs, reverse=True) and all(c > 0 for c in contribs)
    # the contributions are an exact decomposition of the logit
    x, _ = model.vector(resident)
    logit = model.intercept + float(model.contributions(x).sum())
    assert p == pytest.approx(1 / (1 + math.exp(-logit)), abs=1e-4)
    assert level == RF.level_of(p) and level in ("medium", "high")
    low_p, low_level, _ = model.score({**TYPICAL, "gait_speed_m_s": 1.3, "cadence_spm": 120.0})
    assert low_p < p and low_level == "low"


def test_onnx_matches_the_linear_model_it_was_exported_from(model: risk.RiskModel) -> None:
    rng = np.random.default_rng(0)
    cohort = simulate(300, 2, seed=99)
    X = cohort.X[rng.permutation(len(cohort.X))[:200]]
    p_onnx = model.predict(X)
    # logistic regression: P = sigmoid(w . (x - mean) / scale + b), from the metadata
    Xc = np.clip(X, model._lo, model._hi).astype(np.float64)
    z = ((Xc - model.mean) / model.scale) @ model.coef + model.intercept
    p_py = 1 / (1 + np.exp(-z))
    assert np.abs(p_onnx - p_py).max() < 1e-4
    # and the sum of factor contributions reproduces the same logit
    c = np.stack([model.contributions(x) for x in Xc.astype(np.float32)])
    assert np.allclose(c.sum(axis=1) + model.intercept, z, atol=1e-4)


def test_train_export_parity_and_held_out_auc(tmp_path: Path) -> None:
    m = risk.train(out=tmp_path, seed=3, n_residents=3000)
    assert m["onnx_sklearn_max_abs_diff"] < 1e-5
    assert (tmp_path / "reliability.png").stat().st_size > 1000
    assert "SIMULATED" in (tmp_path / "MODEL_CARD.md").read_text()
    ev = risk.evaluate(tmp_path / "risk_model.onnx", seed=4, n_residents=800)
    assert ev["auc"] > 0.85  # a fresh cohort the model never saw
    assert abs(ev["mean_predicted"] - ev["base_rate"]) < 0.05  # calibrated in the large


def test_missing_features_are_imputed_not_fatal(model: risk.RiskModel) -> None:
    partial = {k: v for k, v in TYPICAL.items() if k not in ("tug_s", "sway_rms_mg")}
    _x, missing = model.vector(partial)
    assert set(missing) == {"tug_s", "sway_rms_mg"}
    p, _, factors = model.score(partial)
    assert 0 < p < 1 and all(f.name not in missing for f in factors if f.contribution > 0)


def test_cohort_is_seeded_and_follows_the_findings() -> None:
    a, b = simulate(500, 2, seed=5), simulate(500, 2, seed=5)
    assert np.array_equal(a.X, b.X) and np.array_equal(a.y, b.y)
    c = simulate(4000, 1, seed=6)
    col = {n: i for i, n in enumerate(RF.NAMES)}
    prev = c.X[:, col["falls_past_12m"]] > 0
    assert c.y[prev].mean() > 2 * c.y[~prev].mean()  # previous fall: much higher risk
    slow = c.X[:, col["gait_speed_m_s"]] < 0.8
    assert c.y[slow].mean() > c.y[~slow].mean()
