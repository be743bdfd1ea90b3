"""The console's reads and writes on every store the tests run: risk scores back from the
embedded SQLite store and from a real InfluxDB 1.x, ``resident_actions`` on SQLite and on a
real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from fallwatch.config import load_config
from fallwatch.gateway.care import ResidentActions
from fallwatch.gateway.points import to_points
from fallwatch.gateway.sinks import SeriesSink, make_sink
from fallwatch.gateway.state import StateStore
from fallwatch.protocol import contract as c
from fallwatch.testing.services import InfluxDB1, postgres_database

pytestmark = pytest.mark.integration
T0 = (c.now_ms() // 86_400_000 - 10) * 86_400_000  # recent: inside a 30-day retention policy


def _risk(site: str, resident: str, day: int, score: float) -> c.RiskScore:
    hub = f"hub-{resident}"  # one hub per flat: the resident id is a field, not part of the series
    return c.RiskScore(schema=1, site_id=site, device_id=hub, resident_id=resident, boot_id=1, seq=day,
                       msg_id=c.make_msg_id(hub, day), ts_ms=T0 + day * 86_400_000, sent_ms=T0,
                       data=c.RiskData(day=f"2026-10-{day + 1:02d}", score=score, level="medium",
                                       factors=[c.Factor("tug_s", 14.0, 0.4), c.Factor("sway_rms_mg", 60.0, 0.1)]))


def _check(sink: SeriesSink) -> None:
    sink.setup()
    msgs = [_risk("s-1", "r01", d, 0.1 + d / 100) for d in range(5)] + [_risk("s-1", "r02", 3, 0.3),
                                                                        _risk("s-2", "r01", 3, 0.5)]
    sink.write([p for m in msgs for p in to_points(m, T0)])
    got = sink.risk_points(T0 + 86_400_000, "s-1", "r01")
    assert [(r["ts_ms"], r["score"]) for r in got] == [(T0 + d * 86_400_000, 0.1 + d / 100) for d in range(1, 5)]
    assert got[0]["factors"] == {"tug_s": 0.4, "sway_rms_mg": 0.1} and got[0]["site_id"] == "s-1"
    assert got[0]["resident_id"] == "r01" and got[0]["level"] == "medium"
    everyone = sink.risk_points(T0)
    assert {(r["site_id"], r["resident_id"]) for r in everyone} == {("s-1", "r01"), ("s-1", "r02"), ("s-2", "r01")}
    assert sink.risk_points(T0, "s-1", "o'brien\\") == []  # quoted, not injected


def test_risk_points_from_the_embedded_store(tmp_path: Path) -> None:
    sink = make_sink(load_config(overrides={"influx": {"url": "", "embedded_path": str(tmp_path / "s.sqlite")}}).influx)
    try:
        _check(sink)
    finally:
        sink.close()


@pytest.mark.parametrize("rp", ["autogen", "raw"])
def test_risk_points_from_influxdb_1(influxdb: InfluxDB1, unique_name: str, rp: str) -> None:
    # "raw" is not the database's default policy: the read must ask where the gateway wrote
    cfg = load_config(overrides={"influx": {"url": influxdb.url, "version": 1, "retention_policy": rp,
                                            "database": f"care_{unique_name}".replace("-", "_")[:60]}})
    sink = make_sink(cfg.influx)
    try:
        _check(sink)
    finally:
        sink.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_resident_actions_on_both_state_stores(backend: str, tmp_path: Path, unique_name: str) -> None:
    dsn = str(tmp_path / "st.sqlite") if backend == "sqlite" else postgres_database(f"care-{unique_name}")
    state = StateStore(dsn)
    try:
        state.setup()
        actions = ResidentActions(state)
        actions.setup()
        actions.setup()  # idempotent
        actions.record("s-1", "r01", "walker", "Amir", 1000, factors=["tug_s"], note="rollator\x07 beställd")
        row = actions.record("s-1", "r01", "balance_training", "Lena", 2000)
        actions.record("s-1", "r02", "hip_protectors", "Amir", 1500)
        assert row["action"] == "balance_training" and row["actor"] == "Lena" and row["factors"] == []
        taken = actions.taken("s-1", "r01")
        assert [(r["action"], r["at_ms"]) for r in taken] == [("balance_training", 2000), ("walker", 1000)]
        assert taken[1]["factors"] == ["tug_s"] and "\x07" not in taken[1]["note"]
        assert actions.latest()[("s-1", "r01")]["action"] == "balance_training"
        with pytest.raises(ValueError):
            actions.record("s-1", "r01", "rugs", "Amir", 3000)
        assert actions.erase("s-1", "r01") == 2 and actions.taken("s-1", "r01") == []
        assert len(actions.taken("s-1", "r02")) == 1
    finally:
        state.close()
