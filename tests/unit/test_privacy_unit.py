"""Export and erasure without a broker (gateway/privacy.py, docs/privacy.md): the CLI on a SQLite
state store and the embedded series store; the tombstone filter; the audit view's filters."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from fallwatch.cli import main as cli_main
from fallwatch.config import load_config
from fallwatch.gateway.points import to_points
from fallwatch.gateway.privacy import ErasedFilter, Privacy, audit_entries
from fallwatch.gateway.registry import LOG_FIELDS, Registry
from fallwatch.gateway.sinks.sqlite import SqliteSeriesSink
from fallwatch.gateway.state import StateStore
from fallwatch.protocol import contract as c
from fallwatch.testing import publisher as t


def _setup(tmp_path: Path) -> tuple[Path, StateStore, SqliteSeriesSink]:
    conf = tmp_path / "fw.toml"
    conf.write_text(f'[influx]\nurl = ""\nembedded_path = "{tmp_path / "series.sqlite"}"\n'
                    f'[gateway]\nstate_db = "{tmp_path / "state.sqlite"}"\nspool_dir = "{tmp_path / "spool"}"\n')
    st = StateStore(str(tmp_path / "state.sqlite"))
    st.setup()
    reg = Registry(st)
    reg.setup()
    reg.add_device("hub-1", "hub", actor="tina", site_id="site-a")
    reg.add_resident("site-a", "r01", actor="lead", name="Greta Holm", flat="3 A")
    reg.add_resident("site-a", "r02", actor="lead", name="Sven Berg", flat="3 B")
    reg.add_device("wear-r01", "wearable", actor="tina", hub_id="hub-1")
    reg.assign("wear-r01", "r01", actor="tina")
    sink = SqliteSeriesSink(tmp_path / "series.sqlite")
    sink.setup()
    # distinct times: two points of one series in the same millisecond are one point in the
    # series store (as in InfluxDB), and a fast machine makes both falls in one millisecond
    base = c.now_ms()
    for seq, who in ((1, "r01"), (2, "r02")):
        msg = c.decode(*t.fall("site-a", "hub-1", seq, resident=who, ts_ms=base + seq))
        assert isinstance(msg, c.FallAlert)
        st.record_fall(msg, base + 10)
        sink.write(to_points(msg, base + 10))
    sink.write(to_points(c.decode(*t.tele("site-a", "hub-1", 3, sensor="wear-r01", ts_ms=base)), base + 10))
    return conf, st, sink


def test_cli_export_and_erase(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    import fallwatch.gateway.privacy as privacy

    monkeypatch.setattr(privacy, "ERASE_WAIT_S", 0.0)
    conf, st, sink = _setup(tmp_path)
    out = tmp_path / "greta.json"
    assert cli_main(["gateway", "resident", "export", "r01", "-o", str(out), "--config", str(conf),
                     "--actor", "ada"]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # personal data: owner only
    doc = json.loads(out.read_text())
    assert doc["resident"]["name"] == "Greta Holm" and [a["resident_id"] for a in doc["alerts"]] == ["r01"]
    assert doc["alerts"][0]["trail"][0]["action"] == "raised"
    assert doc["device_assignments"][0]["device_id"] == "wear-r01"
    assert "Sven" not in out.read_text()
    assert cli_main(["gateway", "resident", "export", "nobody", "--config", str(conf)]) == 1
    assert cli_main(["gateway", "resident", "erase", "r01", "--config", str(conf)]) == 2  # no --yes
    capsys.readouterr()
    assert cli_main(["gateway", "resident", "erase", "r01", "--yes", "--config", str(conf), "--actor", "ada"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["state"]["alerts"] == 1 and report["state"]["reg_residents"] == 1
    assert report["series"]["fall_alert"] == 1 and report["series"]["telemetry"] == 1
    assert [f["resident_id"] for _, f, _ in sink.rows("fall_alert")] == ["r02"] and not sink.rows("telemetry")
    text = json.dumps({n: st._select(f"SELECT * FROM {n}") for n in (
        "alerts", "alert_log", "reg_residents", "reg_assignments", "reg_log", "privacy_log", "privacy_pseudonyms")})
    assert not re.search(r"(?<![\w-])r01\b", text), text  # (wear-r01 is a device's id, not hers)
    assert "Greta" not in text and "Sven Berg" in text
    assert cli_main(["gateway", "resident", "erase", "r01", "--yes", "--config", str(conf)]) == 0  # idempotent
    assert "nothing held" in capsys.readouterr().out
    assert all(r["broken_at"] is None for r in st.verify_audit({"reg_log": LOG_FIELDS}).values())
    # the same id at two sites: the CLI asks which
    Registry(st).add_resident("site-b", "r02", actor="lead", name="Other Sven")
    assert cli_main(["gateway", "resident", "export", "r02", "--config", str(conf)]) == 1
    assert "give --site" in capsys.readouterr().err
    assert cli_main(["gateway", "resident", "export", "r02", "--site", "site-b", "--config", str(conf)]) == 0


def test_tombstones_drop_late_points_and_alerts(tmp_path: Path) -> None:
    conf, st, _ = _setup(tmp_path)
    cfg = load_config(conf)
    before = c.now_ms()
    Privacy(st, cfg.influx, None, wait_s=0).erase("site-a", "r01", "ada")
    f = ErasedFilter(st)
    late = c.decode(*t.fall("site-a", "hub-1", 7, resident="r01", ts_ms=before - 1000))
    other = c.decode(*t.fall("site-a", "hub-1", 8, resident="r02", ts_ms=before - 1000))
    after = c.decode(*t.fall("site-a", "hub-1", 9, resident="r01", ts_ms=c.now_ms() + 60_000))
    assert f.message(late) and not f.message(other) and not f.message(after)
    tele = to_points(c.decode(*t.tele("site-a", "hub-1", 10, sensor="wear-r01", ts_ms=before)), before)
    room = to_points(c.decode(*t.tele("site-a", "hub-1", 11, sensor="pir-1", ts_ms=before)), before)
    pts = to_points(late, before) + to_points(other, before) + tele + room
    kept = f.points(pts)
    assert [p[2].get("resident_id") for p in kept if p[0] == "fall_alert"] == ["r02"]
    assert [p[1]["sensor"] for p in kept if p[0] == "telemetry"] == ["pir-1"]


def test_audit_entries_filters(tmp_path: Path) -> None:
    _, st, _ = _setup(tmp_path)
    st.log_access("Anna", "carer", "GET", "/alerts", 200, "127.0.0.1", 1000)
    st.log_access("Ada", "admin", "GET", "/audit", 200, "127.0.0.1", 2000)
    rows = audit_entries(st, actor="Anna")
    assert rows and {r["actor"] for r in rows} == {"Anna"} and rows[0]["action"] == "GET /alerts"
    assert [r["actor"] for r in audit_entries(st, log="access", since_ms=1500)] == ["Ada"]
    assert {r["action"] for r in audit_entries(st, log="registry", action="RESIDENT.ADD")} == {"resident.add"}
    assert all(r["subject"].startswith("site-a/~") for r in audit_entries(st, log="registry", action="resident"))


def test_a_store_that_cannot_delete_or_is_down_leaves_the_state_store_intact(tmp_path: Path) -> None:
    from fallwatch.gateway.privacy import PrivacyError, StoreUnavailable

    _, st, _ = _setup(tmp_path)
    before = c.now_ms() - 1000  # an event from before the (refused) erasures
    down = load_config(overrides={"influx": {"url": "http://127.0.0.1:9", "version": 1, "timeout_s": 1}}).influx
    with pytest.raises(StoreUnavailable, match="run the erasure again"):
        Privacy(st, down, None, wait_s=0).erase("site-a", "r01", "ada")
    v3 = load_config(overrides={"influx": {"url": "http://127.0.0.1:9", "version": 3}}).influx
    with pytest.raises(PrivacyError, match="cannot delete single points"):
        Privacy(st, v3, None, wait_s=0).erase("site-a", "r01", "ada")
    assert [a["resident_id"] for a in st.alerts()] == ["r01", "r02"]  # nothing deleted from the state store
    f = ErasedFilter(st)  # but the tombstone already keeps her new data out
    assert f.message(c.decode(*t.fall("site-a", "hub-1", 5, resident="r01", ts_ms=before)))


def test_every_resident_table_of_a_full_gateway_state_is_covered(tmp_path: Path) -> None:
    """Every table of the gateway's state store with a resident_id column is in RESIDENT_TABLES (a new
    table holding residents' data must be added there, one line), and every listed table has the
    columns its rows are found by."""
    from fallwatch.gateway.paging.store import PagingStore
    from fallwatch.gateway.privacy import RESIDENT_TABLES, _tables

    st = StateStore(str(tmp_path / "st.sqlite"))  # every table a gateway's start_state() creates
    st.setup()
    PagingStore(st).setup()
    Registry(st).setup()
    Privacy(st, None).setup()
    from fallwatch.gateway.care import ResidentActions

    ResidentActions(st).setup()  # the console's record of actions taken (gateway/care.py)
    try:
        names = [r["name"] for r in st._select("SELECT name FROM sqlite_master WHERE type = 'table'")]
        with_resident = {n for n in names if "resident_id" in st._columns(n)}
        listed = {t for t, _, _ in RESIDENT_TABLES}
        assert with_resident <= listed, with_resident - listed
        found = {t for t, _, _ in _tables(st)}
        assert found == listed & set(names)
        assert {"alerts", "deliveries", "pages", "reg_residents", "resident_actions"} <= found
    finally:
        st.close()
