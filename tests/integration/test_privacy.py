"""Export and erasure of a resident on real parts (issue 14, docs/privacy.md).

Two residents at one site send fall alerts, risk scores and wearable telemetry over the real
Mosquitto into a real gateway (InfluxDB 1.x; state on SQLite and on PostgreSQL), are paged
about through a real web hook, and one of them is acknowledged and resolved in the API. Then
the first is exported (the file's contents checked) and erased through the admin API; after
that no API answer, no row of any state-store table and no InfluxDB point holds their id or
name, the second resident is intact, the audit logs record the erasure and still verify
(``fallwatch gateway audit-verify``), and late copies of their data (a redelivery, a message
from a hub's outbox, a spooled batch) do not bring it back."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fallwatch.cli import main as cli_main
from fallwatch.gateway.app import Gateway
from fallwatch.gateway.points import to_points
from fallwatch.gateway.privacy import Privacy
from fallwatch.gateway.registry import LOG_FIELDS, Registry
from fallwatch.gateway.spool import Spool
from fallwatch.gateway.staff import StaffDirectory
from fallwatch.gateway.state import StateStore
from fallwatch.protocol import contract as c
from fallwatch.protocol import topics
from fallwatch.testing import publisher as t
from fallwatch.testing.receivers import Receiver
from fallwatch.testing.services import InfluxDB1, Mosquitto, postgres_database

pytestmark = pytest.mark.integration

SITE, HUB = "site-p", "hub-p"
ANN, ANN_NAME, ANN_WEAR = "ann-7", "Ann Lindqvist", "wear-ann"
BO, BO_NAME, BO_WEAR = "bo-9", "Bo Karlsson", "wear-bo"
DAY_MS = 86_400_000


def _env(seq: int, ts_ms: int) -> dict[str, Any]:
    return {"schema": 1, "site_id": SITE, "device_id": HUB, "boot_id": 1, "seq": seq,
            "msg_id": c.make_msg_id(HUB, seq), "ts_ms": ts_ms, "sent_ms": c.now_ms()}


def fall(seq: int, ts: int, resident: str, wearable: str) -> c.FallAlert:
    return c.FallAlert(**_env(seq, ts), resident_id=resident, data=c.FallData(
        event_id=f"ev{seq}", status="alert", impact_ms=ts - 20_000, confidence=0.93, peak_g=3.4, lying_s=20.0,
        room="kitchen", sensor=wearable, reasons=[c.Reason("impact", "3.4 g")], model="fall@1"))


def risk(seq: int, ts: int, resident: str, score: float) -> c.RiskScore:
    return c.RiskScore(**_env(seq, ts), resident_id=resident, data=c.RiskData(
        day=time.strftime("%Y-%m-%d", time.gmtime(ts / 1000)), score=score,
        level="high" if score > 0.7 else "low", factors=[c.Factor("gait_speed", 0.4, score / 2)], model="risk@1"))


def tele(seq: int, ts: int, sensor: str) -> c.Telemetry:
    return c.Telemetry(**_env(seq, ts), data=c.TeleData(sensor=sensor, window_s=10.0, room="living",
                                                         fields={"acc_mean_g": 1.01, "steps": 12}))


def topic(m: c.Message) -> str:
    if isinstance(m, c.FallAlert):
        return topics.fall(SITE, HUB)
    if isinstance(m, c.RiskScore):
        return topics.risk(SITE, HUB)
    assert isinstance(m, c.Telemetry)
    return topics.tele(SITE, HUB, m.data.sensor)


def call(gw: Gateway, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any, str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{gw.http_url}{path}", data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            raw = r.read().decode()
            return r.status, json.loads(raw) if "json" in r.headers.get("content-type", "") else raw, raw
    except urllib.error.HTTPError as e:
        raw = e.read().decode()
        return e.code, json.loads(raw or "{}"), raw


def state_dump(st: StateStore) -> dict[str, str]:
    """Every row of every table of the state store, as text per table."""
    if st.dialect.name == "sqlite":
        names = [r["name"] for r in st._select("SELECT name FROM sqlite_master WHERE type = 'table'")]
    else:
        names = [r["table_name"] for r in st._select(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")]
    assert {"alerts", "alert_log", "access_log", "privacy_log", "reg_log", "reg_residents", "pages",
            "deliveries", "seen", "resident_actions"} <= set(names)
    return {n: json.dumps(st._select(f"SELECT * FROM {n}"), default=str) for n in names}


def influx_dump(db: InfluxDB1, database: str) -> str:
    return json.dumps(db.query("SELECT * FROM /.*/", db=database))


@pytest.fixture(params=["sqlite", "postgresql"])
def state_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "state.sqlite")
    return postgres_database("privacy_erasure")


@pytest.fixture
def hook() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_export_then_erasure_end_to_end(mosquitto: Mosquitto, influxdb: InfluxDB1, tmp_path: Path, state_db: str,
                                        hook: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FALLWATCH_GATEWAY_API_TOKEN", raising=False)
    monkeypatch.setenv("FW_PRIV_HOOK", "privacy-test-webhook-secret")
    staff = StaffDirectory(tmp_path / "staff.toml")
    admin, carer = staff.add("Ada Admin", "admin"), staff.add("Carl Carer", "carer")
    name = "privacy_" + ("pg" if state_db.startswith("postgresql") else "lite")
    cfg = t.make_cfg(mosquitto, influxdb, tmp_path, name.replace("_", "-"), state_db=state_db,
                     staff_users_file=str(tmp_path / "staff.toml"), channels=[
                         {"type": "webhook", "name": "hook", "broadcast": False, "url": hook.url,
                          "secret_env": "FW_PRIV_HOOK", "retry_attempts": 1, "timeout_s": 3}],
                     paging={"people": [{"id": "carl", "name": "Carl Carer",
                                         "contacts": [{"channel": "hook", "to": f"{hook.url}/carl"}]}],
                             "teams": [{"id": "day", "name": "Day", "sites": [SITE], "shifts": [{"people": ["carl"]}],
                                        "quiet_hours": None}]})
    gw = Gateway(cfg)
    gw.privacy.wait_s = 1.5  # > the tombstone refresh (1 s): every process has seen it before deleting
    gw.start()
    pub = t.Publisher("127.0.0.1", mosquitto.port, f"pub-{name}")
    try:
        reg = Registry(gw.state)
        reg.add_device(HUB, "hub", actor="tina", site_id=SITE)
        for rid, who, wear in ((ANN, ANN_NAME, ANN_WEAR), (BO, BO_NAME, BO_WEAR)):
            reg.add_resident(SITE, rid, actor="lead", name=who, flat="12 B", next_of_kin=f"{who} junior")
            reg.add_device(wear, "wearable", actor="tina", hub_id=HUB)
            reg.assign(wear, rid, actor="tina")
        now = c.now_ms()
        msgs: list[c.Message] = []
        seq = 0
        for rid, wear, score in ((ANN, ANN_WEAR, 0.81), (BO, BO_WEAR, 0.3)):
            for k in range(3):
                seq += 1
                msgs.append(risk(seq, now - (3 - k) * DAY_MS // 24, rid, score))  # three scores, an hour apart
            for k in range(4):
                seq += 1
                msgs.append(tele(seq, now + k * 100, wear))  # worn since the assignment
            seq += 1
            msgs.append(fall(seq, now - 5_000, rid, wear))
        seq += 1
        msgs.append(tele(seq, now - 30_000, "pir-living"))  # a room sensor: nobody's in particular
        for m in msgs:
            pub.publish(topic(m), c.encode(m))
        assert pub.wait()
        db = name
        assert t.wait_until(lambda: len(gw.state.alerts(kind="fall")) == 2 and gw.wait_idle(5), 30)
        assert t.wait_until(lambda: len(influxdb.query("SELECT * FROM fall_alert", db=db) or []) == 1
                            and len(influxdb.query("SELECT * FROM fall_alert", db=db)[0]["values"]) == 2, 20)
        assert t.wait_until(lambda: len(gw.pager.store.deliveries()) >= 2, 20)  # both falls paged to Carl
        ann_fall = next(a for a in gw.state.alerts(kind="fall") if a["resident_id"] == ANN)
        # a carer acknowledges and resolves Ann's fall, with a note naming her
        assert call(gw, "POST", f"/alerts/{ann_fall['alert_id']}/ack", carer, {})[0] == 200
        assert call(gw, "POST", f"/alerts/{ann_fall['alert_id']}/resolve", carer,
                    {"outcome": "no_injury", "note": f"{ANN_NAME} was sitting up, unhurt"})[0] == 200
        # a team's record of the action taken after her risk review (the resident page)
        assert call(gw, "POST", f"/residents/{SITE}/{ANN}/actions", carer,
                    {"action": "walker", "note": f"{ANN_NAME} got a rollator"})[0] == 200
        assert any(a["kind"] == "fall_risk" and a["resident_id"] == ANN for a in gw.state.alerts())
        assert ANN in json.dumps(state_dump(gw.state)) and ANN in influx_dump(influxdb, db)  # the search works

        # ---- export: one file, admin only
        assert call(gw, "GET", f"/residents/{SITE}/{ANN}/export", carer)[0] == 403
        code, doc, _ = call(gw, "GET", f"/residents/{SITE}/{ANN}/export", admin)
        assert code == 200 and doc["format"] == "fallwatch-resident-export/1"
        assert doc["resident"]["name"] == ANN_NAME and doc["resident"]["next_of_kin"] == f"{ANN_NAME} junior"
        assert [a["device_id"] for a in doc["device_assignments"]] == [ANN_WEAR]
        falls = [a for a in doc["alerts"] if a["kind"] == "fall"]
        assert len(falls) == 1 and falls[0]["outcome"] == "no_injury" and "unhurt" in falls[0]["outcome_note"]
        assert [s["action"] for s in falls[0]["trail"]][:1] == ["raised"]
        assert {"acknowledge", "clear", "notified"} <= {s["action"] for s in falls[0]["trail"]}
        assert falls[0]["deliveries"] and falls[0]["deliveries"][0]["person"] == "carl"
        assert any(a["kind"] == "fall_risk" for a in doc["alerts"])
        assert [r["score"] for r in doc["risk_scores"]] == [0.81, 0.81, 0.81] and doc["risk_scores"][0]["factors"]
        assert [a["action"] for a in doc["resident_actions"]] == ["walker"]
        assert BO not in json.dumps(doc) and BO_NAME not in json.dumps(doc)
        assert gw.privacy.store._select("SELECT action FROM privacy_log")[-1]["action"] == "resident.export"

        # ---- a batch spooled on this machine before the erasure, holding both residents' points
        side = Privacy(gw.state, None, tmp_path / "other-spool", wait_s=0)
        spool = Spool(tmp_path / "other-spool", 1 << 20)
        spool.append([p for m in msgs[:8] + msgs[8:10] for p in to_points(m, now)])
        spool.close()

        # ---- erasure: admin only, confirmed, CSRF-guarded like every state change
        assert call(gw, "POST", f"/residents/{SITE}/{ANN}/erase", carer, {"confirm": ANN})[0] == 403
        assert call(gw, "POST", f"/residents/{SITE}/{ANN}/erase", admin, {})[0] == 400
        replica = None
        if state_db.startswith("postgresql"):  # a second replica erases at the same moment
            replica = Privacy(StateStore(state_db), cfg.influx, None, wait_s=1.5)
            other: dict[str, Any] = {}
            th = threading.Thread(target=lambda: other.update(replica.erase(SITE, ANN, "Ada Admin (replica 2)")))
            th.start()
        code, report, _ = call(gw, "POST", f"/residents/{SITE}/{ANN}/erase", admin, {"confirm": ANN})
        if replica is not None:
            th.join(30)
            assert other["pseudonym"] == report["pseudonym"]
            deleted = {k: report["state"].get(k, 0) + other["state"].get(k, 0) for k in report["state"]}
        else:
            deleted = report["state"]
        assert code == 200, report
        assert deleted["alerts"] == 2 and deleted["reg_residents"] == 1 and deleted["reg_assignments"] == 1
        assert deleted["deliveries"] >= 1 and deleted["pages"] >= 1 and deleted["resident_actions"] == 1
        # the same erasure run on the machine holding that spool (the CLI): Ann's 8 points go, Bo's 2 stay
        assert side.erase(SITE, ANN, "Ada Admin")["spool_points"] == 8
        spool = Spool(tmp_path / "other-spool", 1 << 20)
        assert spool.depth == 2
        spool.close()
        if replica is not None:
            replica.store.close()
        print("erasure report:", json.dumps(report, sort_keys=True))
        # again: nothing left, said so (idempotent)
        assert call(gw, "POST", f"/residents/{SITE}/{ANN}/erase", admin, {"confirm": ANN})[0] == 404

        # ---- late copies: a redelivery, a message from the hub's outbox, a batch another replica spooled
        late = [fall(msgs[7].seq, msgs[7].ts_ms, ANN, ANN_WEAR),  # the same msg_id again
                risk(900, now - 1000, ANN, 0.9), tele(901, now + 1000, ANN_WEAR), fall(902, now - 900, ANN, ANN_WEAR)]
        for m in late:
            pub.publish(topic(m), c.encode(m))
        assert pub.wait()
        gw.spool.append([p for m in (risk(903, now - 800, ANN, 0.9), risk(904, now - 700, BO, 0.2))
                         for p in to_points(m, now)])
        assert t.wait_until(lambda: gw.wait_idle(5) and gw.counters.erased_dropped >= 4, 20)

        # ---- nothing of Ann anywhere: API, every state-store table, InfluxDB
        for path in ("/alerts", "/planning", "/devices", "/audit", "/audit/entries", "/audit/export?format=json",
                     "/visits", "/devices/overview", f"/residents/{SITE}/{BO}"):
            code, _, raw = call(gw, "GET", path, admin)
            assert code == 200 and ANN not in raw and ANN_NAME not in raw, path
        assert call(gw, "GET", f"/residents/{SITE}/{ANN}/export", admin)[0] == 404
        code, _, raw = call(gw, "GET", f"/residents/{SITE}/{ANN}", admin)  # the resident page
        assert ANN_NAME not in raw and "rollator" not in raw and "0.81" not in raw, raw
        dump = state_dump(gw.state)
        for table, text in dump.items():
            assert ANN not in text and ANN_NAME not in text and "Lindqvist" not in text, table
        series = influx_dump(influxdb, db)
        assert ANN not in series and ANN_NAME not in series
        assert not influxdb.query(f"SELECT * FROM telemetry WHERE sensor = '{ANN_WEAR}'", db=db)
        # ---- Bo is intact, and so is the room sensor
        assert BO_NAME in dump["reg_residents"] and BO in dump["alerts"]
        bo_risk = influxdb.query(f"SELECT score FROM risk WHERE resident_id = '{BO}'", db=db)
        assert len(bo_risk[0]["values"]) == 4  # three, and the one spooled after the erasure
        assert len(influxdb.query(f"SELECT * FROM telemetry WHERE sensor = '{BO_WEAR}'", db=db)[0]["values"]) == 4
        assert influxdb.query("SELECT * FROM telemetry WHERE sensor = 'pir-living'", db=db)
        code, bo_doc, _ = call(gw, "GET", f"/residents/{SITE}/{BO}/export", admin)
        assert code == 200 and len(bo_doc["risk_scores"]) == 4 and bo_doc["resident"]["name"] == BO_NAME

        # ---- the audit log records the erasure (who, when, pseudonym, counts) and still verifies
        code, entries, _ = call(gw, "GET", "/audit/entries?log=privacy&action=erase", admin)
        assert code == 200 and entries[0]["subject"] == f"{SITE}/{report['pseudonym']}"
        assert {e["actor"] for e in entries} >= {"Ada Admin"}
        assert json.loads(entries[-1]["detail"])["state"]["alerts"] >= 1
        code, access, _ = call(gw, "GET", f"/audit/entries?log=access&action=/residents/{SITE}/~", admin)
        assert f"POST /residents/{SITE}/{report['pseudonym']}/erase" in {e["action"] for e in access}
        assert call(gw, "GET", "/audit/entries?log=privacy", carer)[0] == 403
        assert call(gw, "GET", "/audit/export", carer)[0] == 403
        code, csv_text, _ = call(gw, "GET", "/audit/export?format=csv&actor=Ada%20Admin", admin)
        assert code == 200 and csv_text.startswith("log,id,at_ms,actor,action,subject,detail")
        assert "resident.erase" in csv_text and "Carl Carer" not in csv_text
        assert all(r["broken_at"] is None for r in gw.state.verify_audit({"reg_log": LOG_FIELDS}).values())
    finally:
        pub.close()
        gw.stop()
    conf = tmp_path / "verify.toml"
    conf.write_text(f'[mqtt]\nurl = "{mosquitto.url}"\n[gateway]\nstate_db = "{state_db}"\n')
    assert cli_main(["gateway", "audit-verify", "--config", str(conf)]) == 0
