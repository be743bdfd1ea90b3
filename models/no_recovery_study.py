"""A held-out check of the no-recovery path's posture angles (``fallwatch models study-no-recovery``).

Why: the deployed angles (:class:`NoRecoverySettings` ``upright_deg`` / ``down_deg`` /
``pre_max_deg``) were adjusted by an earlier session after looking at two SisFall subjects it did
not record, so SisFall figures of the deployed settings are not independent. This re-derives the
angles by a nested procedure that never looks at the subjects it is scored on: for each outer
subject fold (the fast path's folds), the candidate with the highest no-recovery sensitivity +
specificity on the **training** subjects' trials (without room sensors; ties to the middle
candidate of the tied ones) is chosen, then scored on the held-out subjects. The candidates are
fixed here (the deployed one and one step either side), all between sitting upright (trunk
within about 20-30 deg of vertical) and lying (70-90 deg). Only the path without room sensors is
re-derived (a trial without an impact trigger cannot alert there, and is skipped).

Trials are extended by 60 s of their last second as in :mod:`fallwatch.models.fall_eval` (partly
simulated: the wearer stays as at the end), rooms simulated from the activity code as there.
The watch gets every impact trigger of the detector (the model's score only sets the
confidence, so a constant scorer gives the same decisions).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from fallwatch.models import fall_eval as E
from fallwatch.models import fall_train as T
from fallwatch.models import features as F
from fallwatch.models import sisfall
from fallwatch.models.detector import DeviceFallDetector, free_fall_s, is_device_drop
from fallwatch.models.no_recovery import NoRecoverySettings, NoRecoveryWatch, NoRooms, RoomView

#: (upright_deg, down_deg, pre_max_deg) candidates; deployed until issue 12: (35, 40, 55), since: (40, 50, 60)
CANDIDATES: tuple[tuple[float, float, float], ...] = ((30.0, 35.0, 50.0), (35.0, 40.0, 55.0), (40.0, 50.0, 60.0))


class _Zero:
    threshold = 1.0
    version = "triggers-only"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.zeros(len(batch), dtype=np.float32)


def trial_outcomes(trial: sisfall.Trial, settings: list[NoRecoverySettings], with_rooms: bool = True
                   ) -> np.ndarray:
    """(len(settings), 2) bool: the no-recovery path alerted on this (extended) trial, without and
    with simulated room sensors (``with_rooms`` False: the second column is left False)."""
    n = len(trial.acc_g)
    out = np.zeros((len(settings), 2), dtype=bool)
    if not with_rooms and (not n or float(F.magnitude(trial.acc_g).max()) < F.TRIGGER_G):
        return out  # without rooms only an impact trigger opens a watch
    acc_fw = (trial.acc_g @ sisfall.SENSOR_FRAME_AXES.T).astype(np.float32)
    peak = float(np.argmax(F.magnitude(trial.acc_g)) / trial.rate_hz) if n else 0.0
    sim = E.SimulatedRooms(trial.activity in E.IN_BED_CODES, peak if trial.activity in E.ON_CHAIR_CODES else None)
    rooms: list[RoomView] = [NoRooms(), sim] if with_rooms else [NoRooms()]
    tail = acc_fw[-round(trial.rate_hz):]
    ext = np.resize(tail, (int(E.EXTEND_S * trial.rate_hz), 3))
    acc_all = np.concatenate([acc_fw, ext])
    t = np.arange(len(acc_all)) / trial.rate_hz
    watches = [[NoRecoveryWatch(s) for _ in rooms] for s in settings]
    for ws in watches:
        for w, r in zip(ws, rooms, strict=True):
            w.rooms_sensed = r.sensed
    det = DeviceFallDetector(_Zero())
    step = round(E.CHUNK_S * F.RATE_HZ)
    for a in range(0, len(acc_all), step):
        b = min(len(acc_all), a + step)
        if a < n:
            e = min(n, b)
            det.feed(t[a:e], trial.acc_g[a:e], trial.gyro_dps[a:e])
            if e == n:
                det.flush()
        for ws in watches:
            for w in ws:
                w.feed(t[a:b], acc_all[a:b])
        now = float(t[b - 1])
        sim.now_s = now
        batch = det.pending_windows()
        if len(batch):
            for i, c in enumerate(det.inflight):
                if not is_device_drop(free_fall_s(batch[i]), c.peak_g):
                    for ws in watches:
                        for w in ws:
                            w.on_trigger(c.impact_t_s, c.peak_g, 0.0)
            det.resolve(np.zeros(len(batch), dtype=np.float32))
        for k, ws in enumerate(watches):
            for j, (w, r) in enumerate(zip(ws, rooms, strict=True)):
                if w.poll(now, r):
                    out[k, j] = True
    return out


def _youden(hit: np.ndarray, is_fall: np.ndarray) -> float:
    return float(hit[is_fall].mean() + (~hit[~is_fall]).mean())


def run(data_dir: Path, seed: int = 7, out: Path | None = None, with_rooms: bool = False) -> dict[str, Any]:
    from tqdm import tqdm

    t0 = time.time()
    trials = sisfall.load_all(data_dir, progress=True)
    base = NoRecoverySettings()
    settings = [dataclasses.replace(base, upright_deg=u, down_deg=d, pre_max_deg=p) for u, d, p in CANDIDATES]
    hits = np.stack([trial_outcomes(t, settings, with_rooms)
                     for t in tqdm(trials, desc="no-recovery", unit="trial")])
    # hits: (trials, candidates, rooms)
    subj = np.array([t.subject for t in trials])
    is_fall = np.array([t.is_fall for t in trials])
    groups = np.array([t.group for t in trials])
    subjects = sorted(set(subj))
    folds = T.subject_folds(subjects, T.OUTER_FOLDS, seed)
    chosen = np.zeros(len(trials), dtype=int)
    fold_choice = []
    for held_out in folds:
        train = ~np.isin(subj, held_out)
        j = np.array([_youden(hits[train, k, 0], is_fall[train]) for k in range(len(settings))])
        best = np.flatnonzero(j >= j.max() - 1e-9)
        k = int(best[len(best) // 2])
        chosen[~train] = k
        fold_choice.append({"held_out": held_out, "candidate": list(CANDIDATES[k]),
                            "train_youden": [round(float(x), 4) for x in j]})
    nested = hits[np.arange(len(trials)), chosen]  # (trials, rooms)

    def figs(h: np.ndarray, m: np.ndarray) -> dict[str, Any]:
        f, a = m & is_fall, m & ~is_fall
        hours = sum(trials[i].duration_s for i in np.flatnonzero(a)) / 3600
        return {"sensitivity": round(float(h[f].mean()), 4) if f.any() else None,
                "specificity": round(float((~h[a]).mean()), 4) if a.any() else None,
                "false_alarm_trials": int(h[a].sum()), "adl_hours": round(hours, 3),
                "false_alarm_trials_per_hour": round(float(h[a].sum() / hours), 3) if hours else None}

    def block(h: np.ndarray) -> dict[str, Any]:
        allm = np.ones(len(trials), dtype=bool)
        return {rooms: {"all": figs(h[:, j], allm), **{g: figs(h[:, j], groups == g) for g in sorted(set(groups))}}
                for j, rooms in enumerate(("none", "rooms")[:1 + with_rooms])}

    codes = sorted({t.activity for t in trials})
    code_rows = {c: {"trials": int((m := np.array([t.activity == c for t in trials])).sum()),
                     "none": round(float(nested[m, 0].mean()), 4)}
                 for c in codes}
    result = {
        "candidates": [list(c) for c in CANDIDATES], "deployed": [base.upright_deg, base.down_deg, base.pre_max_deg],
        "folds": fold_choice, "nested": block(nested), "nested_codes": code_rows,
        "per_candidate_all_subjects": {str(list(c)): block(hits[:, k]) for k, c in enumerate(CANDIDATES)},
        "seconds": round(time.time() - t0, 1),
    }
    if out is not None:
        out.write_text(json.dumps(result, indent=1))
    return result
