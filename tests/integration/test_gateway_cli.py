"""``fallwatch gateway …`` commands: config validation, broker config, alerts list / ack / clear."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fallwatch.cli import main
from fallwatch.config import load_config
from fallwatch.gateway.state import StateStore
from fallwatch.testing import publisher as t


def test_validate_config_reports_unknown_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[gateway]\ngateway_id = "gw-7"\n')
    assert main(["gateway", "run", "--config", str(good), "--validate-config"]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\ngateway_idd = "gw-7"\n')
    with pytest.raises(SystemExit) as exc:
        main(["gateway", "run", "--config", str(bad), "--validate-config"])
    assert exc.value.code == 2
    assert "gateway.gateway_idd" in capsys.readouterr().err


def test_broker_config_command_writes_hashed_passwords_and_acl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hubs = tmp_path / "hubs.txt"
    hubs.write_text("# site device\nhome-1 hub-1\nhome-2 hub-2\n")
    out = tmp_path / "broker"
    assert main(["gateway", "broker-config", "--out", str(out), "--devices", str(hubs), "--gateways", "gw-1"]) == 0
    conf = (out / "mosquitto.conf").read_text()
    for line in (
        "allow_anonymous false",
        "max_queued_messages 0",
        "persistent_client_expiration 14d",
        "listener 8883",
        "listener 1883 127.0.0.1",
    ):
        assert line in conf
    creds = dict(line.split() for line in (out / "credentials.txt").read_text().splitlines()[1:])
    passwd = (out / "passwd").read_text()
    assert set(creds) == {"gw-1", "gw-1-alerts", "hub-1", "hub-2"}  # one user per gateway link
    assert all(pw not in passwd for pw in creds.values())  # only hashes on the broker
    assert "$7$" in passwd
    acl = (out / "acl").read_text()
    # each hub confined to its own site and device (a %u pattern let it speak for any site)
    assert "topic write fallwatch/v1/home-1/hub-1/evt/+" in acl and "user gw-1" in acl
    assert "pattern" not in acl.replace("# ", "") and "use_username_as_clientid true" in conf


def test_alerts_ack_clear_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "state.sqlite"
    cfg_path = tmp_path / "gw.toml"
    cfg_path.write_text(f'[gateway]\nstate_db = "{db}"\n')
    st = StateStore(str(db))
    st.setup()
    from fallwatch.protocol import contract

    topic, payload = t.fall("site-a", "hub-1", 1)
    st.record_fall(contract.decode(topic, payload), 1000)
    assert load_config(cfg_path).gateway.state_db == str(db)
    assert main(["gateway", "alerts", "--config", str(cfg_path)]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(rows) == 1 and rows[0]["status"] == "raised"
    aid = rows[0]["alert_id"]
    assert main(["gateway", "ack", aid, "--by", "nurse", "--config", str(cfg_path)]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "acknowledged"
    assert main(["gateway", "clear", aid, "--by", "nurse", "--config", str(cfg_path)]) == 0
    assert main(["gateway", "clear", aid, "--by", "nurse", "--config", str(cfg_path)]) == 1
    assert main(["gateway", "ack", "nope", "--by", "nurse", "--config", str(cfg_path)]) == 1


def test_http_api_token_protects_everything_but_health(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error
    import urllib.request

    from fallwatch.gateway.app import Gateway

    monkeypatch.setenv("FALLWATCH_GATEWAY_API_TOKEN", "s3cret-token")
    cfg = load_config(
        overrides={
            "influx": {"url": "", "embedded_path": str(tmp_path / "series.sqlite")},
            "gateway": {"state_db": str(tmp_path / "st.sqlite"), "spool_dir": str(tmp_path / "spool"), "http_port": 0},
        }
    )
    gw = Gateway(cfg)
    gw.start_state()
    gw.start_http()
    try:

        def get(path: str, token: str | None = None) -> int:
            req = urllib.request.Request(f"{gw.http_url}{path}")
            if token:
                req.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return int(r.status)
            except urllib.error.HTTPError as e:
                return int(e.code)

        assert get("/healthz") == 200
        assert get("/readyz") == 503  # not connected: no broker in this test
        assert get("/alerts") == 401 and get("/metrics", "wrong") == 401
        assert get("/alerts", "s3cret-token") == 200 and get("/metrics", "s3cret-token") == 200
    finally:
        assert gw.http is not None
        gw.http.close()
        gw.state.close()


@pytest.mark.integration
def test_downsample_into_long_retention(
    influxdb: object, tmp_path: Path, unique_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import time as _time

    from fallwatch.gateway.points import to_line

    database = unique_name.replace("-", "_")
    cfg_path = tmp_path / "gw.toml"
    cfg_path.write_text(f'[influx]\nurl = "{influxdb.url}"\nversion = 1\ndatabase = "{database}"\n')
    cfg = load_config(cfg_path)
    from fallwatch.gateway.sinks.influx1 import Influx1Sink

    sink = Influx1Sink(cfg.influx)
    sink.setup()
    now_ms = int(_time.time() * 1000) // 600_000 * 600_000 - 600_000  # start of the previous 10-minute slot
    pts = [
        (
            "telemetry",
            {"site_id": "s", "device_id": "d", "sensor": "w"},
            {"acc": float(i), "note": "x"},
            now_ms + i * 60_000,
        )
        for i in range(10)
    ]
    assert all(to_line(p) for p in pts)
    sink.write(pts)
    sink.close()
    for _ in range(2):  # re-running over the same window rewrites the same buckets
        assert main(["gateway", "downsample", "--config", str(cfg_path), "--every", "10m", "--since", "1h"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["telemetry"] >= 1
    rows = influxdb.query(f'SELECT mean_acc, max_acc FROM "{database}"."agg_1y"."telemetry"', db=database)
    values = rows[0]["values"]
    assert len(values) == 1 and values[0][1] == pytest.approx(4.5) and values[0][2] == 9.0
