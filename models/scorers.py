"""A transparent rule-based window scorer: the fallback when no ONNX fall model is shipped.

It plugs into :class:`fallwatch.models.detector.DeviceFallDetector` in place of
:class:`~fallwatch.models.detector.FallModel` (same ``predict(windows) -> probabilities``
shape), on the same features as the model (:mod:`fallwatch.models.features`), so the stream,
trigger, window, de-dup and alert path are identical whichever scorer runs.

The rule is the classic impact + posture change + stillness triad: an impact alone
(a dropped wearable, a bump) or a posture change alone (lying down in bed) is not a
fall; posture change carries most of the weight because it separates falls from
vigorous but upright activity.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fallwatch.models import features as F

if TYPE_CHECKING:
    from fallwatch.models.detector import FallModel

log = logging.getLogger(__name__)


class ThresholdScorer:
    """Heuristic fall 'probability' from impact, posture change and post-impact stillness."""

    name = "threshold"
    version = "threshold-1"
    rate_hz = F.RATE_HZ
    window_s = F.WINDOW_S
    threshold = 0.75
    #: what it reads (so the detector does not learn the walking upright for it)
    feature_names = ("peak_g", "tilt_change_deg", "std_rest_g")

    def __init__(self) -> None:
        self._col = {n: i for i, n in enumerate(F.FEATURE_NAMES)}
        self.metadata = {"name": self.name, "version": self.version, "threshold": str(self.threshold)}

    @property
    def tag(self) -> str:
        return f"{self.name}@{self.version}"

    def predict(self, batch: np.ndarray, refs: np.ndarray | None = None) -> np.ndarray:
        if len(batch) == 0:
            return np.zeros(0, dtype=np.float32)
        f = F.window_features(batch)
        c = self._col
        impact = np.clip((f[:, c["peak_g"]] - F.TRIGGER_G) / 1.4, 0.0, 1.0)
        posture = np.clip((f[:, c["tilt_change_deg"]] - 20.0) / 40.0, 0.0, 1.0)
        still = np.clip(1.0 - (f[:, c["std_rest_g"]] - 0.05) / 0.25, 0.0, 1.0)
        return (0.25 * impact + 0.5 * posture + 0.25 * still).astype(np.float32)


def load_scorer(path: str | Path | None = None) -> FallModel | ThresholdScorer:
    """The ONNX fall model at ``path`` (or the shipped default); the rule-based scorer
    only when no model file exists. A model file that exists but fails to load raises:
    silently falling back would hide a broken deployment."""
    from fallwatch.models.detector import DEFAULT_MODEL_PATH, FallModel

    p = Path(path) if path is not None else DEFAULT_MODEL_PATH
    if p.exists():
        return FallModel(p)
    if path is not None:
        raise FileNotFoundError(f"fall model {p} not found")
    log.warning("no ONNX fall model at %s: using the rule-based threshold scorer", p)
    return ThresholdScorer()
