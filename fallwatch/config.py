"""Typed, validated configuration for every fallwatch component, in one place.

A config file is TOML with one table per component (``[mqtt]``, ``[influx]``,
``[gateway]``, ``[edge]``); unknown keys are rejected so a typo fails at start-up with
a readable report instead of being silently ignored. Secrets are never written in
the file: they come from the environment (``FALLWATCH_MQTT_PASSWORD``, ``FALLWATCH_MQTT_ALERT_PASSWORD``,
``FALLWATCH_INFLUX_TOKEN``, ``FALLWATCH_INFLUX_PASSWORD``). There are no default
passwords anywhere.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fallwatch.protocol.ids import ID_PATTERN


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, regex_engine="python-re")  # ids: fallwatch.protocol.ids


class PluginSection(BaseModel):
    """A plug-in's section as read from the file: its ``type`` plus that plug-in's own keys.

    The keys are checked by the plug-in's registry (:mod:`fallwatch.plugins`) against the
    config class the plug-in declares, so adding a plug-in never edits this file.
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str


class TlsConfig(_Strict):
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class MqttConfig(_Strict):
    """Broker connection. An empty ``url`` means: use an embedded broker (demo only)."""

    url: str = ""
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    client_id: str | None = None
    # the gateway's fall-alert link connects as its own user (a broker that binds client ids to
    # usernames needs one per link): default ``{username}-alerts``, as `broker-config` generates;
    # its password from FALLWATCH_MQTT_ALERT_PASSWORD, else ``password``
    alert_username: str | None = None
    alert_password: str | None = Field(default=None, repr=False)
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)
    tls: TlsConfig | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and urlparse(v).scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError("must look like mqtt://host:1883 or mqtts://host:8883")
        return v

    @model_validator(mode="after")
    def _creds(self) -> MqttConfig:
        if self.password is not None and self.username is None:
            raise ValueError("a password must come with a username")
        return self

    def for_alert_link(self) -> MqttConfig:
        """The credentials of the gateway's fall-alert link (see ``alert_username``)."""
        if self.username is None and self.alert_username is None:
            return self
        user = self.alert_username or f"{self.username}-alerts"
        pw = self.alert_password if self.alert_password is not None else self.password
        return self.model_copy(update={"username": user, "password": pw})

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        u = urlparse(self.url)
        return u.port or (8883 if u.scheme in ("mqtts", "ssl") else 1883)

    @property
    def use_tls(self) -> bool:
        return self.tls is not None or urlparse(self.url).scheme in ("mqtts", "ssl")


class InfluxConfig(_Strict):
    """Time-series store. Empty ``url`` means: the embedded local store (SQLite file).

    ``version`` 1 speaks InfluxDB 1.x's HTTP ``/write`` + ``/query`` (Debian's package);
    2 and 3 go through influxdb-client. ``database``/``retention_policy`` map to a 2.x/3.x
    bucket named ``database/retention_policy`` (DBRP convention) so InfluxQL works on all.
    """

    url: str = ""
    version: Literal[1, 2, 3] = 1
    # the series-store plug-in (fallwatch.gateway.sinks); None = derived from url/version
    type: str | None = None
    database: str = "fallwatch"
    retention_policy: str = "autogen"
    org: str = "-"
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    token: str | None = Field(default=None, repr=False)
    embedded_path: Path = Path("var/series.sqlite")
    timeout_s: float = Field(default=10.0, gt=0)

    @property
    def bucket(self) -> str:
        return f"{self.database}/{self.retention_policy}"


class GatewayConfig(_Strict):
    gateway_id: str = Field(default="gw-1", pattern=ID_PATTERN)
    shared_group: str | None = Field(default=None, pattern=ID_PATTERN)
    state_db: str = "var/gateway.sqlite"  # a path (SQLite) or postgresql://… for replicas
    state_db_type: str | None = None  # state-store plug-in (fallwatch.gateway.state); None = derived from state_db
    spool_dir: Path = Path("var/spool")
    spool_max_mb: float = Field(default=512.0, gt=0)
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    offline_after_s: float = Field(default=180.0, gt=0, le=180.0)
    test_alarm_max_age_h: float = Field(default=24.0, gt=0)
    escalate_after_s: float = Field(default=120.0, gt=0)  # re-announce an unacknowledged fall alert
    # device clocks: times later than receipt + this are clamped (series, registry); the skew is reported
    clock_skew_s: float = Field(default=300.0, ge=0, le=86_400)
    # staff accounts (roles + hashed personal tokens, `fallwatch gateway staff add`); when set,
    # every request for staff data is authenticated, role-checked and written to the audit log
    staff_users_file: Path | None = None
    batch_max: int = Field(default=1000, ge=1)
    batch_max_delay_ms: float = Field(default=0.0, ge=0)  # 0 = natural batching (measured best)
    # staff notification channels (fallwatch.gateway.channels), each `[[gateway.channels]] type = "…"`;
    # the default is the staff log the gateway always wrote
    channels: list[PluginSection] = [PluginSection(type="log")]


class EdgeRoomSensor(_Strict):
    """A room sensor on the local zigbee bus (``topic`` = its zigbee2mqtt friendly name)."""

    id: str = Field(pattern=ID_PATTERN)
    kind: Literal["pir", "bed", "chair", "door", "bathroom"]
    room: str = Field(pattern=ID_PATTERN)
    topic: str | None = None
    resident_id: str | None = Field(default=None, pattern=ID_PATTERN)


class EdgeWearable(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    resident_id: str | None = Field(default=None, pattern=ID_PATTERN)


class EdgeConfig(_Strict):
    site_id: str = Field(default="home-1", pattern=ID_PATTERN)
    device_id: str = Field(default="hub-1", pattern=ID_PATTERN)
    outbox_path: Path = Path("var/edge-outbox.sqlite")
    heartbeat_s: float = Field(default=30.0, gt=0, le=60.0)
    cancel_window_s: float = Field(default=15.0, ge=0, le=60.0)
    #: no-recovery path: down this long after an event (impact, drop, bed exit) -> fall alert
    no_recovery_s: float = Field(default=45.0, ge=10.0, le=600.0)
    telemetry_window_s: float = Field(default=10.0, gt=0)
    upload_raw_imu: bool = False
    model_path: Path | None = None
    model_pubkey: str | None = None  # base64 ed25519 public key that signs model updates
    # more trusted signing keys (base64 ed25519), for rotation: add the new key here, sign with
    # it, then retire the old one; an update verifying with any trusted key is accepted
    model_pubkeys: list[str] = []
    fw_version: str = "0.1.0"
    model_dir: Path = Path("var/edge-models")  # installed model updates (current + previous)
    max_outbox_rows: int = Field(default=200_000, ge=0)  # telemetry thinned beyond this; 0 = never
    wearable_stale_s: float = Field(default=15.0, gt=0)
    room_stale_s: float = Field(default=2 * 3600.0, gt=0)
    risk_hour: int = Field(default=8, ge=0, le=23)  # local hour the daily risk score is published
    # where the frames come from: ``type`` picks a source of fallwatch.edge.sources.SOURCES, which
    # checks the rest of the section against that source's own keys (path, speed, bus_url, ...)
    source: PluginSection = PluginSection(type="sim")
    wearables: list[EdgeWearable] = []
    room_sensors: list[EdgeRoomSensor] = []


class FallwatchConfig(_Strict):
    mqtt: MqttConfig = MqttConfig()
    influx: InfluxConfig = InfluxConfig()
    gateway: GatewayConfig = GatewayConfig()
    edge: EdgeConfig = EdgeConfig()


class ConfigError(ValueError):
    """A config that failed validation; ``str()`` is a readable multi-line report."""


def _env_secrets(raw: dict[str, dict[str, object]]) -> None:
    env = os.environ
    if "FALLWATCH_MQTT_PASSWORD" in env:
        raw.setdefault("mqtt", {})["password"] = env["FALLWATCH_MQTT_PASSWORD"]
    if "FALLWATCH_MQTT_ALERT_PASSWORD" in env:
        raw.setdefault("mqtt", {})["alert_password"] = env["FALLWATCH_MQTT_ALERT_PASSWORD"]
    if "FALLWATCH_INFLUX_TOKEN" in env:
        raw.setdefault("influx", {})["token"] = env["FALLWATCH_INFLUX_TOKEN"]
    if "FALLWATCH_INFLUX_PASSWORD" in env:
        raw.setdefault("influx", {})["password"] = env["FALLWATCH_INFLUX_PASSWORD"]


def load_config(path: str | Path | None = None, overrides: dict[str, dict[str, object]] | None = None
                ) -> FallwatchConfig:
    """Load a TOML config (or defaults), fill secrets from the environment, validate."""
    raw: dict[str, dict[str, object]] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    _env_secrets(raw)
    try:
        return FallwatchConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(validation_report(f"invalid config{f' {path}' if path else ''}", exc)) from None


def validation_report(title: str, exc: ValidationError) -> str:
    """A readable multi-line report of every problem pydantic found, one line each."""
    lines = [f"{title}:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        lines.append(f"  - {where}: {err['msg']}")
    return "\n".join(lines)
