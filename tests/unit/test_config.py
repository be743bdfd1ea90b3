"""Config is validated at start-up with a readable report; secrets come from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from fallwatch.config import ConfigError, load_config


def test_defaults_have_no_passwords() -> None:
    cfg = load_config()
    assert cfg.mqtt.password is None and cfg.influx.password is None and cfg.influx.token is None


def test_unknown_keys_and_bad_values_are_reported(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[mqtt]\nurl = "http://x"\nkeepalive = 3\n[edge]\nsite_id = "Bad Id"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(f)
    text = str(exc.value)
    assert "mqtt.url" in text and "mqtt.keepalive" in text and "edge.site_id" in text


def test_secret_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[mqtt]\nurl = "mqtts://broker:8883"\nusername = "hub-1"\n')
    monkeypatch.setenv("FALLWATCH_MQTT_PASSWORD", "s3cret")
    cfg = load_config(f)
    assert cfg.mqtt.password == "s3cret" and cfg.mqtt.use_tls and cfg.mqtt.port == 8883
    assert "s3cret" not in repr(cfg)


def test_password_without_username_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FALLWATCH_MQTT_PASSWORD", "x")
    with pytest.raises(ConfigError, match="username"):
        load_config()


def test_edge_source_section_is_checked_by_its_source(tmp_path: Path) -> None:
    """Each source declares its own keys: a key of another source, or a typo, is a readable error."""
    from fallwatch.app import sim_source
    from fallwatch.edge.sources import SOURCES, ReplayConfig, source_config

    sim_source.register()
    assert {"ble", "replay", "sim", "zigbee2mqtt"} <= set(SOURCES.names())
    assert source_config(load_config().edge).type == "sim"  # the default
    f = tmp_path / "c.toml"
    f.write_text('[edge.source]\ntype = "replay"\npath = "r.jsonl"\nspeed = 0\n')
    src = source_config(load_config(f).edge)
    assert isinstance(src, ReplayConfig) and src.path == Path("r.jsonl") and src.speed == 0
    f.write_text('[edge.source]\ntype = "zigbee2mqtt"\nbus_url = "mqtt://127.0.0.1:1883"\nspeed = 2\n')
    with pytest.raises(ConfigError, match=r"edge\.source(.|\n)*speed"):
        source_config(load_config(f).edge)
    f.write_text('[edge.source]\ntype = "serial"\n')
    with pytest.raises(ConfigError, match="unknown edge source type 'serial'"):
        source_config(load_config(f).edge)
    f.write_text('[edge.source]\ntype = "replay"\n')  # replay needs its file
    with pytest.raises(ConfigError, match="path"):
        source_config(load_config(f).edge)
