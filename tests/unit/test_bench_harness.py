"""The benchmark harness: medians and spread over repeated runs, raw samples kept for plots."""

from __future__ import annotations

from pathlib import Path

from fallwatch.app.bench.cli import aggregate, plot


def test_aggregate_reports_median_and_spread_and_pools_samples() -> None:
    runs = [{"rate": 10.0, "lost": 0, "name": "a", "_lat_ms": [1, 2]},
            {"rate": 30.0, "lost": 0, "name": "b", "_lat_ms": [3]},
            {"rate": 20.0, "lost": 0, "name": "c"}]
    out = aggregate(runs)
    assert out["rate"] == 20.0 and out["rate_min"] == 10.0 and out["rate_max"] == 30.0
    assert out["lost"] == 0 and "lost_min" not in out  # no spread to report
    assert out["name"] == "c" and out["runs"] == 3
    assert sorted(out["_lat_ms"]) == [1, 2, 3]


def test_plots_are_written_for_raw_samples(tmp_path: Path) -> None:
    written = plot("gateway", {"_latency_ms": [1.0, 2.0, 2.5, 9.0], "_load_curve": [[100, 100, 3], [200, 190, 9]],
                               "rate": 5}, tmp_path)
    assert {p.name for p in written} == {"gateway-latency_ms.png", "gateway-load_curve.png"}
    assert all(p.stat().st_size > 1000 for p in written)
