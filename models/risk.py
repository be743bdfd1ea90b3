"""Fall-risk model: daily gait/activity features -> calibrated 30-day fall probability.

Logistic regression on standardised contract features (:mod:`fallwatch.models.risk_features`):
calibrated by construction (checked with a reliability plot), and its score decomposes
exactly into per-feature contributions (coefficient x standardised deviation from the
cohort mean, in log-odds), which are the "driving factors" staff see. Exported to ONNX
(scaler + logistic regression); the coefficients travel in the ONNX metadata so the
factors need no second model file.

Trained and tested on the **simulated** cohort of :mod:`fallwatch.models.risk_cohort`.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fallwatch.models import risk_features as RF
from fallwatch.models.risk_cohort import EFFECTS, PUBLISHED, Cohort, simulate
from fallwatch.protocol.contract import Factor

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

MODEL_NAME = "fallwatch-risk"
MODEL_VERSION = "1.0.0"
DEFAULT_DIR = Path(__file__).resolve().parent / "risk"
DEFAULT_PATH = DEFAULT_DIR / "risk_model.onnx"
DAYS = 7


def _clip(X: np.ndarray) -> np.ndarray:
    lo = np.array([RF.BY_NAME[n].lo for n in RF.NAMES], dtype=np.float32)
    hi = np.array([RF.BY_NAME[n].hi for n in RF.NAMES], dtype=np.float32)
    out: np.ndarray = np.clip(X, lo, hi)
    return out


def fit(X: np.ndarray, y: np.ndarray, seed: int) -> Pipeline:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed))
    pipe.fit(_clip(X), y)
    coef = pipe[-1].coef_[0]
    wrong = [n for n, c in zip(RF.NAMES, coef, strict=True) if c * RF.BY_NAME[n].direction < 0]
    if wrong:
        # A coefficient against the published direction would tell staff e.g. that faster gait
        # is a risk factor; better to stop than to ship it.
        raise ValueError(f"risk coefficients contradict the feature contract for {wrong}")
    return pipe


def export_onnx(pipe: Pipeline, path: Path, extra: dict[str, str]) -> None:
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(pipe, initial_types=[("features", FloatTensorType([None, len(RF.NAMES)]))],
                          options={id(pipe[-1]): {"zipmap": False}},
                          target_opset={"": 17, "ai.onnx.ml": 3})
    onx.graph.name = MODEL_NAME  # instead of skl2onnx's random uuid: reproducible bytes
    scaler, lr = pipe[0], pipe[-1]
    props = {
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "feature_contract": RF.CONTRACT_VERSION,
        "features": ",".join(RF.NAMES),
        "units": ",".join(RF.BY_NAME[n].unit for n in RF.NAMES),
        "input_name": "features",
        "output": "probabilities[:, 1] = P(fall within 30 days)",
        "mean": json.dumps([round(float(v), 6) for v in scaler.mean_]),
        "scale": json.dumps([round(float(v), 6) for v in scaler.scale_]),
        "coef": json.dumps([round(float(v), 6) for v in lr.coef_[0]]),
        "intercept": f"{float(lr.intercept_[0]):.6f}",
        "levels": json.dumps(dict(RF.LEVELS)),
        "training_data": "SIMULATED cohort (models/risk_cohort.py), not real residents",
        **extra,
    }
    onnx.helper.set_model_props(onx, props)
    onnx.checker.check_model(onx)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onx.SerializeToString())


class RiskModel:
    """The shipped risk model: ONNX session + the linear decomposition for factors."""

    def __init__(self, path: str | Path | None = None) -> None:
        from fallwatch.models.onnx_runtime import edge_session

        self.path = Path(path) if path is not None else DEFAULT_PATH
        self.session = edge_session(self.path)
        m = dict(self.session.get_modelmeta().custom_metadata_map)
        self.metadata = m
        self.names: tuple[str, ...] = tuple(m["features"].split(","))
        unknown = [n for n in self.names if n not in RF.BY_NAME]
        if unknown:
            raise ValueError(f"risk model reads features outside contract {RF.CONTRACT_VERSION}: {unknown}")
        if int(m["feature_contract"].split(".")[0]) != int(RF.CONTRACT_VERSION.split(".")[0]):
            raise ValueError(f"model built for feature contract {m['feature_contract']}, code has "
                             f"{RF.CONTRACT_VERSION}")
        width = self.session.get_inputs()[0].shape[-1]
        if width != len(self.names):
            raise ValueError(f"graph input width {width} != {len(self.names)} features in metadata")
        self.version = m["version"]
        self.mean = np.array(json.loads(m["mean"]), dtype=np.float64)
        self.scale = np.array(json.loads(m["scale"]), dtype=np.float64)
        self.coef = np.array(json.loads(m["coef"]), dtype=np.float64)
        self.intercept = float(m["intercept"])
        self._lo = np.array([RF.BY_NAME[n].lo for n in self.names], dtype=np.float32)
        self._hi = np.array([RF.BY_NAME[n].hi for n in self.names], dtype=np.float32)

    @property
    def tag(self) -> str:
        return f"{MODEL_NAME}@{self.version}"

    def vector(self, features: dict[str, float]) -> tuple[np.ndarray, list[str]]:
        """Contract dict -> clipped input row; missing features take the cohort mean
        (zero contribution) and are returned so callers can say what was not measured."""
        missing = [n for n in self.names if features.get(n) is None or not np.isfinite(features[n])]
        x = np.array([self.mean[i] if n in missing else float(features[n]) for i, n in enumerate(self.names)],
                     dtype=np.float32)
        return np.clip(x, self._lo, self._hi), missing

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Batch: rows in ``self.names`` order -> P(fall within 30 days)."""
        X = np.clip(np.asarray(X, dtype=np.float32), self._lo, self._hi)
        out = self.session.run(["probabilities"], {"features": X})[0]
        return np.asarray(out)[:, 1]

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Log-odds contribution of each feature relative to the training cohort's mean.

        They sum, with the intercept, to the model's logit exactly: the factors *are* the score.
        """
        return self.coef * (x.astype(np.float64) - self.mean) / self.scale

    def score(self, features: dict[str, float], top: int = 5) -> tuple[float, str, list[Factor]]:
        """(30-day fall probability, level, top factors raising it) for one resident-day."""
        x, _missing = self.vector(features)
        p = float(self.predict(x[None])[0])
        c = self.contributions(x)
        order = np.argsort(-c)
        factors = [Factor(self.names[i], round(float(x[i]), 4), round(float(c[i]), 4))
                   for i in order[:top] if c[i] > 0]
        if not factors:  # nothing raises the risk: show what lowers it most
            factors = [Factor(self.names[i], round(float(x[i]), 4), round(float(c[i]), 4))
                       for i in np.argsort(c)[:top]]
        return p, RF.level_of(p), factors


# ----------------------------------------------------------------------------- train / evaluate


def _reliability_png(y: np.ndarray, p: np.ndarray, path: Path) -> list[dict[str, float]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.quantile(p, np.linspace(0, 1, 11))
    edges[0], edges[-1] = 0.0, 1.0
    bins = []
    for a, b in itertools.pairwise(edges):
        m = (p >= a) & (p < b) if b < 1 else (p >= a)
        if m.sum():
            bins.append({"lo": float(a), "hi": float(b), "n": int(m.sum()),
                         "predicted": round(float(p[m].mean()), 4), "observed": round(float(y[m].mean()), 4)})
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], "o-", label="held-out residents")
    ax.set_xlabel("predicted 30-day fall probability")
    ax.set_ylabel("observed fall rate")
    ax.set_title("Reliability (SIMULATED cohort)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return bins


def _metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import brier_score_loss, roc_auc_score

    return {"auc": round(float(roc_auc_score(y, p)), 4), "brier": round(float(brier_score_loss(y, p)), 4),
            "base_rate": round(float(y.mean()), 4), "mean_predicted": round(float(p.mean()), 4)}


def train(out: Path | None = None, seed: int = 11, n_residents: int = 4000) -> dict[str, object]:
    """Simulate a cohort, split by resident (75/25), fit, export, report, write the card."""
    from fallwatch.models.fall_train import git_sha

    out = out or DEFAULT_DIR
    out.mkdir(parents=True, exist_ok=True)
    cohort = simulate(n_residents, DAYS, seed)
    rng = np.random.default_rng(seed)
    test_res = rng.random(n_residents) < 0.25
    test = test_res[cohort.resident]
    pipe = fit(cohort.X[~test], cohort.y[~test], seed)
    path = out / "risk_model.onnx"
    export_onnx(pipe, path, {"git_sha": git_sha(), "seed": str(seed),
                             "cohort": json.dumps({"residents": n_residents, "days": DAYS})})
    model = RiskModel(path)
    p = model.predict(cohort.X[test])
    p_sk = pipe.predict_proba(_clip(cohort.X[test]))[:, 1]
    metrics: dict[str, object] = {
        **_metrics(cohort.y[test], p),
        "n_train": int((~test).sum()), "n_test": int(test.sum()),
        "train_residents": int((~test_res).sum()), "test_residents": int(test_res.sum()),
        "onnx_sklearn_max_abs_diff": float(np.abs(p - p_sk).max()),
        "oracle_auc_test": round(float(_oracle_auc(cohort, test)), 4),
        "coef": dict(zip(RF.NAMES, [round(float(c), 4) for c in model.coef], strict=True)),
        "reliability": _reliability_png(cohort.y[test], p, out / "reliability.png"),
        "onnx_bytes": path.stat().st_size,
        "seed": seed,
    }
    t0 = time.perf_counter()
    for _ in range(200):
        model.score({n: float(v) for n, v in zip(RF.NAMES, cohort.X[0], strict=True)})
    metrics["score_us"] = round((time.perf_counter() - t0) / 200 * 1e6, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _card(metrics, out / "MODEL_CARD.md")
    return metrics


def _oracle_auc(cohort: Cohort, test: np.ndarray) -> float:
    """AUC of the simulation's own true risk: the ceiling any model can reach on it."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(cohort.y[test], cohort.risk[cohort.resident[test]]))


def evaluate(model_path: Path | None = None, seed: int = 12345, n_residents: int = 2000) -> dict[str, object]:
    """Score a fresh simulated cohort (new seed = residents never seen) with the shipped model."""
    model = RiskModel(model_path)
    cohort = simulate(n_residents, DAYS, seed)
    idx = [RF.NAMES.index(n) for n in model.names]
    p = model.predict(cohort.X[:, idx])
    return {**_metrics(cohort.y, p), "residents": n_residents, "rows": len(p), "seed": seed,
            "model": model.tag, "simulated": True}


def _card(m: dict[str, object], path: Path) -> None:
    coef = m["coef"]
    assert isinstance(coef, dict), "metrics without coefficients"
    rows = "\n".join(f"| `{f.name}` | {f.unit} | {'+' if f.direction > 0 else '−'} | {coef[f.name]:+.3f} | "
                     f"{f.description} | {f.source} |" for f in RF.FEATURES)
    published = ", ".join(f"{k} OR {np.exp(v):.2f}" for k, v in EFFECTS.items() if k in PUBLISHED)
    assumed = ", ".join(f"{k} OR {np.exp(v):.2f}" for k, v in EFFECTS.items() if k not in PUBLISHED)
    path.write_text(f"""# Model card: {MODEL_NAME} {MODEL_VERSION}

Generated by `fallwatch models train-risk --seed {m['seed']}` (do not edit by hand).

## THIS MODEL IS TRAINED AND TESTED ON SIMULATED DATA
No real resident's data was used. The cohort is generated by `models/risk_cohort.py`
with effect directions from the fall-risk literature (docs/domain.md). Effect sizes taken from
published figures: {published}. Sizes **assumed** for this simulation (direction published,
size not): {assumed}. The AUC below says the pipeline recovers what the simulation put in; it
says **nothing** about how well falls can be predicted in real homes, where discrimination will
be lower. Replace it with a model trained on a real cohort that reads the same feature contract
before relying on its scores.

## Intended use
A daily, explainable risk score per resident to prompt a home-care risk review (exercise,
home hazards, medication, hip protectors) — not a diagnosis, never a reason to restrict a
resident. Output: P(fall within 30 days), level (low < {RF.LEVELS[1][1]}, medium, high ≥ {RF.LEVELS[2][1]}),
and the top factors raising it.

## Model
Standardise + logistic regression (sklearn), ONNX via skl2onnx ({m['onnx_bytes']} bytes,
{m['score_us']} µs per `RiskModel.score`). Factors: coefficient × standardised deviation
from the training cohort's mean, in log-odds; they sum with the intercept to the score's
logit. Training refuses coefficients whose sign contradicts the contract's direction.
Missing features are imputed with the cohort mean (contribution 0).

## Feature contract {RF.CONTRACT_VERSION} (`models/risk_features.py`)
| feature | unit | risk direction | coefficient (per SD) | meaning | finding |
|---|---|---|---|---|---|
{rows}

## Evaluation (held-out simulated residents, split by resident)
- Residents: {m['train_residents']} train / {m['test_residents']} test, {DAYS} days each
  ({m['n_train']} / {m['n_test']} resident-days).
- **AUC {m['auc']}** (the simulation's own true risk reaches {m['oracle_auc_test']} on the same rows),
  Brier {m['brier']}, base rate {m['base_rate']}, mean prediction {m['mean_predicted']}.
- Reliability plot: `reliability.png` (deciles of predicted risk vs observed rate).
- `fallwatch models eval-risk` scores a freshly simulated cohort with another seed.

## Limits
Simulated cohort; linear in the features (threshold effects such as TUG ≥ 12 s are
approximated); days of one resident are correlated, so per-day AUC is per resident in effect.
""")
