"""Streaming detector and the shipped ONNX model: metadata, triggering, de-dup, split API."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_models_signals import fall_signal, walking_signal

from fallwatch.models import features as F
from fallwatch.models.detector import (
    DEFAULT_MODEL_PATH,
    DetectorSettings,
    DeviceFallDetector,
    FallModel,
    MetadataError,
)
from fallwatch.models.fall_eval import stream_paths
from fallwatch.models.no_recovery import NoRooms
from fallwatch.models.sisfall import SENSOR_FRAME_AXES


class TiltScorer:
    """Stand-in model: 'fall' iff the posture turned > 60 deg and the body is still after.

    Lets the streaming logic be tested independently of the trained model.
    """

    version = "test"
    threshold = 0.5

    def __init__(self) -> None:
        self.calls = 0
        self.windows = 0

    def predict(self, batch: np.ndarray, refs: np.ndarray | None = None) -> np.ndarray:
        self.calls += 1
        self.windows += len(batch)
        still, lying = F.still_and_lying(F.window_features(batch))
        return (still & lying).astype(np.float32)


@pytest.fixture(scope="module")
def model() -> FallModel:
    if not DEFAULT_MODEL_PATH.exists():
        pytest.skip("no shipped model yet (run `fallwatch models train-fall`)")
    return FallModel()


def _stream(det: DeviceFallDetector, t: np.ndarray, acc: np.ndarray, gyro: np.ndarray, chunk: int) -> list:
    out = []
    for a in range(0, len(t), chunk):
        out += det.push(t[a:a + chunk], acc[a:a + chunk], gyro[a:a + chunk])
    return out


# ----------------------------------------------------------------------------- ONNX model


def test_shipped_model_metadata_matches_graph_and_feature_code(model: FallModel) -> None:
    meta = model.session.get_modelmeta().custom_metadata_map
    inp = model.session.get_inputs()[0]
    assert inp.name == meta["input_name"]
    assert inp.shape[1] == len(meta["features"].split(","))
    assert float(meta["rate_hz"]) == F.RATE_HZ == model.rate_hz
    assert float(meta["window_s"]) == pytest.approx(F.WINDOW_S)
    assert meta["placement"] == "waist"
    assert meta["channels"].split(",") == list(F.CHANNELS)
    assert 0 < model.threshold < 1
    assert model.version.count(".") == 2
    assert model.training_data["trials"] > 0
    assert DEFAULT_MODEL_PATH.stat().st_size < 1_000_000


def test_metadata_round_trip_and_rejection(tmp_path: Path, model: FallModel) -> None:
    onx = onnx.load(str(DEFAULT_MODEL_PATH))
    props = {p.key: p.value for p in onx.metadata_props}
    # a faithful copy loads and scores identically
    ok = tmp_path / "ok.onnx"
    shutil.copy(DEFAULT_MODEL_PATH, ok)
    w = np.stack([np.tile([0, -1, 0, 0, 0, 0], (F.WINDOW, 1))] * 3).astype(np.float32)
    assert np.allclose(FallModel(ok).predict(w), model.predict(w))
    # a model claiming another rate, or one feature too many, is refused
    for key, value in (("rate_hz", "100"), ("features", props["features"] + ",peak_g"), ("threshold", "1.5")):
        bad = onnx.load(str(DEFAULT_MODEL_PATH))
        onnx.helper.set_model_props(bad, {**props, key: value})
        path = tmp_path / f"bad-{key}.onnx"
        onnx.save(bad, str(path))
        with pytest.raises(MetadataError):
            FallModel(path)


def test_predict_is_batched_and_in_unit_interval(model: FallModel) -> None:
    rng = np.random.default_rng(3)
    w = (rng.normal(0, 0.5, (16, F.WINDOW, 6)) + np.array([0, -1, 0, 0, 0, 0])).astype(np.float32)
    p = model.predict(w)
    assert p.shape == (16,)
    assert np.all((p >= 0) & (p <= 1))
    assert np.allclose(p[:4], model.predict(w[:4]), atol=1e-6)
    assert model.predict(np.zeros((0, F.WINDOW, 6))).shape == (0,)


def test_shipped_model_detects_a_synthetic_fall_once(model: FallModel) -> None:
    """The stylised fall (0.5 s free fall, an 80 ms 4 g hit, perfectly still after) scores well
    above walking but, since issue 12's retraining (noise/bandwidth augmentation, a threshold set
    for <= 0.5 false alarms per ADL hour), not always above the fast path's threshold (0.91-0.93
    vs 0.96): the fast path is asserted with the threshold given, and the edge's whole decision
    (fast path + no-recovery path) with the shipped one: exactly one alert."""
    t, acc, gyro, impact = fall_signal()
    p = float(model.predict(_windows(t, acc, gyro))[0])
    assert p >= 0.8
    det = DeviceFallDetector(model, DetectorSettings(threshold=min(model.threshold, 0.8)))
    decisions = _stream(det, t, acc, gyro, chunk=25)
    assert len(decisions) == 1
    d = decisions[0]
    assert d.impact_t_s == pytest.approx(t[impact])
    assert d.lying and d.still
    assert 0 < d.decided_t_s - d.impact_t_s <= F.POST_S + 0.5 + 1e-6
    assert {r[0] for r in d.reasons} >= {"impact", "model_score", "posture_change", "stillness"}
    # what the edge sends with the shipped threshold, the wearer staying down for a minute
    t, acc, gyro, impact = fall_signal(after_s=60.0)
    fw = (acc @ SENSOR_FRAME_AXES.T).astype(np.float32)
    st = stream_paths(model, t, acc, gyro, fw, {"none": NoRooms()})
    sent = st.combined("none", DetectorSettings().dedup_s)
    assert len(sent) == 1
    assert sent[0].path == ("fast" if p >= model.threshold else "no_recovery")
    assert sent[0].decided_t_s - t[impact] <= 60.0


def _windows(t: np.ndarray, acc: np.ndarray, gyro: np.ndarray) -> np.ndarray:
    det = DeviceFallDetector(None)
    det.feed(t, acc, gyro)
    det.flush()
    return det.pending_windows()


def test_shipped_model_ignores_walking(model: FallModel) -> None:
    t, acc, gyro = walking_signal(seconds=60, amp_g=0.8)  # strong bounce: triggers, not a fall
    det = DeviceFallDetector(model)
    assert _stream(det, t, acc, gyro, chunk=50) == []
    assert det.triggers > 10  # the model, not the trigger, rejected them


# ----------------------------------------------------------------------------- streaming logic


def test_impact_then_lying_still_gives_exactly_one_decision() -> None:
    t, acc, gyro, impact = fall_signal()
    scorer = TiltScorer()
    decisions = _stream(DeviceFallDetector(scorer), t, acc, gyro, chunk=10)
    assert len(decisions) == 1
    assert decisions[0].peak_g == pytest.approx(float(np.linalg.norm(acc[impact])), rel=1e-5)


def test_no_impact_no_model_call_no_decision() -> None:
    t, acc, gyro = walking_signal(seconds=120)
    scorer = TiltScorer()
    det = DeviceFallDetector(scorer)
    assert _stream(det, t, acc, gyro, chunk=50) == []
    assert scorer.windows == 0 and det.triggers == 0


class AlwaysScorer:
    """Stand-in model that calls every window a fall: only de-dup can keep it to one alert."""

    version = "test"
    threshold = 0.5

    def predict(self, batch: np.ndarray, refs: np.ndarray | None = None) -> np.ndarray:
        return np.ones(len(batch), dtype=np.float32)


def test_one_fall_with_bounces_is_one_decision() -> None:
    t, acc, gyro, impact = fall_signal()
    # further hits 1.2 s and 2.6 s later (bouncing, an arm hitting the floor): more triggers
    for k in (60, 130):
        acc[impact + k] = acc[impact + k] * 3.0
    det = DeviceFallDetector(AlwaysScorer())
    decisions = _stream(det, t, acc, gyro, chunk=7)
    assert det.triggers == 3
    assert len(decisions) == 1
    assert det.suppressed == 2
    assert decisions[0].impact_t_s == pytest.approx(t[impact])


def test_two_falls_far_apart_are_two_decisions() -> None:
    t1, a1, g1, _ = fall_signal(after_s=40)
    t2, a2, g2, _ = fall_signal(seed=5, t0=t1[-1] + 1 / F.RATE_HZ)
    t, acc, gyro = np.concatenate([t1, t2]), np.concatenate([a1, a2]), np.concatenate([g1, g2])
    det = DeviceFallDetector(TiltScorer(), DetectorSettings(dedup_s=30))
    decisions = _stream(det, t, acc, gyro, chunk=50)
    assert len(decisions) == 2
    assert decisions[1].impact_t_s - decisions[0].impact_t_s > 40


def test_chunking_does_not_change_the_result() -> None:
    t, acc, gyro, _ = fall_signal()
    results = []
    for chunk in (1, 13, 50, len(t)):
        d = _stream(DeviceFallDetector(TiltScorer()), t, acc, gyro, chunk=chunk)
        results.append([(x.impact_t_s, round(x.peak_g, 5)) for x in d])
    assert all(r == results[0] for r in results) and len(results[0]) == 1


def test_split_api_batches_many_devices_like_push() -> None:
    scorer = TiltScorer()
    devices = [DeviceFallDetector(scorer) for _ in range(20)]
    falls = {3, 11, 17}
    signals = [fall_signal(seed=i)[:3] if i in falls else walking_signal(seconds=16, seed=i)
               for i in range(20)]
    decided: dict[int, int] = {}
    n = len(signals[0][0])
    for a in range(0, n, 25):
        for det, (t, acc, gyro) in zip(devices, signals, strict=True):
            det.feed(t[a:a + 25], acc[a:a + 25], gyro[a:a + 25])
        batches = [det.pending_windows() for det in devices]
        sizes = [len(b) for b in batches]
        if sum(sizes) == 0:
            continue
        probs = scorer.predict(np.concatenate(batches))
        for i, (det, p) in enumerate(zip(devices, np.split(probs, np.cumsum(sizes)[:-1]), strict=True)):
            decided[i] = decided.get(i, 0) + len(det.resolve(p))
    assert {i for i, k in decided.items() if k} == falls
    assert all(decided[i] == 1 for i in falls)


def test_resolve_rejects_mismatched_probabilities() -> None:
    t, acc, gyro, _ = fall_signal()
    det = DeviceFallDetector(TiltScorer())
    det.feed(t, acc, gyro)
    batch = det.pending_windows()
    assert len(batch) == 1
    with pytest.raises(ValueError):
        det.resolve(np.zeros(len(batch) + 1))


def test_flush_pads_a_window_cut_short_by_the_end_of_the_stream() -> None:
    t, acc, gyro, impact = fall_signal(after_s=1.0)  # stream ends 1 s after the impact
    det = DeviceFallDetector(TiltScorer())
    assert det.push(t, acc, gyro) == []
    decisions = det.close()
    assert len(decisions) == 1 and decisions[0].padded
    assert decisions[0].decided_t_s == pytest.approx(t[impact] + F.POST_S)


def test_missing_gyro_is_reported_once_when_the_model_needs_it(
    model: FallModel, caplog: pytest.LogCaptureFixture
) -> None:
    assert model.requires_gyro == any(n.startswith("gyro_") for n in model.feature_names)
    t, acc, _, _ = fall_signal()
    det = DeviceFallDetector(model)
    with caplog.at_level("WARNING", logger="fallwatch.models.detector"):
        det.push(t[:50], acc[:50])
        det.push(t[50:100], acc[50:100])
    warned = [r for r in caplog.records if "gyro" in r.getMessage()]
    assert len(warned) == (1 if model.requires_gyro else 0)


def test_gravity_normalisation_undoes_a_low_device_gain() -> None:
    """A soft 1.75 g impact read by a device with gain x0.85 (1.49 g) never reaches the 1.6 g
    trigger; normalised by the wearer's own still 1 g it does, at its true peak."""
    t, acc, gyro, impact = fall_signal()
    acc = acc.copy()
    acc[impact:impact + 4] *= (1.75 / np.linalg.norm(acc[impact]))
    low = acc * 0.85
    plain = DeviceFallDetector(None)
    plain.feed(t, low, gyro)
    plain.flush()
    assert plain.triggers == 0
    norm = DeviceFallDetector(None, DetectorSettings(normalise_gravity=True))
    norm.feed(t, low, gyro)
    norm.flush()
    assert norm.triggers == 1
    norm.pending_windows()
    (cand,) = norm.inflight
    assert cand.peak_g == pytest.approx(1.75, rel=0.02)
