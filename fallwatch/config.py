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


_HHMM = r"^([01]\d|2[0-3]):[0-5]\d$"
Urgency = Literal["urgent", "high", "normal", "technical", "planning"]
Locale = Literal["sv", "en"]  # staff-facing languages with a full catalog (fallwatch.gateway.i18n)
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_ALL_DAYS: list[Weekday] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class Contact(_Strict):
    """One way to reach a person: a ``[[gateway.channels]]`` by its name, and the address on it
    (an e-mail address, an Apprise URL, a push subscriber id; "" = the channel's own target,
    e.g. an alarm receiving centre's web hook URL)."""

    channel: str = Field(min_length=1)
    to: str = ""
    # or: the environment variable holding the address (an Apprise or webhook URL with a token
    # must not sit in the config file)
    to_env: str | None = None

    @model_validator(mode="after")
    def _one(self) -> Contact:
        if self.to and self.to_env:
            raise ValueError("give `to` or `to_env`, not both")
        return self


class Person(_Strict):
    """Someone the gateway may page: a carer, a team lead, a technician."""

    id: str = Field(pattern=ID_PATTERN)
    name: str = Field(min_length=1, max_length=120)
    contacts: list[Contact] = Field(min_length=1)  # in order of preference
    # false: the first contact that works gets the message (the next one only if it fails);
    # true: every contact gets every message (e.g. the phone and a pager at once)
    all_contacts: bool = False
    locale: Locale | None = None  # the language of this person's messages; None: the team's


class Shift(_Strict):
    """Who is on call on which days between ``start`` and ``end`` (local time of the team;
    an ``end`` before ``start`` runs past midnight). ``people`` in order: first = primary."""

    people: list[str] = Field(min_length=1)
    days: list[Weekday] = Field(default_factory=lambda: list(_ALL_DAYS), min_length=1)
    start: str = Field(default="00:00", pattern=_HHMM)
    end: str = Field(default="00:00", pattern=_HHMM)  # 00:00–00:00 = the whole day


class Team(_Strict):
    """A home-care team: the sites it answers for, its on-call schedule, lead and fallback."""

    id: str = Field(pattern=ID_PATTERN)
    name: str = ""
    sites: list[str] = Field(min_length=1)  # site ids, or "*" for every site not named elsewhere
    timezone: str = "Europe/Stockholm"
    shifts: list[Shift] = []
    # an iCalendar file or http(s) URL: each event's SUMMARY lists the person ids on call, in
    # order ("anna, bertil"); it is used where it has an event, the shifts elsewhere
    ical: str | None = None
    lead: str | None = None
    fallback: list[Contact] = []  # e.g. the alarm receiving centre's web hook
    technicians: list[str] = []
    quiet_hours: str | None = Field(default="22:00-07:00", pattern=r"^\d\d:\d\d-\d\d:\d\d$")
    locale: Locale | None = None  # None: gateway.locale

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v


class PagingConfig(_Strict):
    """Who is told about which alert, how, and what happens when nobody answers
    (fallwatch.gateway.paging). Off until at least one team is configured."""

    people: list[Person] = []
    teams: list[Team] = []
    escalate_after_s: float = Field(default=120.0, gt=0, le=3600)  # unacknowledged → next level
    resend_every_s: float = Field(default=60.0, gt=0, le=60)  # an urgent page is repeated (R1)
    # where the gateway's HTTP endpoint is reachable from a phone (for acknowledge links)
    public_url: str | None = None
    ack_link_ttl_s: float = Field(default=12 * 3600.0, gt=0, le=7 * 86400)
    ack_secret_env: str | None = None  # default: a random key kept in the state DB (shared by replicas)
    ack_secret_file: Path | None = None
    send_attempts: int = Field(default=2, ge=1, le=10)  # per contact, before the next contact
    send_backoff_s: float = Field(default=1.0, gt=0, le=60)
    channel_fail_alert_after: int = Field(default=3, ge=1)  # consecutive failures → technician alert
    damp_s: float = Field(default=900.0, ge=0)  # a device alert re-raised within this is held
    suspected_below: float = Field(default=0.8, ge=0, le=1)  # fall confidence below: "suspected fall"
    urgency: dict[str, Urgency] = {}  # per-kind overrides of the default urgency
    tick_s: float = Field(default=1.0, gt=0, le=10)

    @model_validator(mode="after")
    def _refs(self) -> PagingConfig:
        ids = [p.id for p in self.people]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"people listed twice: {sorted(dup)}")
        known = set(ids)
        for t in self.teams:
            named = [*(p for s in t.shifts for p in s.people), *t.technicians, *([t.lead] if t.lead else [])]
            missing = sorted({p for p in named if p not in known})
            if missing:
                raise ValueError(f"team {t.id}: unknown people {missing} (add them to [[gateway.paging.people]])")
        if self.teams and not any(t.shifts or t.ical or t.lead or t.fallback for t in self.teams):
            raise ValueError("a team needs shifts, an ical schedule, a lead or a fallback: nobody could be paged")
        return self


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
    # telemetry linger: under load nothing waits, at low rates it forms batches (issue 16). The bulk
    # link reads light traffic once per linger (up to 0.1 s) and the batch is what one read brought;
    # a message waits at most the linger + 2 ms before its batch is formed. Fall alerts never wait.
    batch_max_delay_ms: float = Field(default=50.0, ge=0)
    # staff notification channels (fallwatch.gateway.channels), each `[[gateway.channels]] type = "…"`;
    # the default is the staff log the gateway always wrote
    channels: list[PluginSection] = [PluginSection(type="log")]
    # on-call routing, escalation and acknowledge links (fallwatch.gateway.paging)
    paging: PagingConfig = PagingConfig()
    # the language and time zone of staff-facing text (notifications, acknowledge pages) unless a
    # team, a person or a channel says otherwise; Swedish for a Swedish municipality
    locale: Locale = "sv"
    timezone: str = "Europe/Stockholm"


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
    #: stand a fast alert down as ``lying_before`` when the wearer was lying before the impact and
    #: since (turning over, no room sensor needed): sent as ``cancelled``, nobody is called, and no
    #: other path picks such an impact up, so a fall it mistakes is missed (logged, not delayed).
    #: Off: held out on SisFall it cost 1.0 point of sensitivity for 0.28 fewer false alarms an hour
    #: (docs/models.md, issue 12 fifth round)
    stand_down_lying_before: bool = False
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


class ProvisioningConfig(_Strict):
    """The device registry's broker and enrolment side (docs/provisioning.md); the registry
    itself lives in ``gateway.state_db``."""

    # where `fallwatch device sync` writes mosquitto.conf, passwd and acl (None = do not write)
    broker_dir: Path | None = None
    # the running broker's pid file: after each change the registry SIGHUPs it (None = no reload)
    broker_pid_file: Path | None = None
    # the broker URL handed to hubs in their enrolment bundles
    hub_broker_url: str = "mqtts://localhost:8883"
    # the site CA and server certificates (`fallwatch device ca init`)
    ca_dir: Path = Path("var/ca")
    # where hubs redeem their one-time enrolment code (`fallwatch device enrol-server`)
    enrol_url: str = "http://localhost:8181"
    bundle_ttl_s: float = Field(default=72 * 3600.0, gt=0, le=30 * 86_400)
    # gateways whose broker users (`{id}` and `{id}-alerts`) the registry manages
    gateways: list[str] = []
    # the model-signing public keys (base64 ed25519) put into every bundle
    model_pubkeys: list[str] = []
    # written into the broker config the registry generates (plain loopback / TLS listener)
    plain_port: int | None = Field(default=1883, ge=0, le=65535)
    tls_port: int | None = Field(default=8883, ge=0, le=65535)
    broker_data_dir: str = "/var/lib/mosquitto"
    # hubs on the TLS listener authenticate with a client certificate (CN = device id) instead of a password
    client_certs: bool = False


class FallwatchConfig(_Strict):
    mqtt: MqttConfig = MqttConfig()
    influx: InfluxConfig = InfluxConfig()
    gateway: GatewayConfig = GatewayConfig()
    edge: EdgeConfig = EdgeConfig()
    provisioning: ProvisioningConfig = ProvisioningConfig()


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
