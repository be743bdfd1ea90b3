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
