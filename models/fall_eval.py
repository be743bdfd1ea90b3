"""Trial-level evaluation of the streaming detector, as the edge runs it.

Used by ``eval-fall`` (shipped ONNX model) and by the cross-validation in training (fold
models), so the reported numbers always come from :class:`fallwatch.models.detector.DeviceFallDetector`
with its deployed settings, never from a shortcut over window scores.

Rules:
- Samples are pushed in chunks of :data:`CHUNK_S` (like an edge receiving sensor batches);
  a decision's time is the newest sample's time when its window became complete.
- A fall trial is detected if any alert fires during it; an ADL trial is a false alarm
  trial if any alert fires. False alarms per hour count every ADL alert over ADL hours.
- Latency: from the fall's acceleration peak (largest magnitude in the trial) to the first
  alert's decision time.
- End of a trial: a recording stops but the person does not, so ``DeviceFallDetector.close``
  cuts windows still waiting for post-impact samples by holding the last sample (the
  decision time is then impact + post_s). Such decisions are flagged ``padded`` and counted
  (``padded_alerts``) so their effect on the figures is visible.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from fallwatch.models import features as F
from fallwatch.models.detector import DetectorSettings, DeviceFallDetector, FallDecision, WindowScorer
from fallwatch.models.sisfall import Trial

CHUNK_S = 0.5


@dataclass
class TrialResult:
    name: str
    subject: str
    group: str
    activity: str
    is_fall: bool
    duration_s: float
    peak_t_s: float
    alerts: list[FallDecision] = field(default_factory=list)

    @property
    def alerted(self) -> bool:
        return bool(self.alerts)

    @property
    def latency_s(self) -> float | None:
        if not (self.is_fall and self.alerts):
            return None
        return self.alerts[0].decided_t_s - self.peak_t_s

    @property
    def max_probability(self) -> float:
        return max((a.probability for a in self.alerts), default=0.0)


def run_trial(trial: Trial, model: WindowScorer, settings: DetectorSettings | None = None,
              chunk_s: float = CHUNK_S) -> TrialResult:
    """Stream one trial through a fresh detector."""
    det = DeviceFallDetector(model, settings)
    n = len(trial.acc_g)
    t = np.arange(n) / trial.rate_hz
    step = max(1, round(chunk_s * trial.rate_hz))
    alerts: list[FallDecision] = []
    for a in range(0, n, step):
        alerts += det.push(t[a:a + step], trial.acc_g[a:a + step], trial.gyro_dps[a:a + step])
    alerts += det.close()
    peak = float(np.argmax(F.magnitude(trial.acc_g)) / trial.rate_hz)
    return TrialResult(trial.name, trial.subject, trial.group, trial.activity, trial.is_fall,
                       trial.duration_s, peak, alerts)


def run_trials(trials: Iterable[Trial], model: WindowScorer, settings: DetectorSettings | None = None,
               progress: bool = False) -> list[TrialResult]:
    it = trials
    if progress:
        from tqdm import tqdm

        it = tqdm(list(trials), desc="eval", unit="trial")
    return [run_trial(t, model, settings) for t in it]


def _summary(results: list[TrialResult]) -> dict[str, object]:
    falls = [r for r in results if r.is_fall]
    adls = [r for r in results if not r.is_fall]
    tp = sum(r.alerted for r in falls)
    fn = len(falls) - tp
    fp = sum(r.alerted for r in adls)
    tn = len(adls) - fp
    adl_hours = sum(r.duration_s for r in adls) / 3600
    adl_alerts = sum(len(r.alerts) for r in adls)
    lat = [r.latency_s for r in falls if r.latency_s is not None]
    sens = tp / len(falls) if falls else None
    spec = tn / len(adls) if adls else None
    prec = tp / (tp + fp) if (tp + fp) else None
    f1 = (2 * prec * sens / (prec + sens)) if (prec is not None and sens and (prec + sens)) else None
    return {
        "trials": len(results),
        "fall_trials": len(falls),
        "adl_trials": len(adls),
        "subjects": sorted({r.subject for r in results}),
        "tp": tp, "fn": fn, "fp": fp, "tn": tn,
        "sensitivity": _r(sens),
        "specificity": _r(spec),
        "precision": _r(prec),
        "f1": _r(f1),
        "adl_hours": round(adl_hours, 4),
        "adl_alerts": adl_alerts,
        "false_alarms_per_hour": _r(adl_alerts / adl_hours if adl_hours else None),
        "median_latency_s": _r(float(np.median(lat)) if lat else None),
        "p90_latency_s": _r(float(np.percentile(lat, 90)) if lat else None),
        "padded_alerts": sum(a.padded for r in results for a in r.alerts),
        "missed_falls": [r.name for r in falls if not r.alerted],
        "false_alarm_trials": [r.name for r in adls if r.alerted],
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def summarise(results: list[TrialResult]) -> dict[str, object]:
    """Overall figures plus the same per group (SA adults, SE elderly)."""
    out = _summary(results)
    out["groups"] = {g: _summary([r for r in results if r.group == g])
                     for g in sorted({r.group for r in results})}
    return out
