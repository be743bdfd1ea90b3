"""Issue 15: the provisioning registry on both state backends (SQLite file, real PostgreSQL),
its audit trail, assignment history, personal-data handling, bundles and the bulk CSV."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from fallwatch.cli import main
from fallwatch.gateway.registry import Registry, RegistryError, bulk_apply, mosquitto_hash
from fallwatch.gateway.state import StateStore
from fallwatch.testing.services import find_binary, postgres_database

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000_000

    def __call__(self) -> int:
        return self.t


@pytest.fixture(params=["sqlite", "postgresql"])
def reg(request: pytest.FixtureRequest, tmp_path: Path, unique_name: str) -> Any:
    dsn = str(tmp_path / "st.sqlite") if request.param == "sqlite" else postgres_database(unique_name)
    store = StateStore(dsn)
    store.setup()
    clock = Clock()
    r = Registry(store, now_ms=clock)
    r.setup()
    r.clock = clock  # type: ignore[attr-defined]
    yield r
    store.close()


def _home(reg: Registry) -> None:
    reg.add_resident("site-a", "r01", actor="lead", name="Mary Smith", flat="Flat 12", team="north",
                     next_of_kin="John +44 7700 900123")
    reg.add_resident("site-a", "r02", actor="lead", name="Ann Jones", flat="Flat 14", team="south")
    reg.add_device("hub-1", "hub", actor="tech", site_id="site-a", home_id="flat-12")
    reg.add_device("wear-1", "wearable", actor="tech", hub_id="hub-1")
    for room, kind in (("living", "pir"), ("bedroom", "bed"), ("bathroom", "bathroom")):
        reg.add_device(f"{kind}-{room}", "sensor", actor="tech", hub_id="hub-1", room=room, sensor_kind=kind)


def test_device_lifecycle_with_assignment_history_and_audit(reg: Any) -> None:
    _home(reg)
    clock = reg.clock
    assert reg.device("hub-1")["status"] == "pending"  # no broker access before enrolment
    assert reg.broker_users() == {}
    clock.t += 1000
    reg.assign("wear-1", "r01", actor="tech")
    t_r01 = clock.t
    clock.t += 60_000
    reg.assign("wear-1", "r02", actor="tech")  # reassigned
    assert reg.wearer("wear-1", t_r01 + 1) == "r01"  # a past alert keeps its resident
    assert reg.wearer("wear-1") == "r02"
    hist = reg.assignments("wear-1")
    assert [(a["resident_id"], a["to_ms"] is None) for a in hist] == [("r01", False), ("r02", True)]
    cfg = reg.hub_config("hub-1")
    assert cfg["wearables"] == [{"id": "wear-1", "resident_id": "r02"}]
    assert sorted(s["room"] for s in cfg["room_sensors"]) == ["bathroom", "bedroom", "living"]

    with pytest.raises(RegistryError, match="already registered"):
        reg.add_device("hub-1", "hub", actor="tech", site_id="site-b")
    with pytest.raises(RegistryError, match="needs --hub"):
        reg.add_device("wear-9", "wearable", actor="tech")
    with pytest.raises(RegistryError, match="invalid device id"):
        reg.add_device("Hub 1\n", "hub", actor="tech", site_id="site-a")
    with pytest.raises(RegistryError, match="no active resident"):
        reg.assign("wear-1", "r99", actor="tech")

    # enrol, then move the hub to another site: its parts follow, the site's wearer is taken back
    bundle, code = reg.create_bundle("hub-1", actor="tech", broker_url="mqtts://b:8883",
                                     enrol_url="http://e", ttl_s=3600)
    assert bundle["edge"]["site_id"] == "site-a" and bundle["password"]
    reg.redeem(code)
    assert list(reg.broker_users()) == ["hub-1"]
    assert reg.broker_users()["hub-1"].startswith("$7$101$")
    assert "user hub-1\ntopic write fallwatch/v1/site-a/hub-1/state" in reg.acl()
    reg.move("hub-1", actor="tech", site_id="site-b")
    assert {d["site_id"] for d in reg.devices(hub_id="hub-1")} == {"site-b"}
    assert reg.wearer("wear-1") is None
    assert "fallwatch/v1/site-b/hub-1/" in reg.acl() and "site-a/hub-1" not in reg.acl()

    reg.revoke("hub-1", actor="tech", reason="lost")
    assert reg.broker_users() == {} and "hub-1" not in reg.acl()
    reg.retire("hub-1", actor="tech")
    with pytest.raises(RegistryError, match="retired"):
        reg.create_bundle("hub-1", actor="tech", broker_url="x", enrol_url="y", ttl_s=60)

    actions = [e["action"] for e in reg.log("hub-1")]
    assert actions == ["device.add", "bundle.create", "bundle.redeem", "device.move", "device.revoke",
                       "device.retire"]
    assert all(e["actor"] in ("tech", "device") for e in reg.log("hub-1"))
    report = reg.verify()
    assert report["reg_log"]["broken_at"] is None and report["reg_log"]["rows"] >= 12
    # append-only: the trigger refuses an edit of the audit trail
    with pytest.raises(Exception, match=r"append-only|prohibited|trigger"), reg.store._tx() as cur:
        reg.store._exec(cur, "UPDATE reg_log SET actor = 'nobody'")


def test_bundle_codes_are_single_use_expire_and_are_voided_by_a_newer_one(reg: Any) -> None:
    _home(reg)
    _b1, code1 = reg.create_bundle("hub-1", actor="tech", broker_url="u", enrol_url="e", ttl_s=3600)
    b2, code2 = reg.create_bundle("hub-1", actor="tech", broker_url="u", enrol_url="e", ttl_s=3600)
    with pytest.raises(RegistryError, match="voided"):
        reg.redeem(code1)
    assert reg.redeem(code2)["password"] == b2["password"]
    with pytest.raises(RegistryError, match="already used"):
        reg.redeem(code2)
    with pytest.raises(RegistryError, match="unknown"):
        reg.redeem("not-a-code")
    _, code3 = reg.create_bundle("hub-1", actor="tech", broker_url="u", enrol_url="e", ttl_s=10)
    reg.clock.t += 11_000
    with pytest.raises(RegistryError, match="expired"):
        reg.redeem(code3)
    # the refused, expired bundle's credential never went live: hub-1 still has code2's password
    assert reg.broker_users()["hub-1"] == json.loads(reg.store._select(
        "SELECT creds FROM reg_bundles WHERE used_ms IS NOT NULL")[0]["creds"])["hub-1"]
    # the database holds neither a code nor a readable password
    dump = json.dumps(reg.store._select("SELECT * FROM reg_bundles"), default=str)
    assert code2 not in dump and b2["password"] not in dump
    assert [e["action"] for e in reg.log("hub-1")].count("bundle.refused") == 3


def test_residents_personal_data_is_audited_on_read_and_erased_on_removal(reg: Any) -> None:
    _home(reg)
    reg.assign("wear-1", "r01", actor="tech")
    assert reg.resident("site-a", "r01")["name"] == "Mary Smith"
    assert [r["resident_id"] for r in reg.residents(team="north")] == ["r01"]
    assert reg.teams() == ["north", "south"]
    rows = reg.read_personal("lead-kim", team="north")
    assert rows[0]["next_of_kin"].startswith("John")
    assert reg.log("*")[-1]["action"] == "resident.read-personal" and reg.log("*")[-1]["actor"] == "lead-kim"
    # nothing personal in the append-only log, which could never be erased
    assert "Mary" not in json.dumps(reg.log(), default=str)
    reg.move_resident("site-a", "r01", actor="lead", team="south", flat="Flat 3")
    assert reg.resident("site-a", "r01")["team"] == "south"
    reg.remove_resident("site-a", "r01", actor="lead")
    r = reg.resident("site-a", "r01")
    assert r["status"] == "removed" and r["name"] is None and r["flat"] is None and r["next_of_kin"] is None
    assert reg.wearer("wear-1") is None and reg.assignments("wear-1")[0]["resident_id"] == "r01"
    with pytest.raises(RegistryError, match="control characters"):
        reg.add_resident("site-a", "r03", actor="lead", name="Eve\nINJECTED")


def _csv(rows: list[list[str]]) -> list[dict[str, str | None]]:
    buf = io.StringIO()
    csv.writer(buf).writerows([["action", "device_id", "kind", "site", "home", "hub", "room", "sensor_kind",
                                "resident"], *rows])
    return list(csv.DictReader(io.StringIO(buf.getvalue())))


def test_bulk_csv_dry_run_then_apply_and_per_line_errors(reg: Any) -> None:
    reg.add_resident("site-c", "r10", actor="lead")
    good = _csv([
        ["add", "hub-20", "hub", "site-c", "flat-20", "", "", "", ""],
        ["add", "wear-20", "wearable", "", "", "hub-20", "", "", "r10"],
        ["add", "pir-20", "sensor", "", "", "hub-20", "hall", "pir", ""],
        ["add", "hub-21", "hub", "site-c", "flat-21", "", "", "", ""],
        ["move", "pir-20", "", "", "", "hub-21", "kitchen", "", ""],
    ])
    dry = bulk_apply(reg, good, actor="tech", dry_run=True)
    assert dry["errors"] == 0 and dry["ok"] == 5 and dry["changed"] == 0
    assert dry["lines"][4] == "line 6: would move sensor pir-20: site-c/hub-20 -> site-c/hub-21 room hall -> kitchen"
    assert reg.devices() == []  # a dry run changes nothing
    done = bulk_apply(reg, good, actor="tech", dry_run=False)
    assert done["changed"] == 5
    assert reg.device("pir-20")["hub_id"] == "hub-21" and reg.wearer("wear-20") == "r10"

    bad = _csv([
        ["add", "hub-22", "hub", "site-c", "", "", "", "", ""],
        ["add", "hub-20", "hub", "site-c", "", "", "", "", ""],           # exists
        ["add", "wear-22", "wearable", "", "", "hub-99", "", "", ""],    # no such hub
        ["add", "pir-22", "sensor", "", "", "hub-22", "hall", "laser", ""],  # bad sensor kind
        ["add", "Bad Id", "hub", "site-c", "", "", "", "", ""],
        ["fly", "hub-22", "", "", "", "", "", "", ""],
        ["add", "wear-23", "wearable", "", "", "hub-22", "", "", "r99"],  # no such resident
    ])
    rep = bulk_apply(reg, bad, actor="tech", dry_run=False)
    assert rep["errors"] == 6 and rep["changed"] == 0
    errs = [ln for ln in rep["lines"] if "ERROR" in ln]
    assert [e.split(":")[0] for e in errs] == ["line 3", "line 4", "line 5", "line 6", "line 7", "line 8"]
    assert "hub-99" in errs[1] and "laser" in errs[2] and "r99" in errs[5]
    assert reg.device("hub-22") is None  # one bad row: nothing applied


def test_hash_is_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    """Our $7$ hash and mosquitto_passwd's agree byte for byte for the same salt."""
    import base64
    import subprocess

    p = tmp_path / "pw"
    p.write_text("u:secret-pw\n")
    subprocess.run([find_binary("mosquitto_passwd"), "-U", str(p)], check=True, capture_output=True)
    theirs = p.read_text().strip().split(":", 1)[1]
    _, _, iters, salt, _ = theirs.split("$")
    assert mosquitto_hash("secret-pw", salt=base64.b64decode(salt), iterations=int(iters)) == theirs


def test_cli_device_and_resident_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "fw.toml"
    cfg.write_text(f'[gateway]\nstate_db = "{tmp_path / "st.sqlite"}"\n[provisioning]\n'
                   f'broker_dir = "{tmp_path / "broker"}"\nca_dir = "{tmp_path / "ca"}"\n')
    c = ["--config", str(cfg), "--by", "tech-anna"]
    assert main(["resident", "add", "r01", "--site", "s1", "--name", "Mary", "--team", "north", *c]) == 0
    assert main(["device", "add", "hub-1", "--kind", "hub", "--site", "s1", *c]) == 0
    assert main(["device", "add", "wear-1", "--kind", "wearable", "--hub", "hub-1", "--resident", "r01", *c]) == 0
    assert main(["device", "add", "wear-2", "--kind", "wearable", "--hub", "hub-nope", *c]) == 1
    assert "error: no device 'hub-nope'" in capsys.readouterr().err
    assert main(["device", "enrol-bundle", "hub-1", "--out", str(tmp_path / "b.json"), *c]) == 0
    out = capsys.readouterr().out
    assert "fwenrol1:" in out and (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600
    assert main(["device", "show", "wear-1", *c]) == 0
    assert "worn by r01 from" in capsys.readouterr().out
    assert main(["resident", "list", *c]) == 0
    assert "Mary" not in capsys.readouterr().out
    assert main(["resident", "list", "--personal", *c]) == 0
    assert "Mary" in capsys.readouterr().out
    assert main(["device", "add", "gw-1", "--kind", "gateway", "--out", str(tmp_path / "gw.env"), *c]) == 0
    assert (tmp_path / "gw.env").stat().st_mode & 0o777 == 0o600
    passwd = tmp_path / "broker" / "passwd"
    assert passwd.stat().st_mode & 0o007 == 0 and passwd.read_text().startswith("gw-1:$7$")
    assert main(["gateway", "audit-verify", "--config", str(cfg)]) == 0


def test_cli_bulk_import_dry_run_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "fw.toml"
    cfg.write_text(f'[gateway]\nstate_db = "{tmp_path / "st.sqlite"}"\n')
    c = ["--config", str(cfg), "--by", "tech-ben"]
    rows = ("action,device_id,kind,site,home,hub,room,sensor_kind,resident\n"
            "add,hub-30,hub,site-d,flat-30,,,,\n"
            "add,pir-30,sensor,,,hub-30,hall,pir,\n")
    (tmp_path / "ok.csv").write_text(rows)
    (tmp_path / "bad.csv").write_text(rows + "add,pir-31,sensor,,,hub-30,,pir,\nadd,x,y,z\n,,,,,,,,,,,,\n")
    assert main(["device", "import", str(tmp_path / "bad.csv"), *c]) == 1
    out = capsys.readouterr().out
    assert "line 4: ERROR invalid room ''" in out and "line 5: ERROR invalid device id 'x'" not in out
    assert "line 5: ERROR kind 'y'" in out and "line 6: ERROR more fields than the header has" in out
    assert "2 rows ok, 3 rows with errors (nothing changed)" in out
    assert main(["device", "import", str(tmp_path / "ok.csv"), "--dry-run", *c]) == 0
    assert "line 2: would add hub hub-30 at site-d/flat-30" in capsys.readouterr().out
    assert main(["device", "list", *c]) == 0 and capsys.readouterr().out == ""
    assert main(["device", "import", str(tmp_path / "ok.csv"), *c]) == 0
    assert "2 rows ok, 0 rows with errors" in capsys.readouterr().out
    assert main(["device", "list", *c]) == 0
    assert capsys.readouterr().out.count("site-d/flat-30") == 2


def test_with_staff_accounts_roles_decide_and_the_account_is_the_actor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from fallwatch.gateway.staff import StaffDirectory

    accounts = tmp_path / "staff.toml"
    staff = StaffDirectory(accounts)
    tokens = {name: staff.add(name, role) for name, role in
              (("tina", "technician"), ("carl", "carer"), ("ada", "admin"))}
    cfg = tmp_path / "fw.toml"
    cfg.write_text(f'[gateway]\nstate_db = "{tmp_path / "st.sqlite"}"\nstaff_users_file = "{accounts}"\n')
    c = ["--config", str(cfg)]

    def as_(who: str | None, *argv: str) -> int:
        if who is None:
            monkeypatch.delenv("FALLWATCH_STAFF_TOKEN", raising=False)
        else:
            monkeypatch.setenv("FALLWATCH_STAFF_TOKEN", tokens[who])
        return main([*argv, *c])

    assert as_(None, "device", "list") == 2
    assert "set FALLWATCH_STAFF_TOKEN" in capsys.readouterr().err
    assert as_("tina", "resident", "add", "r01", "--site", "s1", "--name", "Mary") == 2
    assert "tina (technician) may not" in capsys.readouterr().err
    assert as_("ada", "resident", "add", "r01", "--site", "s1", "--name", "Mary") == 0
    assert as_("tina", "device", "add", "hub-1", "--kind", "hub", "--site", "s1") == 0
    assert as_("tina", "device", "add", "hub-2", "--kind", "hub", "--site", "s1", "--by", "ada") == 2
    assert "you are tina" in capsys.readouterr().err
    assert as_("carl", "device", "add", "hub-3", "--kind", "hub", "--site", "s1") == 2
    capsys.readouterr()
    assert as_("tina", "resident", "list") == 0
    assert "Mary" not in capsys.readouterr().out
    assert as_("tina", "resident", "list", "--personal") == 2
    assert as_("carl", "resident", "list", "--personal") == 0
    assert "Mary" in capsys.readouterr().out
    store = StateStore(str(tmp_path / "st.sqlite"))
    reg = Registry(store)
    assert [(e["actor"], e["action"]) for e in reg.log()] == [
        ("ada", "resident.add"), ("tina", "device.add"), ("carl", "resident.read-personal")]
    store.close()
