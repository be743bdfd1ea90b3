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
    feature_names: tuple[str, ...] = ()

    def predict(self, batch: np.ndarray, refs: np.ndarray | None = None) -> np.ndarray:
        return np.zeros(len(batch), dtype=np.float32)


def trial_outcomes(trial: sisfall.Trial, settings: list[NoRecoverySettings], with_rooms: bool = True,
                   scorer: Any = None) -> np.ndarray:
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
    det = DeviceFallDetector(scorer or _Zero())
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
            p = scorer.predict(batch) if scorer is not None else np.zeros(len(batch), dtype=np.float32)
            for i, c in enumerate(det.inflight):
                if not is_device_drop(free_fall_s(batch[i]), c.peak_g):
                    for ws in watches:
                        for w in ws:
                            w.on_trigger(c.impact_t_s, c.peak_g, float(p[i]))
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


#: candidate gates (``NoRecoverySettings.min_fall_p``): the fast model's P(fall) an impact needs to
#: open a no-recovery watch
GATES: tuple[float, ...] = (0.0, 0.001, 0.003, 0.01, 0.03)


class _Lookup:
    """The fast model's scores of one trial's triggered windows, handed out in stream order (the
    detector cuts the same windows in the same order as :func:`fall_train.build_windows`)."""

    threshold = 1.0
    version = "lookup"

    def __init__(self, scores: np.ndarray) -> None:
        self.scores, self.used = np.asarray(scores, dtype=np.float32), 0

    def predict(self, batch: np.ndarray, refs: np.ndarray | None = None) -> np.ndarray:
        out = self.scores[self.used:self.used + len(batch)]
        self.used += len(batch)
        if len(out) != len(batch):
            raise RuntimeError("the stream cut more windows than the window set holds")
        return out


def run_gate(data_dir: Path, seed: int = 7, out: Path | None = None, cache: Path | None = None) -> dict[str, Any]:
    """Nested choice of the no-recovery gate ``min_fall_p`` (issue 12), rule stated before the run:

    - folds: the fast path's 3 outer subject folds (seed 7) with its shipped training (soft +
      robustness augmentation); inside each, the threshold rule's 2 inner subject folds;
    - per outer fold, on the training subjects: a trial's no-recovery outcome with gate g is taken
      as its ungated outcome (streamed: no room sensors, deployed angles, trials extended as in the
      evaluation) **and** a triggered window with inner out-of-fold P(fall) >= g (a cheap bound:
      exact streaming of every training trial with scores was too slow for the session); the gate
      in :data:`GATES` with the highest no-recovery sensitivity + specificity is chosen, ties to the
      smallest; the held-out subjects are then **streamed exactly** with the outer fold model's
      scores, with the chosen gate and without;
    - ship: the median of the three picks, only if it is above 0 and the nested held-out
      no-recovery figures keep the sensitivity of the ungated path (same folds and scores) with
      fewer false-alarm trials; else 0 (no gate) stays.
    """
    from tqdm import tqdm

    from fallwatch.models import fall_nested as N
    from fallwatch.models import fall_train as TT

    t0 = time.time()
    sets = N.windows(data_dir, seed, cache)
    rec = sets["rec"]
    trials = rec.trials
    ws = dataclasses.replace(rec, aug=N._concat([sets["soft"], sets["robust"]]))
    names = TT.feature_names(TT.FEATURE_SET)
    cols = F.feature_index(names)
    subjects = sorted({t.subject for t in trials})
    subj_w = rec.subjects()
    base = NoRecoverySettings()
    is_fall = np.array([t.is_fall for t in trials])
    groups = np.array([t.group for t in trials])
    tsubj = np.array([t.subject for t in trials])
    ungated = np.array([trial_outcomes(t, [base], with_rooms=False)[0, 0]
                        for t in tqdm(trials, desc="ungated no-recovery", unit="trial")])
    folds = TT.subject_folds(subjects, 3, seed)
    fold_doc: list[dict[str, Any]] = []
    held_probs = np.zeros(len(rec.y), dtype=np.float32)
    for held in folds:
        train_s = [s for s in subjects if s not in held]
        oof = np.zeros(len(rec.y), dtype=np.float32)
        for ifold in TT.subject_folds(train_s, 2, seed + 1):
            clf = TT.fit(ws, np.isin(subj_w, [s for s in train_s if s not in ifold]), names, seed)
            m = np.isin(subj_w, ifold)
            oof[m] = clf.predict_proba(rec.X[m][:, cols])[:, 1]
        clf = TT.fit(ws, np.isin(subj_w, train_s), names, seed)
        h = np.isin(subj_w, held)
        held_probs[h] = clf.predict_proba(rec.X[h][:, cols])[:, 1]
        best = np.zeros(len(trials), dtype=np.float32)
        np.maximum.at(best, rec.trial_idx, oof)
        tr = np.isin(tsubj, train_s)
        j = np.array([_youden((ungated & (best >= g))[tr], is_fall[tr]) for g in GATES])
        k = int(np.flatnonzero(j >= j.max() - 1e-9)[0])
        fold_doc.append({"held_out": held, "gate": GATES[k], "k": k, "train_youden": [round(float(x), 4) for x in j]})
    k_of = {s: int(f["k"]) for f, held in zip(fold_doc, folds, strict=True) for s in held}
    settings = [dataclasses.replace(base, min_fall_p=g) for g in GATES]
    held_hits = np.zeros((len(trials), len(GATES)), dtype=bool)
    for i, t in enumerate(tqdm(trials, desc="held out, gated", unit="trial")):
        held_hits[i] = trial_outcomes(t, settings, with_rooms=False,
                                      scorer=_Lookup(held_probs[rec.trial_idx == i]))[:, 0]

    def figs(hit: np.ndarray, m: np.ndarray) -> dict[str, Any]:
        f, a = m & is_fall, m & ~is_fall
        hours = sum(trials[i].duration_s for i in np.flatnonzero(a)) / 3600
        return {"sensitivity": round(float(hit[f].mean()), 4) if f.any() else None,
                "specificity": round(float((~hit[a]).mean()), 4) if a.any() else None,
                "false_alarm_trials": int(hit[a].sum()), "adl_hours": round(hours, 3),
                "false_alarm_names": [trials[i].name for i in np.flatnonzero(a & hit)]}

    allm = np.ones(len(trials), dtype=bool)
    nested_hit = np.array([held_hits[i, k_of[str(tsubj[i])]] for i in range(len(trials))])
    per_gate = {str(g): {"all": figs(held_hits[:, k], allm), "SE": figs(held_hits[:, k], groups == "SE")}
                for k, g in enumerate(GATES)}
    nested = {"all": figs(nested_hit, allm), "SE": figs(nested_hit, groups == "SE")}
    pick = float(np.median([f["gate"] for f in fold_doc]))
    ung = per_gate[str(GATES[0])]["all"]
    ship = pick if (pick > 0 and (nested["all"]["sensitivity"] or 0) >= (ung["sensitivity"] or 0)
                    and nested["all"]["false_alarm_trials"] < ung["false_alarm_trials"]) else 0.0
    result = {"gates": list(GATES), "folds": fold_doc, "nested": nested, "held_out_per_gate": per_gate,
              "pick": pick, "ship": ship,
              "lost_falls": [trials[i].name for i in np.flatnonzero(is_fall & held_hits[:, 0] & ~nested_hit)],
              "held_out_fast_scores_of_ungated_false_alarms": {
                  trials[i].name: round(float(held_probs[rec.trial_idx == i].max(initial=0.0)), 4)
                  for i in np.flatnonzero(~is_fall & held_hits[:, 0])},
              "seconds": round(time.time() - t0, 1)}
    if out is not None:
        out.write_text(json.dumps(result, indent=1))
    return result
