"""eval-fall and the training pipeline on real SisFall trials (skipped without the data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_models_sisfall import SISFALL, need_data

from fallwatch.models import sisfall

pytestmark = pytest.mark.data


def _subjects() -> list[str]:
    return sisfall.list_subjects(need_data())


def _subset_dir(tmp_path: Path, subjects: list[str]) -> Path:
    """A data dir with only some subjects (symlinks: nothing is copied)."""
    d = tmp_path / "subset"
    d.mkdir()
    for s in subjects:
        src = SISFALL / f"{s}.tar.xz" if (SISFALL / f"{s}.tar.xz").exists() else SISFALL / s
        (d / src.name).symlink_to(src)
    return d


def test_eval_fall_cli_json_on_any_dir_of_the_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fallwatch.models.cli import main
    from fallwatch.models.detector import DEFAULT_MODEL_PATH

    if not DEFAULT_MODEL_PATH.exists():
        pytest.skip("no shipped model")
    subjects = _subjects()
    pick = [next(s for s in subjects if s.startswith("SA"))]
    pick += [s for s in subjects if s.startswith("SE")][:1]
    data = _subset_dir(tmp_path, pick)
    assert main(["models", "eval-fall", "--data", str(data), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    trials = [t for s in pick for t in sisfall.load_subject(data, s)]
    assert result["trials"] == len(trials) == len([line for line in out if line.split(" ")[0].count("_") == 2])
    assert result["fall_trials"] == sum(t.is_fall for t in trials)
    assert result["subjects"] == sorted(pick)
    for key in ("sensitivity", "specificity", "f1", "adl_hours", "false_alarms_per_hour", "median_latency_s"):
        assert key in result
    assert set(result["groups"]) == {s[:2] for s in pick}
    sa = result["groups"]["SA"]
    # the shipped model was trained on these subjects: this checks the pipeline, not generalisation
    assert sa["sensitivity"] >= 0.95 and sa["specificity"] >= 0.95
    assert 0 < sa["median_latency_s"] < 3.5
    # issue 12: per path (fast / no-recovery / combined, without and with simulated rooms) and per code
    paths = result["paths"]
    assert set(paths) == {"fast", "no_recovery", "combined"}
    for p in paths.values():
        for fig in (p, p["rooms"], *p["groups"].values()):
            assert {"sensitivity", "specificity", "median_latency_s"} <= set(fig)
    assert paths["fast"]["sensitivity"] == result["sensitivity"]  # the top-level keys are the fast path
    assert paths["combined"]["sensitivity"] >= paths["fast"]["sensitivity"]
    assert 44.0 <= paths["no_recovery"]["median_latency_s"] <= 60.0  # the default no-recovery time
    codes = result["codes"]
    assert {t.activity for t in trials} == set(codes)
    assert sum(c["trials"] for c in codes.values()) == len(trials)
    assert all(0.0 <= c["combined"] <= 1.0 for c in codes.values())


def test_held_out_subject_is_detected_by_a_model_trained_without_it() -> None:
    """A miniature of the CV: train on a few subjects, stream an unseen one through the detector."""
    from threadpoolctl import threadpool_limits

    from fallwatch.models import fall_train as T
    from fallwatch.models.fall_eval import run_trials, summarise

    sa = [s for s in _subjects() if s.startswith("SA")]
    if len(sa) < 4:
        pytest.skip("need at least 4 adult subjects")
    held, train = sa[-1], sa[:3]
    trials = sisfall.load_all(SISFALL, train)
    ws = T.build_windows(trials)
    names = T.feature_names("all")
    with threadpool_limits(1):
        clf = T.fit(ws, np.ones(len(ws.y), dtype=bool), names, seed=0)
        scorer = T.SkFallScorer(clf, names, threshold=0.5)
        # trials R01-R02 of every activity: all activities, a third of the streaming time
        unseen = [t for t in sisfall.load_subject(SISFALL, held) if t.trial <= 2]
        s = summarise(run_trials(unseen, scorer))
    assert s["subjects"] == [held]
    assert s["sensitivity"] >= 0.9, s["missed_falls"]
    assert s["specificity"] >= 0.9, s["false_alarm_trials"]
    assert s["median_latency_s"] < 3.0
