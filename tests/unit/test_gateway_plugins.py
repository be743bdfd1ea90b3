"""The gateway's plug-in registries (series stores, state stores, notification channels), the
notifier's isolation of a failing channel, and the HTTP endpoints served from a stub reader."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from fallwatch.config import ConfigError, load_config
from fallwatch.gateway.app import check_plugins
from fallwatch.gateway.channels import CHANNELS, Action, AlertEvent, Delivery, Notifier, parse_channels
from fallwatch.gateway.channels.log import LogChannel, LogChannelConfig
from fallwatch.gateway.http import HttpServer
from fallwatch.gateway.sinks import SINKS, make_sink, sink_type
from fallwatch.gateway.sinks.influx1 import Influx1Sink
from fallwatch.gateway.sinks.influx_client import InfluxClientSink
from fallwatch.gateway.sinks.sqlite import SqliteSeriesSink
from fallwatch.gateway.state import DIALECTS, StateStore, state_type
from fallwatch.testing.channels import RecordingChannel


def _toml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(("influx", "expected", "cls"), [
    ('embedded_path = "{tmp}/s.sqlite"', "embedded-sqlite", SqliteSeriesSink),
    ('url = "http://127.0.0.1:9"', "influxdb-v1", Influx1Sink),
    ('url = "http://127.0.0.1:9"\nversion = 2', "influxdb-client", InfluxClientSink),
    ('url = "http://127.0.0.1:9"\nversion = 3', "influxdb-client", InfluxClientSink),
    ('url = "http://127.0.0.1:9"\ntype = "embedded-sqlite"\nembedded_path = "{tmp}/s.sqlite"', "embedded-sqlite",
     SqliteSeriesSink),
])
def test_series_store_type_is_derived_from_existing_settings_or_given(
        tmp_path: Path, influx: str, expected: str, cls: type) -> None:
    cfg = load_config(_toml(tmp_path, "[influx]\n" + influx.format(tmp=tmp_path) + "\n"))
    assert sink_type(cfg.influx) == expected
    sink = make_sink(cfg.influx)  # builds, connects to nothing
    try:
        assert isinstance(sink, cls)
    finally:
        sink.close()
    assert {"embedded-sqlite", "influxdb-v1", "influxdb-client"} <= set(SINKS.names())


def test_demo_flags_still_choose_the_store(tmp_path: Path) -> None:
    """``--influx-url`` / ``--influx-version`` arrive as overrides, exactly as before."""
    cfg = load_config(overrides={"influx": {"url": "http://127.0.0.1:9", "version": 2}})
    assert sink_type(cfg.influx) == "influxdb-client"


def test_unknown_plugin_types_fail_with_a_readable_report(tmp_path: Path) -> None:
    cfg = load_config(_toml(tmp_path, '[influx]\ntype = "influxdb-v9"\n'))
    with pytest.raises(ConfigError, match=r"unknown series store type 'influxdb-v9' \(known: embedded-sqlite"):
        check_plugins(cfg)
    cfg = load_config(_toml(tmp_path, f'[gateway]\nstate_db = "{tmp_path}/s.sqlite"\nstate_db_type = "mysql"\n'))
    with pytest.raises(ConfigError, match="unknown state store type 'mysql'"):
        check_plugins(cfg)
    cfg = load_config(_toml(tmp_path, '[[gateway.channels]]\ntype = "pager"\n'))
    with pytest.raises(ConfigError, match="unknown notification channel type 'pager'"):
        check_plugins(cfg)
    cfg = load_config(_toml(tmp_path, '[[gateway.channels]]\ntype = "log"\nloger = "x"\n'))
    with pytest.raises(ConfigError, match=r"gateway.channels\[0\]"):
        check_plugins(cfg)


def test_state_backend_is_derived_from_state_db(tmp_path: Path) -> None:
    assert state_type(str(tmp_path / "s.sqlite")) == "sqlite"
    assert state_type("postgresql://u@h/db") == state_type("postgres://u@h/db") == "postgresql"
    assert {"postgresql", "sqlite"} <= set(DIALECTS.names())
    st = StateStore(str(tmp_path / "sub" / "s.sqlite"))  # creates the directory, like before
    st.setup()
    assert st.dialect.name == "sqlite" and (tmp_path / "sub" / "s.sqlite").exists()
    assert st.filter_new(["a:1"]) == {"a:1"}
    st.close()
    pg = StateStore("postgresql://fw:secret@127.0.0.1:9/x")  # connects lazily, per thread
    assert pg.dialect.name == "postgresql" and "secret" not in pg.dialect.describe()
    assert pg.dialect.sql("SELECT ? , ?") == "SELECT %s , %s"


def test_channels_default_to_the_staff_log_and_are_keyed_by_type(tmp_path: Path) -> None:
    cfg = load_config()
    assert [c.type for c in parse_channels(cfg.gateway.channels)] == ["log"]
    cfg = load_config(_toml(tmp_path, '[[gateway.channels]]\ntype = "log"\nlogger = "ops.alerts"\n'))
    [parsed] = parse_channels(cfg.gateway.channels)
    assert isinstance(parsed, LogChannelConfig) and parsed.logger == "ops.alerts"
    assert "log" in CHANNELS.names()
    cfg = load_config(_toml(tmp_path, "[gateway]\nchannels = []\n"))
    assert parse_channels(cfg.gateway.channels) == []


class _Broken:
    name = "broken"

    def notify(self, event: AlertEvent) -> list[Delivery]:
        raise ConnectionError("smtp down")

    def close(self) -> None:
        raise RuntimeError("and it cannot close either")


def test_a_failing_channel_is_reported_and_never_stops_the_others() -> None:
    rec = RecordingChannel()
    n = Notifier([_Broken(), LogChannel(), rec])
    ev = AlertEvent(kind="device_offline", action=Action.RAISED, alert_id="device_offline:s:d:1", site_id="s",
                    device_id="d", at_ms=1, detail="device d at s silent for 200 s")
    out = n.notify(ev)
    assert out == [Delivery("broken", "*", False, "ConnectionError: smtp down"),
                   Delivery("log", "fallwatch.gateway.alerts", True), Delivery("recording", "memory", True)]
    assert rec.events() == [ev]
    n.close()  # logs the broken close, closes the rest


def test_log_channel_stays_silent_for_what_was_never_logged() -> None:
    ev = AlertEvent(kind="test_overdue", action=Action.RECOVERED, alert_id="x", site_id="s", device_id="d", at_ms=1)
    assert LogChannel().notify(ev) == []


class _StubReader:
    """A GatewayReader with no gateway behind it: the HTTP layer needs nothing else."""

    def __init__(self) -> None:
        self.audited: list[tuple[str, int]] = []

    def dead_workers(self) -> list[str]:
        return ["gw-bulk"]

    def worker_problems(self) -> dict[str, str]:
        return {}

    def ready(self) -> tuple[bool, str]:
        return False, "MQTT link 'bulk' not connected/subscribed"

    def metrics_text(self) -> bytes:
        return b"fallwatch_gateway_up 1\n"

    def stats(self) -> dict[str, Any]:
        return {"received": 7}

    def alerts(self, kind: str | None = None, status: str | None = None,
               open_only: bool = False) -> list[dict[str, Any]]:
        return [{"alert_id": "fall:s:d:e", "kind": "fall", "status": "raised", "raised_ms": 5, "site_id": "s",
                 "resident_id": "r07"},
                {"alert_id": "device_offline:s:d:1", "kind": "device_offline", "status": "raised", "raised_ms": 6}]

    def devices(self) -> list[dict[str, Any]]:
        return []

    def device_overview(self, now_ms: int) -> list[dict[str, Any]]:
        return []

    def transition(self, alert_id: str, action: str, actor: str, now_ms: int, *, via: str | None = None,
                   outcome: str | None = None, note: str | None = None) -> dict[str, Any] | None:
        return None

    def ack_link(self, token: str, use: bool) -> Any:
        from fallwatch.gateway.paging import AckResult

        return AckResult(400, "not a link")

    def alert_history(self, alert_id: str) -> dict[str, Any] | None:
        return None

    def planning(self, since_ms: int) -> list[dict[str, Any]]:
        return []

    def add_push_subscription(self, person: str, subscription: dict[str, Any]) -> int:
        return 404

    def log_access(self, actor: str, role: str, method: str, path: str, status: int, client: str,
                   now_ms: int) -> None:
        self.audited.append((path, status))

    def access_log(self) -> list[dict[str, Any]]:
        return []

    def team_of_site(self, site_id: str) -> str | None:
        return None

    def site_timezone(self, site_id: str) -> str:
        return "Europe/Stockholm"

    def resident(self, site_id: str, resident_id: str) -> dict[str, str] | None:
        return {"name": "Greta Lind", "flat": "lgh 1102"} if (site_id, resident_id) == ("s", "r07") else None

    def release_thread(self) -> None:
        """Nothing held per thread."""


def test_http_is_served_from_the_reader_interface_alone() -> None:
    reader = _StubReader()
    srv = HttpServer(reader, "127.0.0.1", 0)
    srv.start()
    try:
        def get(path: str) -> tuple[int, Any]:
            try:
                with urllib.request.urlopen(f"{srv.url}{path}", timeout=5) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        assert get("/healthz") == (503, {"status": "unhealthy", "dead_threads": ["gw-bulk"]})
        assert get("/readyz")[0] == 503
        assert get("/stats") == (200, {"received": 7})
        status, alerts = get("/alerts")
        assert status == 200 and [a["alert_id"] for a in alerts] == ["device_offline:s:d:1", "fall:s:d:e"]
        # the resident is named from the registry lookup behind the reader, never shown as a bare id
        assert (alerts[1]["resident_name"], alerts[1]["flat"]) == ("Greta Lind", "lgh 1102")
        req = urllib.request.Request(f"{srv.url}/alerts/nope/ack", data=b'{"by": "ann"}', method="POST",
                                     headers={"Content-Type": "application/json"})  # JSON only (issue 11)
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=5)
        assert exc.value.code == 404
        assert ("/alerts/nope/ack", 404) in reader.audited
    finally:
        srv.close()
