"""``fallwatch models ...``: train and evaluate the fall detector and the fall-risk model.

Registered by ``fallwatch.cli`` through :func:`register`; also runnable on its own as
``python -m fallwatch.models.cli models train-fall --data DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("models", help="train / evaluate the fall detector and fall-risk model")
    sub = p.add_subparsers(dest="models_command", metavar="MODELS_COMMAND", required=True)

    t = sub.add_parser("train-fall", help="cross-validate, train and export the fall detector (ONNX)")
    t.add_argument("--data", required=True, type=Path,
                   help="SisFall dir (SUBJECT.tar.xz or SUBJECT/ folders)")
    t.add_argument("--out", type=Path, default=None, help="output dir (default: models/fall/)")
    t.add_argument("--seed", type=int, default=7)
    t.add_argument("--jobs", type=int, default=1, help="threads for tree training (shared machines: 1-2)")
    t.add_argument("--no-compare", action="store_true", help="skip the feature-set comparison CV")
    t.add_argument("--augment", action="store_true",
                   help="add augmented training windows (slower/softer falls, heavier hard negatives)")
    t.add_argument("--robust", action="store_true",
                   help="add perturbed copies of every training trial (rotation, gain, noise, 25 Hz bandwidth)")
    t.add_argument("--study", type=Path, default=None,
                   help="a study-fall JSON whose comparison goes into the card (default: report/study.json if present)")
    t.add_argument("--outer-folds", type=int, default=6, help="subject folds of the held-out evaluation")
    t.add_argument("--inner-folds", type=int, default=3,
                   help="subject folds of the inner CV that chooses each threshold (training subjects only)")
    t.add_argument("--features", default="all", choices=("all", "walk", "acc"),
                   help="feature set: all = the shipped model's 23; walk = + the wearer's walking upright "
                        "(model 1.1, not shipped)")
    t.add_argument("--compare", default="", help="comma-separated extra CVs to report: acc, no-augment")
    t.set_defaults(func=cmd_train_fall)

    e = sub.add_parser("eval-fall", help="stream every trial through the edge detector and report")
    e.add_argument("--data", required=True, type=Path)
    e.add_argument("--model", type=Path, default=None, help="ONNX model (default: the shipped one)")
    e.add_argument("--json", action="store_true", help="last stdout line: one JSON object of metrics")
    e.set_defaults(func=cmd_eval_fall)

    st = sub.add_parser("study-fall", help="compare augmentation choices by the same subject folds and "
                                           "threshold rule (fast path, window level), with stress tests")
    st.add_argument("--data", required=True, type=Path)
    st.add_argument("--seed", type=int, default=7)
    st.add_argument("--out", type=Path, default=None, help="JSON (default: models/fall/report/study.json)")
    st.add_argument("--outer-folds", type=int, default=6, help="subject folds of the held-out evaluation")
    st.add_argument("--inner-folds", type=int, default=3,
                   help="subject folds of the inner CV that chooses each threshold (training subjects only)")
    st.add_argument("--no-stress", action="store_true", help="skip the perturbed held-out evaluations")
    st.set_defaults(func=cmd_study_fall)

    nr = sub.add_parser("study-no-recovery", help="nested subject-wise check of the no-recovery path's "
                                                  "posture angles (held-out figures)")
    nr.add_argument("--data", required=True, type=Path)
    nr.add_argument("--seed", type=int, default=7)
    nr.add_argument("--out", type=Path, default=None,
                    help="JSON (default: models/fall/report/no_recovery_study.json)")
    nr.add_argument("--gate", action="store_true",
                    help="instead: the nested choice of the min_fall_p gate (report/no_recovery_gate.json)")
    nr.set_defaults(func=cmd_study_no_recovery)

    nf = sub.add_parser("nested-fall", help="issue 12's fast-path levers (augmentations, gyro-gain copies, "
                                            "descent features, the 1-D CNN) chosen by a nested subject-wise rule")
    nf.add_argument("--data", required=True, type=Path)
    nf.add_argument("--seed", type=int, default=7)
    nf.add_argument("--epochs", type=int, default=6, help="CNN epochs")
    nf.add_argument("--only", default="", help="comma-separated candidate names (default: all)")
    nf.add_argument("--out", type=Path, default=None, help="JSON (default: models/fall/report/nested_study.json)")
    nf.set_defaults(func=cmd_nested_fall)

    tr = sub.add_parser("train-risk", help="simulate a cohort, train and export the fall-risk model")
    tr.add_argument("--out", type=Path, default=None, help="output dir (default: models/risk/)")
    tr.add_argument("--seed", type=int, default=11)
    tr.add_argument("--residents", type=int, default=4000)
    tr.set_defaults(func=cmd_train_risk)

    cs = sub.add_parser("compare-seq", help="a small 1-D CNN vs the trees by the same subject CV "
                                            "(needs the seq extra: torch CPU)")
    cs.add_argument("--data", required=True, type=Path)
    cs.add_argument("--seed", type=int, default=7)
    cs.add_argument("--epochs", type=int, default=8)
    cs.add_argument("--card", type=Path, default=None, help="model dir whose metrics.json / MODEL_CARD.md "
                                                            "get the figures (default: models/fall/)")
    cs.set_defaults(func=cmd_compare_seq)

    er = sub.add_parser("eval-risk", help="evaluate the shipped risk model on a fresh simulated cohort")
    er.add_argument("--model", type=Path, default=None)
    er.add_argument("--seed", type=int, default=12345)
    er.add_argument("--residents", type=int, default=2000)
    er.add_argument("--json", action="store_true")
    er.set_defaults(func=cmd_eval_risk)


# ----------------------------------------------------------------------------- fall


def cmd_train_fall(args: argparse.Namespace) -> int:
    import numpy as np
    import sklearn.ensemble  # noqa: F401  # loads its OpenMP runtime now, so threadpool_limits below reaches it
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # ships no type information

    from fallwatch.models import fall_train as T
    from fallwatch.models import report, sisfall
    from fallwatch.models.detector import FallModel

    out: Path = args.out or T.DEFAULT_OUT
    T.OUTER_FOLDS, T.INNER_FOLDS = args.outer_folds, args.inner_folds
    rep = out / "report"
    rep.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    trials = sisfall.load_all(args.data, progress=True)
    if not trials:
        print(f"no SisFall trials under {args.data}", file=sys.stderr)
        return 2
    data = sisfall.data_summary(trials)
    from fallwatch.models.fall_study import _concat

    walks: dict[str, Any] = {}  # each subject's walking upright after their recordings
    ws = T.build_windows(trials, progress=True, walks=walks)
    parts: list[T.WindowSet] = []
    if args.augment:  # same device frame as the recordings: they start from the subject's upright
        parts.append(T.build_windows(T.augment_trials(trials, args.seed), progress=True, walks=walks))
    if args.robust:  # rotated: a new device frame in every trial, so nothing is known of the upright
        parts.append(T.build_windows(T.robust_trials(trials, args.seed), progress=True, carry=False))
    if parts:
        ws.aug = parts[0] if len(parts) == 1 else _concat(parts[0], parts[1])
    ws.unknown = T.unknown_upright_copy(ws)  # read by fits whose features include the walking upright
    names = T.feature_names(args.features)
    with threadpool_limits(args.jobs):
        cv = T.cross_validate(ws, names, args.seed, progress=True, withheld="tilt_walk_deg" in names)
        label = args.features + (" + augmentation" if args.augment else "") + (" + robustness" if args.robust else "")
        comparison = {label: _brief(cv.summary)}
        extra = [c for c in args.compare.split(",") if c] if args.no_compare or args.compare else ["acc"]
        for other in extra:
            if other == "no-augment" and ws.aug is not None:
                plain = dataclasses.replace(ws, aug=None)
                comparison[f"{args.features}, recordings only"] = _brief(
                    T.cross_validate(plain, names, args.seed, progress=True).summary)
            elif other in ("acc", "all", "base", "walk") and other != args.features:
                comparison[other] = _brief(T.cross_validate(ws, T.feature_names(other), args.seed,
                                                            progress=True).summary)
        print("final model: threshold by inner CV on all subjects ...", file=sys.stderr)
        subjects = data["subjects"]
        assert isinstance(subjects, list)
        thr = T.inner_threshold(ws, subjects, names, args.seed)
        clf = T.fit(ws, ws.y == ws.y, names, args.seed)  # all subjects
    onnx_path = out / "fall_detector.onnx"
    T.export_onnx(clf, names, thr, onnx_path, data)
    model = FallModel(onnx_path)
    # parity over the recordings and the augmented rows (the rotated copies hold the NaN "unknown
    # upright" rows, which the ONNX trees must route as sklearn does)
    px = ws.X if ws.aug is None else np.concatenate([ws.X, ws.aug.X])
    sk_probs = T.SkFallScorer(clf, names, thr).predict_features(px)
    parity = float(np.abs(model.predict_features(px) - sk_probs).max())
    timing = T.time_per_window(model)
    report.confusion_png(cv.results, rep / "confusion.png")
    curves = report.roc_pr_png(cv.trial_score, cv.is_fall, cv.groups, [f["threshold"] for f in cv.folds],
                               rep / "roc_pr.png", cv.results)
    report.latency_png(cv.results, rep / "latency.png")
    report.latency_paths_png(cv.results, rep / "latency_paths.png")
    previous = _previous_metrics(rep / "metrics.json")
    study_path = args.study or (rep / "study.json")
    study = json.loads(study_path.read_text()) if study_path.exists() else None
    metrics = {
        "name": T.MODEL_NAME,
        "version": T.model_version(names),
        "seed": args.seed,
        "threshold": thr,
        "features": list(names),
        "params": {k: v for k, v in T.hgb_params(args.seed, names).items() if k != "class_weight"},
        "outer_folds": T.OUTER_FOLDS,
        "inner_folds": T.INNER_FOLDS,
        "training_data": data,
        "windows": {"total": len(ws.y), "fall": int((ws.y == 1).sum()), "excluded": int((ws.y == -1).sum())},
        "augmentation": None if ws.aug is None else {
            "description": " ".join([T.AUGMENTATION] * args.augment + [T.ROBUSTNESS] * args.robust),
            "windows": len(ws.aug.y), "fall_windows": int((ws.aug.y == 1).sum())},
        "threshold_rule": {"rule": "fa_target", "fa_target_per_h": T.FA_TARGET_PER_H,
                           "text": f"the lowest threshold at which the training subjects' out-of-fold scores "
                                   f"(inner {T.INNER_FOLDS}-fold subject-wise CV) give at most "
                                   f"{T.FA_TARGET_PER_H:g} false alarms per ADL hour"},
        "cv": cv.summary,
        "cv_walk_withheld": cv.withheld,
        "folds": cv.folds,
        "curves": curves,
        "comparison": comparison,
        "onnx_bytes": onnx_path.stat().st_size,
        "onnx_sha256": T.file_sha256(onnx_path),
        "onnx_sklearn_max_abs_diff": parity,
        "timing": timing,
        "train_seconds": round(time.time() - t0, 1),
    }
    if study is not None:
        metrics["study"] = _study_brief(study)
    nr_path = rep / "no_recovery_study.json"
    if nr_path.exists():
        metrics["no_recovery_study"] = json.loads(nr_path.read_text())
    if previous.get("nested_study"):  # nested-fall is a separate, slow run: keep its figures
        metrics["nested_study"] = previous["nested_study"]
    report.write_json(metrics, rep / "metrics.json")
    report.model_card(metrics, out / "MODEL_CARD.md")
    _print_summary(cv.summary)
    print(f"wrote {onnx_path} ({metrics['onnx_bytes']} bytes, threshold {thr:.2f}), "
          f"{out / 'MODEL_CARD.md'}, {rep}")
    return 0


def cmd_study_fall(args: argparse.Namespace) -> int:
    import sklearn.ensemble  # noqa: F401  # loads its OpenMP runtime now, so threadpool_limits below reaches it
    from threadpoolctl import threadpool_limits

    from fallwatch.models import fall_study, fall_train

    out: Path = args.out or fall_train.DEFAULT_OUT / "report" / "study.json"
    fall_train.OUTER_FOLDS, fall_train.INNER_FOLDS = args.outer_folds, args.inner_folds
    out.parent.mkdir(parents=True, exist_ok=True)
    with threadpool_limits(1):
        r = fall_study.run(args.data, seed=args.seed, stress=not args.no_stress, out=out)
    for c, v in r["configs"].items():
        print(f"{c:<12} sensitivity {v['sensitivity']} specificity {v['specificity']} "
              f"false_alarms_per_hour {v['false_alarms_per_hour']} thresholds {v['fold_thresholds']}")
    print(f"choice: {r['choice']} ({out})")
    return 0


def cmd_study_no_recovery(args: argparse.Namespace) -> int:
    from fallwatch.models import fall_train, no_recovery_study

    if args.gate:
        gout: Path = args.out or fall_train.DEFAULT_OUT / "report" / "no_recovery_gate.json"
        gout.parent.mkdir(parents=True, exist_ok=True)
        g = no_recovery_study.run_gate(args.data, seed=args.seed, out=gout)
        if args.out is None:
            from fallwatch.models import report

            report.add_to_card(fall_train.DEFAULT_OUT, "no_recovery_gate", g)
        print(json.dumps({k: g[k] for k in ("folds", "nested", "pick", "ship")}))
        return 0
    out: Path = args.out or fall_train.DEFAULT_OUT / "report" / "no_recovery_study.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    r = no_recovery_study.run(args.data, seed=args.seed, out=out)
    if args.out is None:  # the shipped model's card gets the figures
        from fallwatch.models import report

        report.add_to_card(fall_train.DEFAULT_OUT, "no_recovery_study", r)
    for f in r["folds"]:
        print(f"held out {','.join(f['held_out'])}: chose {f['candidate']} (training Youden {f['train_youden']})")
    print(json.dumps(r["nested"]))
    return 0


def cmd_nested_fall(args: argparse.Namespace) -> int:
    import importlib.util

    from fallwatch.models import fall_nested, fall_train, report

    only = tuple(x for x in args.only.split(",") if x)
    if importlib.util.find_spec("torch") is None:  # the CNN candidate needs the seq extra
        only = only or tuple(c.name for c in fall_nested.CANDIDATES if c.model != "cnn")
        print("torch not installed: the CNN candidate is skipped (pip install torch==2.13.0)", file=sys.stderr)
    out: Path = args.out or fall_train.DEFAULT_OUT / "report" / "nested_study.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    r = fall_nested.run(args.data, seed=args.seed, out=out, only=only, epochs=args.epochs)
    r = fall_nested.merge(args.data, [out], out, seed=args.seed)
    if any(c.model == "cnn" and (not only or c.name in only) for c in fall_nested.CANDIDATES):
        r["cnn_export"] = fall_nested.cnn_export(args.data, seed=args.seed)
        r["epochs"] = args.epochs
        out.write_text(json.dumps(r, indent=1))
    if args.out is None:
        report.add_to_card(fall_train.DEFAULT_OUT, "nested_study", fall_nested.brief(r))
    print(json.dumps(r["nested"]["picks"]), r["nested"]["ship"])
    return 0


def cmd_compare_seq(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        print("compare-seq needs torch (CPU): .venv/bin/pip install torch==2.13.0 (the seq extra)", file=sys.stderr)
        return 2
    from fallwatch.models import fall_seq, fall_train, report

    out = fall_seq.compare(str(args.data), seed=args.seed, epochs=args.epochs)
    report.add_to_card(args.card or fall_train.DEFAULT_OUT, "sequence_model", out)
    print(json.dumps(out, indent=2))
    return 0


def _previous_metrics(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _study_brief(study: dict[str, Any]) -> dict[str, object]:
    """The study-fall figures the card shows (no per-trial scores)."""
    keep = ("sensitivity", "specificity", "false_alarms_per_hour", "fall_trials",
            "adl_trials", "adl_hours", "fold_thresholds", "groups", "stress")
    return {"configs": {c: {k: v[k] for k in keep if k in v} for c, v in study["configs"].items()},
            "choice": study.get("choice"), "fa_target_per_h": study.get("fa_target_per_h"),
            "windows": study.get("windows"), "seconds": study.get("seconds"),
            "outer_folds": study.get("outer_folds"), "inner_folds": study.get("inner_folds")}


def _brief(s: dict[str, Any]) -> dict[str, object]:  # s: a fall_eval summary (nested JSON)
    g = s["groups"]
    return {
        "SA_sensitivity": g.get("SA", {}).get("sensitivity"),
        "SA_specificity": g.get("SA", {}).get("specificity"),
        "SE_specificity": g.get("SE", {}).get("specificity"),
        "sensitivity": s["sensitivity"],
        "specificity": s["specificity"],
        "false_alarms_per_hour": s["false_alarms_per_hour"],
        "SE_false_alarms_per_hour": g.get("SE", {}).get("false_alarms_per_hour"),
        "median_latency_s": s["median_latency_s"],
    }


def _print_summary(s: dict[str, Any]) -> None:
    keys = ("trials", "fall_trials", "adl_trials", "sensitivity", "specificity", "f1",
            "false_alarms_per_hour", "median_latency_s")
    print("group  " + "  ".join(keys))
    for name, v in [("all", s), *sorted(s["groups"].items())]:
        print(f"{name:<6} " + "  ".join(str(v[k]) for k in keys))
    for path, p in s.get("paths", {}).items():  # the fast path is the table above
        for label, fig in ((path, p), (f"{path}+rooms", p["rooms"])):
            print(f"{label:<18} sensitivity {fig['sensitivity']}  specificity {fig['specificity']}  "
                  f"false_alarms_per_hour {fig['false_alarms_per_hour']}  median_latency_s {fig['median_latency_s']}")


def cmd_eval_fall(args: argparse.Namespace) -> int:
    from fallwatch.models import sisfall
    from fallwatch.models.detector import FallModel
    from fallwatch.models.fall_eval import run_trial, summarise
    from fallwatch.models.features import WalkingReference

    model = FallModel(args.model)
    subjects = sisfall.list_subjects(args.data)
    if not subjects:
        print(f"no SisFall subjects under {args.data}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    results = []
    for subj in tqdm(subjects, desc="eval-fall", unit="subject", file=sys.stderr):
        walk = WalkingReference()  # one device worn by this person through all their recordings
        for trial in sisfall.load_subject(args.data, subj, rate_hz=model.rate_hz):
            r = run_trial(trial, model, walk=walk)
            results.append(r)
            verdict = ("TP" if r.alerted else "FN") if r.is_fall else ("FP" if r.alerted else "TN")
            lat = f" latency {r.latency_s:.2f}s" if r.latency_s is not None else ""
            probs = ",".join(f"{a.probability:.2f}" for a in r.alerts)
            print(f"{r.name} {verdict} alerts={len(r.alerts)}{' p=' + probs if probs else ''}{lat}")
    s = summarise(results)
    s["model"] = model.tag
    s["threshold"] = model.threshold
    _print_summary(s)
    if args.json:
        print(json.dumps(s, separators=(",", ":")))
    return 0


# ----------------------------------------------------------------------------- risk


def cmd_train_risk(args: argparse.Namespace) -> int:
    from fallwatch.models import risk

    metrics = risk.train(out=args.out, seed=args.seed, n_residents=args.residents)
    print(json.dumps({k: metrics[k] for k in ("auc", "brier", "n_train", "n_test")}, indent=2))
    return 0


def cmd_eval_risk(args: argparse.Namespace) -> int:
    from fallwatch.models import risk

    metrics = risk.evaluate(model_path=args.model, seed=args.seed, n_residents=args.residents)
    if args.json:
        print(json.dumps(metrics, separators=(",", ":")))
    else:
        print(json.dumps(metrics, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fallwatch.models.cli")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
