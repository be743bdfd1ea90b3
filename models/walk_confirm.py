"""The walking upright's confirmation rule (docs/models.md, "fourth round"), applied to two runs.

Why a module: the rule was committed before the runs; applying it by code, to the runs' own
``metrics.json``, keeps the outcome from being read off by hand. R1 and R2 come from the run on
the shipped folds (``train-fall --features walk --augment --robust --seed 7``: ``cv`` and ``cv_walk_withheld``), R3
from the run on fresh folds (``--features walk --seed 11 --compare base``: its ``cv`` and ``comparison``).
"""

from __future__ import annotations

from typing import Any

#: the shipped model 1.0's held-out CV (metrics.json before this round): the comparator
SHIPPED = {"sensitivity": 0.974, "false_alarms_per_hour": 0.3721, "se_false_alarms_per_hour": 0.9106}
FA_TARGET = 0.5
RULE = ("R1 (shipped folds): sensitivity ≥ 97.40 %, FA/h ≤ 0.5, SE FA/h ≤ 0.911; R2 (same fold models, every "
        "reference withheld): sensitivity ≥ 96.40 %, FA/h ≤ 0.572; R3 (fresh folds, seed 11): sensitivity ≥ "
        "base's − 0.25 points, FA/h ≤ 0.5 and ≤ base's. Ship only if all pass.")


def _se_fa(s: dict[str, Any]) -> float:
    return float(s.get("groups", {}).get("SE", {}).get("false_alarms_per_hour") or 0.0)


def _check(run: str, check: str, measured: float, needed: str, passed: bool, pct: bool = False) -> dict[str, Any]:
    shown = f"{100 * measured:.2f} %" if pct else f"{measured:.3f}"
    return {"run": run, "check": check, "measured": shown, "needed": needed, "passed": bool(passed)}


def confirm(r1: dict[str, Any], r3: dict[str, Any] | None) -> dict[str, Any]:
    """The rule's checks and outcome from the two runs' metrics documents (``r3`` None: R3 was not
    run, because R1 or R2 had already failed; it then counts as failed)."""
    cv, wh = r1["cv"], r1.get("cv_walk_withheld")
    if wh is None:
        raise ValueError("R1 has no cv_walk_withheld: it was not trained with tilt_walk_deg")
    checks = [
        _check("R1", "sensitivity", cv["sensitivity"], "≥ 97.40 %", cv["sensitivity"] >= SHIPPED["sensitivity"], True),
        _check("R1", "false alarms/h", cv["false_alarms_per_hour"], "≤ 0.5", cv["false_alarms_per_hour"] <= FA_TARGET),
        _check("R1", "SE false alarms/h", _se_fa(cv), "≤ 0.911", _se_fa(cv) <= SHIPPED["se_false_alarms_per_hour"]),
        _check("R2", "sensitivity", wh["sensitivity"], "≥ 96.40 %", wh["sensitivity"] >= SHIPPED["sensitivity"] - 0.01,
               True),
        _check("R2", "false alarms/h", wh["false_alarms_per_hour"], "≤ 0.572",
               wh["false_alarms_per_hour"] <= SHIPPED["false_alarms_per_hour"] + 0.2),
    ]
    if r3 is None:
        checks.append({"run": "R3", "check": "fresh folds", "measured": "not run (R1 or R2 had failed)",
                       "needed": "", "passed": False})
        return _outcome(checks)
    comp = r3["comparison"]
    if "base" not in comp:
        raise ValueError("R3 has no 'base' comparison: run train-fall --seed 11 --compare base")
    base, walk = comp["base"], r3["cv"]
    checks += [
        _check("R3", "sensitivity", walk["sensitivity"], f"≥ {100 * base['sensitivity'] - 0.25:.2f} % (base "
               f"{100 * base['sensitivity']:.2f} %)", walk["sensitivity"] >= base["sensitivity"] - 0.0025, True),
        _check("R3", "false alarms/h", walk["false_alarms_per_hour"],
               f"≤ 0.5 and ≤ base's {base['false_alarms_per_hour']:.3f}",
               walk["false_alarms_per_hour"] <= min(FA_TARGET, base["false_alarms_per_hour"])),
    ]
    return _outcome(checks)


def _outcome(checks: list[dict[str, Any]]) -> dict[str, Any]:
    ok = all(c["passed"] for c in checks)
    return {"rule": RULE, "checks": checks, "passed": ok,
            "outcome": "every check passed: the candidate ships" if ok else "a check failed: model 1.0 stays"}
