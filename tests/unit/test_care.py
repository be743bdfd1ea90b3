"""The resident page's logic: factors -> suggested actions, the week's change, the visit ranking."""

from __future__ import annotations

from fallwatch.gateway.care import (
    ACTIONS,
    DAY_MS,
    FACTOR_ACTIONS,
    FACTORS,
    fall_state,
    rank_visits,
    suggested_actions,
    top_factors,
    week_change,
)
from fallwatch.models import risk_features as RF


def test_every_model_factor_has_words_and_actions() -> None:
    # a factor the model can publish but the console cannot explain would show as a code
    assert set(RF.NAMES) == set(FACTORS) == set(FACTOR_ACTIONS)
    for factor, actions in FACTOR_ACTIONS.items():
        assert actions and set(actions) <= set(ACTIONS) - {"other"}, factor
    # every intervention of the issue is suggested by some factor
    assert {a for acts in FACTOR_ACTIONS.values() for a in acts} == set(ACTIONS) - {"other"}


def test_suggested_actions_follow_the_strongest_factor_and_come_once() -> None:
    got = suggested_actions(["night_bathroom_visits", "sway_rms_mg", "nonsense"])
    assert [a["action"] for a in got] == ["hazard_check", "medication_review", "balance_training", "hip_protectors"]
    assert got[1]["factors"] == ["night_bathroom_visits", "sway_rms_mg"]  # both point to the medication review
    assert suggested_actions([]) == []


def test_top_factors_are_the_ones_that_raise_the_score() -> None:
    assert top_factors({"a": 0.1, "b": 0.7, "c": -0.4, "d": 0.3}, 2) == [("b", 0.7), ("d", 0.3)]
    assert top_factors({"c": -0.4}) == []


def test_week_change_compares_with_the_score_a_week_before() -> None:
    t0 = 1_760_000_000_000
    pts = [(t0 + d * DAY_MS + (d % 3) * 3_600_000, round(0.10 + 0.01 * d, 2)) for d in range(15)]
    got = week_change(pts)
    assert got is not None
    assert got["score"] == 0.24 and got["ts_ms"] == pts[-1][0]
    assert got["change"] == round(0.24 - 0.17, 4) and got["since_ms"] == pts[7][0]
    # followed for three days: compared with the first score
    short = week_change(pts[:3])
    assert short is not None and short["change"] == round(0.12 - 0.10, 4) and short["since_ms"] == pts[0][0]
    one = week_change(pts[:1])
    assert one is not None and one["change"] is None
    assert week_change([]) is None


def test_the_largest_rise_is_visited_first() -> None:
    rows = [{"resident_id": "a", "score": 0.50, "change": 0.02}, {"resident_id": "b", "score": 0.20, "change": 0.12},
            {"resident_id": "c", "score": 0.60, "change": None}, {"resident_id": "d", "score": 0.40, "change": -0.1},
            {"resident_id": "e", "score": 0.30, "change": 0.12}, {"resident_id": "f", "score": None, "change": None}]
    assert [r["resident_id"] for r in rank_visits(rows)] == ["e", "b", "a", "d", "c", "f"]


def test_fall_state_in_words() -> None:
    base = {"kind": "fall", "status": "raised", "detail": "impact,lying", "lying_s": 40.0, "data_status": "alert"}
    assert fall_state(base) == "still_lying"
    assert fall_state({**base, "detail": "impact,recovered", "data_status": "cancelled"}) == "got_up"
    assert fall_state({**base, "detail": "impact,cancelled_by_wearer", "data_status": "cancelled"}) == "cancelled"
    assert fall_state({**base, "status": "cleared"}) == "resolved"
    assert fall_state({**base, "detail": "impact", "lying_s": 0.0}) == "no_news"
    assert fall_state({"kind": "device_offline", "status": "raised"}) == "raised"
