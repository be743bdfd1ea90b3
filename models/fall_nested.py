"""Issue 12's levers for the fast path, chosen by a nested subject-wise rule (``fallwatch models nested-fall``).

Why a nested choice: ``study-fall`` picked its winner by the held-out (outer) figures themselves,
which makes the winner's figures optimistic. Here every choice is made on the **inner** folds
(out-of-fold scores of the outer fold's training subjects), and the outer held-out subjects only
score the choice; the held-out figures of "the rule's pick in each fold" are the honest estimate of
the whole procedure.

The rule (stated before the run, in the commit that added this module):

1. Folds: the shipped model's 3 outer subject folds (seed 7, SA and SE dealt across folds) and,
   inside each, 2 inner subject folds of its training subjects (:func:`fall_train.subject_folds`).
2. For every candidate and outer fold: inner out-of-fold window scores on the training subjects;
   threshold by the deployed rule (the lowest grid threshold with at most
   :data:`fall_train.FA_TARGET_PER_H` false alarms per ADL hour on those scores); at that threshold
   the inner figures: sensitivity, false alarms per ADL hour (all and SE).
3. Choice per outer fold: among candidates whose inner false alarms per hour are at most the
   target, the highest inner sensitivity; candidates within **0.25 points** of that sensitivity
   count as tied, and ties go to the lowest inner SE false alarms per hour, then to the shipped
   configuration, then to the cheaper one (order of :data:`CANDIDATES`).
4. Shipping: a candidate replaces the shipped configuration only if the rule picks it in at least
   2 of the 3 outer folds **and** the nested procedure's held-out figures are not worse than the
   shipped configuration's held-out figures on the same folds (sensitivity not lower, false alarms
   per hour at most the target). Otherwise the shipped model stays.

Candidates: the shipped configuration (trees on the 23 base features, soft-fall + robustness
augmentation); soft-fall and robustness augmentation separately and neither (recordings only);
gyroscope-gain robustness copies on top of the shipped augmentation; five descent / post-event
stillness features on top (``features.CANDIDATE_FEATURES``); and the small 1-D
CNN of :mod:`fall_seq` on the same windows and augmentation, with the same threshold rule.
Every figure is from **real trials of held-out subjects** (augmented trials are made from training
subjects only and never evaluated); stress sets are the held-out trials with a fixed gyroscope /
accelerometer gain error, scored with the fold's own model and threshold.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fallwatch.models import fall_study as S
from fallwatch.models import fall_train as T
from fallwatch.models import features as F
from fallwatch.models import sisfall

log = logging.getLogger(__name__)

OUTER, INNER = 3, 2
TIE_POINTS = 0.0025


@dataclasses.dataclass(frozen=True)
class Candidate:
    name: str
    model: str  # "trees" | "cnn"
    features: str  # fall_train.feature_names key (trees)
    aug: tuple[str, ...]  # of "soft", "robust", "gyro"


CANDIDATES: tuple[Candidate, ...] = (
    Candidate("shipped (soft+robust)", "trees", "all", ("soft", "robust")),
    Candidate("recordings", "trees", "all", ()),
    Candidate("soft", "trees", "all", ("soft",)),
    Candidate("robust", "trees", "all", ("robust",)),
    Candidate("soft+robust+gyro", "trees", "all", ("soft", "robust", "gyro")),
    Candidate("soft+robust, +descent features", "trees", "all+descent", ("soft", "robust")),
    Candidate("soft+robust, +tilt from walking upright", "trees", "all+walk", ("soft", "robust")),
    Candidate("cnn (soft+robust)", "cnn", "", ("soft", "robust")),
)

#: Trials whose walking gives a subject's upright reference (SisFall: walking slowly / quickly)
WALK_CODES = ("D01", "D02")
SHIPPED = CANDIDATES[0].name

STRESS: dict[str, Callable[[sisfall.Trial, np.random.Generator], sisfall.Trial]] = {
    "gyro_0.85": lambda t, r: T.perturb(t, r, rotate=False, gain=(1.0, 0.85)),
    "gyro_1.15": lambda t, r: T.perturb(t, r, rotate=False, gain=(1.0, 1.15)),
    "gain_0.85": lambda t, r: T.perturb(t, r, rotate=False, gain=(0.85, 0.85)),
    "gain_1.15": lambda t, r: T.perturb(t, r, rotate=False, gain=(1.15, 1.15)),
}


def windows(data_dir: Path, seed: int, cache: Path | None) -> dict[str, T.WindowSet]:
    """Recordings, augmentation and stress window sets (with sequence channels), cached as one pickle."""
    if cache is not None and cache.exists():
        out: dict[str, T.WindowSet] = pickle.loads(cache.read_bytes())
        if getattr(out["rec"], "walk_tilt", None) is None:  # a cache from before the walking-upright candidate
            add_walk_tilt(sisfall.load_all(data_dir), out)
        return out
    trials = sisfall.load_all(data_dir, progress=True)
    sets = {"rec": T.build_windows(trials, seq=True),
            "soft": T.build_windows(T.augment_trials(trials, seed), seq=True),
            "robust": T.build_windows(T.robust_trials(trials, seed), seq=True),
            "gyro": T.build_windows(T.gyro_gain_trials(trials, seed), seq=True)}
    for k, (name, fn) in enumerate(STRESS.items()):
        rng = np.random.default_rng(seed + 2000 + k)
        sets["stress:" + name] = T.build_windows([fn(t, rng) for t in trials], seq=True)
    add_walk_tilt(trials, sets)
    if cache is not None:
        cache.write_bytes(pickle.dumps(sets))
    return sets


def add_walk_tilt(trials: list[sisfall.Trial], sets: dict[str, T.WindowSet]) -> None:
    """Put :func:`features.tilt_from_reference_deg` of every window in ``walk_tilt`` of each set.

    SisFall records each activity separately, so the wearer's upright comes from their own walking
    trials (:data:`WALK_CODES`), carried over to their other recordings as continuous wear would
    (same device, same belt: the SisFall protocol). The rotated robustness copies, whose frame is
    not the recording's, get NaN: their reference is unknown, as on a device that has not yet seen
    its wearer walk (the gain-only stress sets keep the frame, and the reference)."""
    refs: dict[str, np.ndarray | None] = {}
    for s in sorted({t.subject for t in trials}):
        walk = [t.acc_g for t in trials if t.subject == s and t.activity in WALK_CODES]
        refs[s] = F.walking_reference(np.concatenate(walk)) if walk else None
    for name, ws in sets.items():
        col = np.full(len(ws.y), np.nan, dtype=np.float32)
        if name not in ("robust",):
            for k, trial in enumerate(ws.trials):
                m = ws.trial_idx == k
                if not m.any():
                    continue
                wins, _ = T.trial_windows(trial)
                col[m] = F.tilt_from_reference_deg(wins, refs[trial.subject])
        ws.walk_tilt = col


def _concat(parts: list[T.WindowSet]) -> T.WindowSet | None:
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out = S._concat(out, p)
    tilts = [p.walk_tilt for p in parts]
    if all(t is not None for t in tilts):
        out.walk_tilt = np.concatenate([t for t in tilts if t is not None])
    seqs = [p.seq for p in parts]
    if all(s is not None for s in seqs):
        out = dataclasses.replace(out, seq=np.concatenate([s for s in seqs if s is not None]))
    return out


class _Model:
    """Fit on the windows of some subjects (with their augmentation), score window rows."""

    def __init__(self, cand: Candidate, ws: T.WindowSet, seed: int, epochs: int) -> None:
        self.cand, self.ws, self.seed, self.epochs = cand, ws, seed, epochs
        self.names = (T.feature_names("all" if cand.features == "all+walk" else cand.features)
                      if cand.model == "trees" else ())

    def _fit_walk(self, train_subjects: list[str]) -> Callable[[T.WindowSet, np.ndarray], np.ndarray]:
        """Trees on the base features plus the tilt from the wearer's walking upright (NaN = unknown,
        which HistGradientBoosting routes natively)."""
        from sklearn.ensemble import HistGradientBoostingClassifier

        cols = F.feature_index(self.names)

        def rows(v: T.WindowSet, m: np.ndarray) -> np.ndarray:
            assert v.walk_tilt is not None
            return np.column_stack([v.X[m][:, cols], v.walk_tilt[m]])

        ws = self.ws
        use = np.isin(ws.subjects(), train_subjects) & (ws.y >= 0)
        X, y = rows(ws, use), ws.y[use]
        if ws.aug is not None:
            a = np.isin(ws.aug.subjects(), train_subjects) & (ws.aug.y >= 0)
            X, y = np.concatenate([X, rows(ws.aug, a)]), np.concatenate([y, ws.aug.y[a]])
        clf = HistGradientBoostingClassifier(**T.hgb_params(self.seed)).fit(X, y)
        return lambda v, m: clf.predict_proba(rows(v, m))[:, 1].astype(np.float32)

    def fit(self, train_subjects: list[str], k: int) -> Callable[[T.WindowSet, np.ndarray], np.ndarray]:
        ws = self.ws
        mask = np.isin(ws.subjects(), train_subjects)
        if self.cand.features == "all+walk":
            return self._fit_walk(train_subjects)
        if self.cand.model == "trees":
            clf = T.fit(ws, mask, self.names, self.seed)
            cols = F.feature_index(self.names)
            return lambda v, m: clf.predict_proba(v.X[m][:, cols])[:, 1].astype(np.float32)
        from fallwatch.models import fall_seq

        assert ws.seq is not None
        use = mask & (ws.y >= 0)
        X, y = ws.seq[use], ws.y[use]
        if ws.aug is not None and ws.aug.seq is not None:
            a = np.isin(ws.aug.subjects(), train_subjects) & (ws.aug.y >= 0)
            X, y = np.concatenate([X, ws.aug.seq[a]]), np.concatenate([y, ws.aug.y[a]])
        net = fall_seq.train_net(X, y, self.seed + k, self.epochs)

        def score(v: T.WindowSet, m: np.ndarray) -> np.ndarray:
            assert v.seq is not None
            return fall_seq.predict(net, v.seq[m]).astype(np.float32)

        return score


def _inner_block(ws: T.WindowSet, oof: np.ndarray, thr: float, train_s: list[str]) -> dict[str, Any]:
    keep = np.array([t.subject in train_s for t in ws.trials])
    f = S.figures(ws, oof, np.full(len(ws.y), thr), trials_mask=keep)
    return {"sensitivity": f["sensitivity"], "false_alarms_per_hour": f["false_alarms_per_hour"],
            "SE_false_alarms_per_hour": f["groups"].get("SE", {}).get("false_alarms_per_hour"),
            "threshold": thr}


def evaluate(cand: Candidate, sets: dict[str, T.WindowSet], folds: list[list[str]], seed: int,
             epochs: int = 5) -> dict[str, Any]:
    """Inner figures per outer fold and held-out window scores of one candidate."""
    rec = sets["rec"]
    ws = dataclasses.replace(rec, aug=_concat([sets[a] for a in cand.aug]))
    model = _Model(cand, ws, seed, epochs)
    subj = rec.subjects()
    subjects = sorted({t.subject for t in rec.trials})
    probs = np.zeros(len(rec.y), dtype=np.float32)
    thr = np.zeros(len(rec.y))
    stress = {k[7:]: (v, np.zeros(len(v.y), dtype=np.float32), np.zeros(len(v.y)))
              for k, v in sets.items() if k.startswith("stress:")}
    inner: list[dict[str, Any]] = []
    t0 = time.process_time()
    for k, held in enumerate(folds):
        train_s = [s for s in subjects if s not in held]
        oof = np.zeros(len(rec.y), dtype=np.float32)
        for j, ifold in enumerate(T.subject_folds(train_s, INNER, seed + 1)):
            score = model.fit([s for s in train_s if s not in ifold], 10 * k + j + 1)
            m = np.isin(subj, ifold)
            oof[m] = score(rec, m)
        m_train = np.isin(subj, train_s)
        th = T.fa_threshold(rec, oof[m_train], m_train, train_s)
        inner.append(_inner_block(rec, oof, th, train_s))
        score = model.fit(train_s, 10 * k)
        h = np.isin(subj, held)
        probs[h] = score(rec, h)
        thr[h] = th
        for v, sp, st in stress.values():
            hv = np.isin(v.subjects(), held)
            sp[hv] = score(v, hv)
            st[hv] = th
        log.warning("%s fold %d inner %s", cand.name, k, inner[-1])
    res = S.figures(rec, probs, thr)
    res["inner"] = inner
    res["cpu_s"] = round(time.process_time() - t0, 1)
    res["stress"] = {}
    for name, (v, sp, st) in stress.items():
        f = S.figures(v, sp, st)
        res["stress"][name] = {kk: f[kk] for kk in ("sensitivity", "specificity", "false_alarms_per_hour")}
    res["_probs"], res["_thr"] = probs, thr
    return res


def choose(inner: dict[str, dict[str, Any]]) -> str:
    """Rule step 3 for one outer fold: ``inner`` maps candidate name -> its inner block."""
    order = [c.name for c in CANDIDATES if c.name in inner]
    ok = [c for c in order if (inner[c]["false_alarms_per_hour"] or 0) <= T.FA_TARGET_PER_H] or order
    best = max(inner[c]["sensitivity"] or 0 for c in ok)
    tied = [c for c in ok if (inner[c]["sensitivity"] or 0) >= best - TIE_POINTS - 1e-12]
    return min(tied, key=lambda c: (inner[c]["SE_false_alarms_per_hour"] or 0, c != SHIPPED, order.index(c)))


def nested(results: dict[str, dict[str, Any]], sets: dict[str, T.WindowSet], folds: list[list[str]]
           ) -> dict[str, Any]:
    """Rule steps 3-4: the pick per outer fold and the held-out figures of the whole procedure."""
    rec = sets["rec"]
    subj = rec.subjects()
    probs = np.zeros(len(rec.y), dtype=np.float32)
    thr = np.zeros(len(rec.y))
    picks = []
    for k, held in enumerate(folds):
        c = choose({name: r["inner"][k] for name, r in results.items()})
        picks.append(c)
        h = np.isin(subj, held)
        probs[h] = results[c]["_probs"][h]
        thr[h] = results[c]["_thr"][h]
    fig = S.figures(rec, probs, thr)
    counts = {c: picks.count(c) for c in set(picks)}
    top = max(counts, key=lambda c: counts[c])
    base = results[SHIPPED]
    better = (top != SHIPPED and counts[top] >= 2
              and (fig["sensitivity"] or 0) >= (base["sensitivity"] or 0)
              and (fig["false_alarms_per_hour"] or 0) <= T.FA_TARGET_PER_H)
    return {"picks": picks, "figures": fig, "ship": top if better else SHIPPED}


def run(data_dir: Path, seed: int = 7, out: Path | None = None, only: tuple[str, ...] = (),
        cache: Path | None = None, epochs: int = 5) -> dict[str, Any]:
    t0 = time.time()
    sets = windows(data_dir, seed, cache)
    subjects = sorted({t.subject for t in sets["rec"].trials})
    folds = T.subject_folds(subjects, OUTER, seed)
    results: dict[str, dict[str, Any]] = {}
    doc: dict[str, Any] = {"seed": seed, "outer_folds": OUTER, "inner_folds": INNER, "folds": folds,
                           "fa_target_per_h": T.FA_TARGET_PER_H, "tie_points": TIE_POINTS,
                           "windows": {k: len(v.y) for k, v in sets.items()}, "candidates": {}}
    for cand in CANDIDATES:
        if only and cand.name not in only:
            continue
        results[cand.name] = evaluate(cand, sets, folds, seed, epochs)
        doc["candidates"][cand.name] = {k: v for k, v in results[cand.name].items() if not k.startswith("_")}
        if out is not None:
            out.write_text(json.dumps(doc, indent=1))
            np.savez(_npz(out, cand.name), probs=results[cand.name]["_probs"], thr=results[cand.name]["_thr"])
    doc["seconds"] = round(time.time() - t0, 1)
    if out is not None:
        out.write_text(json.dumps(doc, indent=1))
    return doc


def _npz(out: Path, name: str) -> Path:
    slug = "".join(ch if ch.isalnum() else "_" for ch in name)
    return out.with_name(f"{out.stem}.{slug}.npz")


def merge(data_dir: Path, parts: list[Path], out: Path, seed: int = 7, cache: Path | None = None) -> dict[str, Any]:
    """Join runs of different candidates (e.g. trees and the CNN run side by side on two cores)
    and apply the rule (steps 3-4) to all of them."""
    sets = windows(data_dir, seed, cache)
    doc: dict[str, Any] = {}
    results: dict[str, dict[str, Any]] = {}
    for p in parts:
        d = json.loads(p.read_text())
        if not doc:
            doc = {k: v for k, v in d.items() if k != "candidates"} | {"candidates": {}}
        for name, r in d["candidates"].items():
            z = np.load(_npz(p, name))
            results[name] = r | {"_probs": z["probs"], "_thr": z["thr"]}
            doc["candidates"][name] = r
    doc["nested"] = nested(results, sets, doc["folds"])
    out.write_text(json.dumps(doc, indent=1))
    return doc


def cnn_export(data_dir: Path, seed: int = 7, cache: Path | None = None, epochs: int = 1) -> dict[str, Any]:
    """ONNX export and time per window of the CNN (the architecture's cost: a net trained briefly on
    all recordings; the weights do not change the time), and its parameter count."""
    from fallwatch.models import fall_seq

    rec = windows(data_dir, seed, cache)["rec"]
    assert rec.seq is not None
    m = rec.y >= 0
    net = fall_seq.train_net(rec.seq[m], rec.y[m], seed, epochs)
    out = fall_seq.export_and_time(net)
    out["params"] = int(sum(p.numel() for p in net.parameters()))
    return out


def brief(doc: dict[str, Any]) -> dict[str, Any]:
    """What the model card keeps of a run: no miss lists, per-code sensitivity and FA/h only."""
    def trim(r: dict[str, Any]) -> dict[str, Any]:
        codes = {c: {k: v[k] for k in ("sensitivity", "false_alarms_per_hour")} for c, v in r.get("codes", {}).items()}
        return {k: v for k, v in r.items() if k != "missed"} | {"codes": codes}

    out = dict(doc) | {"candidates": {n: trim(r) for n, r in doc.get("candidates", {}).items()}}
    if "nested" in doc:
        out["nested"] = dict(doc["nested"]) | {"figures": trim(doc["nested"]["figures"])}
    return out
