"""A small 1-D CNN over the detector window, compared with the shipped trees by the same CV.

Optional: needs the ``seq`` extra (``pip install torch==2.13.0``, CPU); nothing else in the
project imports it, and ``fallwatch models compare-seq`` says so cleanly without it.

Why these inputs: the trees read orientation-invariant features, so the network must not get
an easier or harder problem: it sees the same window the detector cuts (the same trigger, the
same training windows and labels as :func:`fallwatch.models.fall_train.build_windows`) as three
orientation-invariant channels from :func:`fallwatch.models.features.sequence_channels`
(``|a|``, ``|gyro|``, and the cosine of the angle between the acceleration and the pre-fall
gravity direction), the same code the edge would run.

Protocol: the trees' outer subject folds; per fold a threshold from a held-out third of the
training subjects (the network trained on the other two thirds), then the network retrained
on all training subjects; the held-out subjects' trials are scored at trial level (a trial
alerts iff a triggered window reaches the threshold, which is what the streaming detector
does). The trees are scored the same way in the same run, so the figures compare.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from fallwatch.models import fall_train as T
from fallwatch.models import features as F
from fallwatch.models import sisfall


def raw_windows(trials: list[sisfall.Trial], progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sequence channels (N, 3, WINDOW), labels and trial index of every triggered window
    (labelled exactly as :func:`fallwatch.models.fall_train.build_windows`)."""
    from tqdm import tqdm

    xs, ys, ti = [], [], []
    for k, trial in enumerate(tqdm(trials, desc="seq windows", unit="trial", disable=not progress)):
        wins, cands = T.trial_windows(trial)
        if len(wins) == 0:
            continue
        xs.append(F.sequence_channels(wins))
        ys.append(T.window_labels(trial, cands))
        ti.append(np.full(len(cands), k))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ti)


def _net() -> Any:
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(
                nn.Conv1d(3, 16, 7, stride=2, padding=3), nn.ReLU(),
                nn.Conv1d(16, 32, 5, stride=2, padding=2), nn.ReLU(),
                nn.Conv1d(32, 32, 5, stride=2, padding=2), nn.ReLU())
            self.head = nn.Linear(64, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.conv(x)
            z = torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)
            return torch.sigmoid(self.head(z)).squeeze(1)

    return Net()


def train_net(X: np.ndarray, y: np.ndarray, seed: int, epochs: int = 8) -> Any:
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.float32))
    w_pos = 5.0  # as the trees' class weight
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for idx in np.array_split(rng.permutation(len(X)), max(1, len(X) // 256)):
            p = net(xt[idx])
            t = yt[idx]
            loss = -(w_pos * t * torch.log(p + 1e-6) + (1 - t) * torch.log(1 - p + 1e-6)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    return net


def predict(net: Any, X: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        out: np.ndarray = net(torch.from_numpy(X)).numpy()
    return out


def _trial_level(scores: np.ndarray, trial_idx: np.ndarray, trials: list[sisfall.Trial], mask: np.ndarray,
                 keep: np.ndarray, thr: float) -> dict[str, Any]:
    """Sensitivity/specificity (trial level) of the trials in ``keep`` from their windows' scores."""
    best = np.zeros(len(trials), dtype=np.float32)
    np.maximum.at(best, trial_idx[mask], scores)
    falls = np.array([t.is_fall for t in trials])
    sel = keep
    pos, neg = best[sel & falls], best[sel & ~falls]
    groups = np.array([t.group for t in trials])
    out: dict[str, Any] = {"sensitivity": round(float((pos >= thr).mean()), 4) if len(pos) else None,
                           "specificity": round(float((neg < thr).mean()), 4) if len(neg) else None}
    for g in ("SA", "SE"):
        gn = best[sel & ~falls & (groups == g)]
        out[f"{g}_specificity"] = round(float((gn < thr).mean()), 4) if len(gn) else None
    from sklearn.metrics import roc_auc_score

    y = falls[sel]
    out["roc_auc"] = round(float(roc_auc_score(y, best[sel])), 5) if 0 < y.sum() < len(y) else None
    return out


def compare(data_dir: str, seed: int = 7, epochs: int = 8, progress: bool = True) -> dict[str, Any]:
    """The CNN and the trees by the same subject folds, trial level; ONNX export and timing."""
    from tqdm import tqdm

    t0 = time.time()
    trials = sisfall.load_all(data_dir, progress=progress)
    X, y, ti = raw_windows(trials, progress=progress)
    ws = T.build_windows(trials)
    names = T.feature_names(T.FEATURE_SET)
    subj = np.array([trials[i].subject for i in ti])
    subjects = sorted({t.subject for t in trials})
    trial_subj = np.array([t.subject for t in trials])
    cnn_scores = np.zeros(len(y), dtype=np.float32)
    tree_scores = np.zeros(len(ws.y), dtype=np.float32)
    thr_cnn: list[float] = []
    thr_tree: list[float] = []
    ws_subj = ws.subjects()
    folds = T.subject_folds(subjects, T.OUTER_FOLDS, seed)
    for k, held in enumerate(tqdm(folds, desc="seq CV", unit="fold", disable=not progress)):
        train_s = [s for s in subjects if s not in held]
        inner = T.subject_folds(train_s, 3, seed + 1)[0]
        fit_s = [s for s in train_s if s not in inner]
        m_fit = np.isin(subj, fit_s) & (y >= 0)
        net = train_net(X[m_fit], y[m_fit], seed + k, epochs)
        m_in = np.isin(subj, inner)
        best = np.zeros(len(trials), dtype=np.float32)
        np.maximum.at(best, ti[m_in], predict(net, X[m_in]))
        ids = np.flatnonzero(np.isin(trial_subj, inner))
        thr_cnn.append(T.choose_threshold(best[ids], np.array([trials[i].is_fall for i in ids])))
        m_tr = np.isin(subj, train_s) & (y >= 0)
        net = train_net(X[m_tr], y[m_tr], seed + k, epochs)
        m_held = np.isin(subj, held)
        cnn_scores[m_held] = predict(net, X[m_held])
        thr_tree.append(T.inner_threshold(ws, train_s, names, seed))
        clf = T.fit(ws, np.isin(ws_subj, train_s), names, seed)
        h = np.isin(ws_subj, held)
        tree_scores[h] = clf.predict_proba(ws.X[h][:, F.feature_index(names)])[:, 1]
    # per fold thresholds applied to that fold's held-out trials
    res: dict[str, Any] = {}
    for name, scores, tix, wsub, thrs in (("cnn", cnn_scores, ti, subj, thr_cnn),
                                         ("trees", tree_scores, ws.trial_idx, ws_subj, thr_tree)):
        hits: dict[str, list[Any]] = {}
        for fold, thr in zip(folds, thrs, strict=True):
            keep = np.isin(trial_subj, fold)
            mask = np.isin(wsub, fold)
            r = _trial_level(scores[mask], tix[mask], trials, np.ones(int(mask.sum()), dtype=bool), keep, thr)
            for key, v in r.items():
                hits.setdefault(key, []).append((v, int(keep.sum())))
        res[name] = {k: _weighted(v) for k, v in hits.items()}
        res[name]["thresholds"] = [round(t, 2) for t in thrs]
    net = train_net(X[y >= 0], y[y >= 0], seed, epochs)
    res["cnn"].update(export_and_time(net))
    res["cnn"]["params"] = int(sum(p.numel() for p in net.parameters()))
    res["epochs"] = epochs
    res["seconds"] = round(time.time() - t0, 1)
    res["note"] = ("trial level from held-out window scores (a trial alerts iff a triggered window reaches "
                   "its fold's threshold); both models on the same folds, windows and labels; no augmentation")
    return res


def _weighted(vals: list[tuple[Any, int]]) -> float | None:
    got = [(v, n) for v, n in vals if v is not None]
    if not got:
        return None
    return round(sum(v * n for v, n in got) / sum(n for _, n in got), 4)


def export_and_time(net: Any, path: str = "/tmp/fallwatch-seq.onnx") -> dict[str, Any]:
    """ONNX export of the network and the time per window (channels + ONNX, 1 thread)."""
    import torch

    from fallwatch.models.onnx_runtime import edge_session

    x = torch.zeros(1, 3, F.WINDOW)
    torch.onnx.export(net, (x,), path, input_names=["x"], output_names=["p"], opset_version=17,
                      dynamic_axes={"x": {0: "n"}, "p": {0: "n"}}, dynamo=False)
    sess = edge_session(path)
    wins = np.random.default_rng(0).normal(0, 0.3, (64, F.WINDOW, 6)).astype(np.float32)
    wins[:, :, 2] += 1.0
    ref = predict(net, F.sequence_channels(wins))
    got = sess.run(["p"], {"x": F.sequence_channels(wins)})[0]
    one = wins[:1]
    for _ in range(20):
        sess.run(["p"], {"x": F.sequence_channels(one)})
    n = 500
    t = time.perf_counter()
    for _ in range(n):
        sess.run(["p"], {"x": F.sequence_channels(one)})
    single = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    for _ in range(20):
        sess.run(["p"], {"x": F.sequence_channels(wins)})
    batched = (time.perf_counter() - t) / (20 * len(wins)) * 1e6
    import os

    return {"onnx_bytes": os.path.getsize(path), "onnx_torch_max_abs_diff": float(np.abs(ref - got).max()),
            "single_window_us": round(single, 1), "batched_per_window_us": round(batched, 2)}
