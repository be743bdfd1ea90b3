"""SisFall loader: parsing, unit conversion, metadata; physical checks on real trials when present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fallwatch.models import sisfall

SISFALL = Path(os.environ.get("FALLWATCH_SISFALL",
                             Path(__file__).resolve().parents[2].parent / "shared/data/sisfall"))


def need_data() -> Path:
    if not SISFALL.is_dir() or not sisfall.list_subjects(SISFALL):
        pytest.skip(f"SisFall recordings not found at {SISFALL} (set FALLWATCH_SISFALL)")
    return SISFALL


def test_parse_counts_handles_sisfall_line_format() -> None:
    # made-up counts in the data set's line format (not data-set content)
    text = "  12,-250,  -3,  40,-100,   7,  30,-990,  -5;\r\n  -8,-260,  11, -20,  64,-12, -22,-1010, 9;\r\n"
    c = sisfall.parse_counts(text.encode())
    assert c.shape == (2, 9)
    assert c[0, 1] == -250 and c[1, 7] == -1010 and c[1, 8] == 9


def test_parse_counts_drops_truncated_last_row() -> None:
    c = sisfall.parse_counts("1,2,3,4,5,6,7,8,9;\n1,2,3")
    assert c.shape == (1, 9)


def test_counts_to_units_scales_per_sensor() -> None:
    counts = np.array([[256, 0, 0, 16384, 0, 0, 1024, 0, 0]])
    x = sisfall.counts_to_units(counts)
    # ADXL345 13 bit ±16 g: 256 counts = 1 g; ITG3200 16 bit ±2000 dps: 16384 = 1000 dps;
    # MMA8451Q 14 bit ±8 g: 1024 counts = 1 g.
    assert x[0, 0] == pytest.approx(1.0)
    assert x[0, 3] == pytest.approx(1000.0)
    assert x[0, 6] == pytest.approx(1.0)


def test_parse_name() -> None:
    assert sisfall.parse_name("SA01/F05_SA01_R04.txt") == ("F05", "SA01", "SA", 4)
    assert sisfall.parse_name("SE06/D17_SE06_R02.txt") == ("D17", "SE06", "SE", 2)
    assert sisfall.parse_name("Readme.txt") is None


def test_extracted_folder_layout_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A synthetic extracted folder (not data-set content) loads like an archive would."""
    monkeypatch.setattr(sisfall, "CACHE_DIR", tmp_path / "cache")
    folder = tmp_path / "data" / "SA99"
    folder.mkdir(parents=True)
    row = "0,-256,0,0,0,0,0,-1024,0;\r\n"
    (folder / "D07_SA99_R01.txt").write_text(row * 400)
    (folder / "F01_SA99_R02.txt").write_text(row * 400)
    assert sisfall.list_subjects(tmp_path / "data") == ["SA99"]
    trials = sisfall.load_subject(tmp_path / "data", "SA99", rate_hz=50.0)
    assert [(t.activity, t.is_fall, t.trial, t.group) for t in trials] == [
        ("D07", False, 1, "SA"), ("F01", True, 2, "SA")]
    assert trials[0].acc_g.shape == (100, 3)  # 400 samples at 200 Hz -> 100 at 50 Hz
    mid = trials[0].acc_g[20:80]
    assert np.allclose(mid, [0, -1, 0], atol=1e-3)
    # second read comes from the cache and is identical
    again = sisfall.load_subject(tmp_path / "data", "SA99", rate_hz=50.0)
    assert np.array_equal(again[1].acc2_g, trials[1].acc2_g)


def test_a_file_is_attributed_to_the_subject_folder_it_sits_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The archives hold a few files named after another subject (SA15/D17_SE15_R0x.txt): the
    folder wins, the manifest names only subjects present, and the rename is reported."""
    monkeypatch.setattr(sisfall, "CACHE_DIR", tmp_path / "cache")
    folder = tmp_path / "data" / "SA98"
    folder.mkdir(parents=True)
    row = "0,-256,0,0,0,0,0,-1024,0;\r\n"
    (folder / "D01_SA98_R01.txt").write_text(row * 400)
    (folder / "D17_SE97_R02.txt").write_text(row * 400)  # named after a subject not in the data
    for _ in range(2):  # the parsed read, then the cached one
        trials = sisfall.load_subject(tmp_path / "data", "SA98", rate_hz=50.0)
        assert [(t.name, t.subject, t.group, t.source_name) for t in trials] == [
            ("D01_SA98_R01", "SA98", "SA", ""), ("D17_SA98_R02", "SA98", "SA", "D17_SE97_R02.txt")]
        summary = sisfall.data_summary(trials)
        assert summary["subjects"] == ["SA98"]
        assert summary["renamed"] == ["SA98/D17_SE97_R02.txt -> D17_SA98_R02"]
    (folder / "D17_SA98_R02.txt").write_text(row * 400)  # the folder's own file of the same trial
    with pytest.raises(sisfall.SisFallError, match="two files give trial D17_SA98_R02"):
        sisfall.load_subject(tmp_path / "data", "SA98", rate_hz=50.0, cache=False)


@pytest.mark.data
def test_gravity_is_one_g_at_rest_and_accelerometers_agree() -> None:
    data = need_data()
    subject = sisfall.list_subjects(data)[0]
    trials = sisfall.load_subject(data, subject)
    sitting = [t for t in trials if t.activity in ("D07", "D09", "D12")]
    assert sitting, "expected chair/lying ADL trials"
    for t in sitting[:3]:
        mag = np.linalg.norm(t.acc_g, axis=1)
        # the quietest second of a chair trial is at rest: |a| ~ 1 g
        k = int(t.rate_hz)
        stds = [mag[i:i + k].std() for i in range(0, len(mag) - k, k)]
        i = int(np.argmin(stds)) * k
        assert np.mean(mag[i:i + k]) == pytest.approx(1.0, abs=0.08)
        # ADXL345 and MMA8451Q sit on one board: same acceleration within calibration error
        diff = np.linalg.norm(t.acc_g - t.acc2_g, axis=1)
        assert np.median(diff) < 0.15
    falls = [t for t in trials if t.is_fall]
    if falls:
        assert max(np.linalg.norm(t.acc_g, axis=1).max() for t in falls) > 2.0
