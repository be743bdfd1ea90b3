"""The versioned edge↔gateway message contract (documented in docs/protocol.md).

One JSON envelope for every uplink message, decoded strictly with msgspec: unknown
fields, wrong types, out-of-range values and unknown schema versions are rejected
with a :class:`ContractError` carrying a short machine-readable ``reason`` (used as a
counter label and dead-letter topic) and a human-readable ``detail``.

msgspec is used rather than pydantic here because the gateway decodes every message
on its hot path; it validates while parsing, with no intermediate dict.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from fallwatch.protocol import topics
from fallwatch.protocol.ids import ID_PATTERN

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
MAX_PAYLOAD_BYTES = 64 * 1024

# Every integer is bounded to int64 and every string is Text (no NUL, no control characters):
# both are what every store behind the gateway can hold (SQLite and PostgreSQL BIGINT, InfluxDB
# integers; PostgreSQL TEXT refuses NUL), so a message that decodes can always be stored, and a
# "poison" value is a ContractError at the door instead of an error in a worker's retry loop.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
Int64 = Annotated[int, Meta(ge=INT64_MIN, le=INT64_MAX)]
Count = Annotated[int, Meta(ge=0, le=INT64_MAX)]
#: no C0 controls (NUL, newline, ...), DEL or C1 controls; ``\Z``, because ``$`` lets a final newline in
NO_CONTROL_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*\Z"
Text = Annotated[str, Meta(pattern=NO_CONTROL_PATTERN)]

Id = Annotated[str, Meta(pattern=ID_PATTERN)]
Unit = Annotated[float, Meta(ge=0.0, le=1.0)]
Ms = Annotated[int, Meta(ge=0, le=10_000_000_000_000)]
Seq = Annotated[int, Meta(ge=0, le=INT64_MAX)]
ShortText = Annotated[Text, Meta(max_length=200)]
Text40 = Annotated[Text, Meta(max_length=40)]
Text80 = Annotated[Text, Meta(max_length=80)]
Text140 = Annotated[Text, Meta(max_length=140)]
FieldValue = float | Int64 | bool | Annotated[Text, Meta(max_length=1000)]
FieldName = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]{0,39}\Z")]
#: ``device:seq`` (before install ids) or ``device:install:seq``, see :func:`make_msg_id`
INSTALL_ID_PATTERN = r"^[a-z0-9]{1,16}\Z"
MsgId = Annotated[str, Meta(max_length=140, pattern=r"^[a-z0-9][a-z0-9-]{0,62}:(?:[a-z0-9]{1,16}:)?[0-9]{1,19}\Z")]

#: The one type each telemetry field has in the series store, by name (InfluxDB fixes a field's
#: type per shard, so a device choosing it could make every other device's writes fail). Any
#: name not listed here must be a number, and is stored as a float.
TELEMETRY_FIELD_TYPES: dict[str, type] = {"status": str, "concern": str, "value": bool, "active": bool}


class _Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, tag_field="kind"):
    schema: int
    site_id: Id
    device_id: Id
    resident_id: Id | None = None
    boot_id: Count
    seq: Seq
    msg_id: MsgId
    ts_ms: Ms
    sent_ms: Ms
    clock_synced: bool = True


# ---------------------------------------------------------------- payload bodies


class Reason(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One piece of evidence behind an alert, so staff can see *why* it fired."""

    code: Text40
    detail: ShortText = ""
    weight: float = 0.0


class FallData(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    event_id: Text140
    status: Literal["alert", "cancelled"]
    impact_ms: Ms
    confidence: Unit
    peak_g: Annotated[float, Meta(ge=0.0, le=64.0)]
    lying_s: Annotated[float, Meta(ge=0.0)] = 0.0
    room: Id | None = None
    sensor: Id | None = None
    reasons: Annotated[list[Reason], Meta(max_length=16)] = []
    model: Text80 = ""


class Factor(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Text40
    value: float
    contribution: float


class RiskData(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    day: Annotated[str, Meta(pattern=r"^\d{4}-\d{2}-\d{2}$")]
    score: Unit
    level: Literal["low", "medium", "high"]
    factors: Annotated[list[Factor], Meta(max_length=16)] = []
    features: Annotated[dict[Text40, float], Meta(max_length=32)] = {}
    model: Text80 = ""


class SensorHealth(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    last_seen_ms: Ms
    battery_pct: Annotated[float, Meta(ge=0, le=100)] | None = None
    rssi_dbm: Annotated[float, Meta(ge=-150, le=20)] | None = None
    status: Literal["ok", "stale", "stuck", "saturated", "silent", "rebooted"] = "ok"


class HealthData(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    uptime_s: Annotated[float, Meta(ge=0)]
    outbox_depth: Count
    cpu_pct: Annotated[float, Meta(ge=0, le=100 * 64)] | None = None
    mem_mb: Annotated[float, Meta(ge=0)] | None = None
    temp_c: Annotated[float, Meta(ge=-60, le=150)] | None = None
    model_version: Text40 = ""
    fw: Text40 = ""
    sensors: Annotated[dict[Id, SensorHealth], Meta(max_length=64)] = {}
    warnings: Annotated[list[ShortText], Meta(max_length=32)] = []


class TeleData(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    sensor: Id
    window_s: Annotated[float, Meta(gt=0, le=3600)]
    fields: Annotated[dict[FieldName, FieldValue], Meta(max_length=32)]
    room: Id | None = None


class StateData(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    state: Literal["ready", "offline", "lost"]
    fw: Text40 = ""
    model_version: Text40 = ""
    heartbeat_s: Annotated[float, Meta(gt=0, le=3600)] = 30.0


class TestData(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    note: ShortText = "daily silent test alarm"


class StatusData(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    transaction: Text80 = ""
    status: Literal["ok", "error", "accepted", "rejected", "rolled_back", "installed"]
    detail: ShortText = ""
    version: Text40 = ""


# ---------------------------------------------------------------- envelopes


class FallAlert(_Base, frozen=True, tag="fall"):
    data: FallData


class RiskScore(_Base, frozen=True, tag="risk"):
    data: RiskData


class Health(_Base, frozen=True, tag="health"):
    data: HealthData


class Telemetry(_Base, frozen=True, tag="tele"):
    data: TeleData


class State(_Base, frozen=True, tag="state"):
    data: StateData


class TestAlarm(_Base, frozen=True, tag="test"):
    data: TestData


class CommandResult(_Base, frozen=True, tag="cmd_res"):
    data: StatusData


class OtaStatus(_Base, frozen=True, tag="ota_status"):
    data: StatusData


Message = FallAlert | RiskScore | Health | Telemetry | State | TestAlarm | CommandResult | OtaStatus

#: Which envelope kind each topic kind must carry.
TOPIC_KIND = {
    "evt/fall": "fall",
    "evt/risk": "risk",
    "evt/test": "test",
    "health": "health",
    "tele": "tele",
    "state": "state",
    "cmd/res": "cmd_res",
    "ota/status": "ota_status",
}


class _Head(msgspec.Struct):
    """Just enough of an envelope to give a precise reason when the full decode fails."""

    schema: int | None = None
    kind: str | None = None


class ContractError(ValueError):
    """A message that breaks the contract. ``reason`` is a short, stable counter label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


_decoder = msgspec.json.Decoder(Message)
_head_decoder = msgspec.json.Decoder(_Head)
_encoder = msgspec.json.Encoder()


def make_msg_id(device_id: str, seq: int, install_id: str | None = None) -> str:
    """Deterministic idempotency key: the same message keeps it across every retry.

    ``install_id`` is created once per installation of a hub's outbox (edge/outbox.py): a
    re-imaged hub starts again at seq 1, and without it its new messages would carry keys the
    gateway has already seen and be dropped as duplicates. Keys without it (``device:seq``,
    hubs from before) stay valid.
    """
    return f"{device_id}:{seq}" if install_id is None else f"{device_id}:{install_id}:{seq}"


def msg_id_matches(msg_id: str, device_id: str, seq: int) -> bool:
    """Whether ``msg_id`` is this device's key for this seq, in either form."""
    parts = msg_id.split(":")
    if len(parts) == 2:
        return parts == [device_id, str(seq)]
    return (len(parts) == 3 and parts[0] == device_id and parts[2] == str(seq)
            and re.match(INSTALL_ID_PATTERN, parts[1]) is not None)


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def safe_text(value: str, max_length: int) -> str:
    """Free text (an exception message, a reason) made fit for a Text field: each run of
    control characters becomes one space, then it is cut to ``max_length``."""
    return _CONTROL_RE.sub(" ", value)[:max_length]


def content_digest(msg: Message) -> str:
    """What a message says, as a hash, without its send time (a re-send may be re-stamped):
    two messages under one idempotency key with different digests are different messages."""
    return hashlib.sha256(_encoder.encode(msgspec.structs.replace(msg, sent_ms=0))).hexdigest()[:32]


def check_field_types(data: TeleData) -> None:
    """Raise ContractError(``field_type``) for a telemetry field not of its pinned type."""
    for name, value in data.fields.items():
        want = TELEMETRY_FIELD_TYPES.get(name, float)
        ok = isinstance(value, bool) if want is bool else (
            isinstance(value, str) if want is str else isinstance(value, int | float) and not isinstance(value, bool))
        if not ok:
            raise ContractError("field_type", f"field {name!r} must be {want.__name__}, got {type(value).__name__}")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def encode(msg: Message) -> bytes:
    return _encoder.encode(msg)


def decode_payload(payload: bytes | bytearray) -> Message:
    """Decode and validate one envelope (without the topic cross-checks)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ContractError("too_large", f"payload of {len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        msg = _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        try:
            head = _head_decoder.decode(payload)
        except msgspec.DecodeError:
            try:
                msgspec.json.decode(payload)
            except msgspec.DecodeError:
                raise ContractError("bad_json", str(exc)) from None
            raise ContractError("invalid_payload", str(exc)) from None
        if head.schema is not None and head.schema not in SUPPORTED_VERSIONS:
            raise ContractError(
                "unsupported_version", f"schema {head.schema} not in {sorted(SUPPORTED_VERSIONS)}"
            ) from None
        raise ContractError("invalid_payload", str(exc)) from None
    if msg.schema not in SUPPORTED_VERSIONS:
        raise ContractError("unsupported_version", f"schema {msg.schema} not in {sorted(SUPPORTED_VERSIONS)}")
    if not msg_id_matches(msg.msg_id, msg.device_id, msg.seq):
        raise ContractError("invalid_payload", f"msg_id {msg.msg_id!r} != '<device_id>[:<install_id>]:<seq>'")
    if isinstance(msg, Telemetry):
        check_field_types(msg.data)
    return msg


def decode(topic: str, payload: bytes | bytearray) -> Message:
    """Decode an uplink message and check it against the topic it arrived on.

    The topic's site and device must match the envelope's: a device's credentials only
    let it publish under its own topic (broker ACL), so this stops a device speaking
    for another inside the payload.
    """
    try:
        parsed = topics.parse(topic)
    except topics.TopicError as exc:
        raise ContractError("bad_topic", str(exc)) from None
    expected = TOPIC_KIND.get(parsed.kind)
    if expected is None:
        raise ContractError("bad_topic", f"{parsed.kind!r} is not an uplink topic")
    msg = decode_payload(payload)
    if msg.device_id != parsed.device or msg.site_id != parsed.site:
        raise ContractError(
            "topic_mismatch",
            f"envelope {msg.site_id}/{msg.device_id} published on {parsed.site}/{parsed.device}",
        )
    kind = type(msg).__struct_config__.tag
    if kind != expected:
        raise ContractError("topic_mismatch", f"kind {kind!r} published on a {parsed.kind!r} topic")
    if isinstance(msg, Telemetry) and msg.data.sensor != parsed.sub:
        raise ContractError("topic_mismatch", f"sensor {msg.data.sensor!r} published on tele/{parsed.sub}")
    return msg


def kind_of(msg: Message) -> str:
    return str(type(msg).__struct_config__.tag)


# ================================================================ downlinks (to the hub)
# What a hub receives: the retained desired config on ``.../config`` and command requests
# on ``.../cmd/req/{name}`` (the signed model update on ``.../ota/model`` is its own format,
# see fallwatch.edge.ota). Replies go up as ``cmd_res`` / ``ota_status`` envelopes whose body
# is :class:`StatusData` (above). Built by the gateway/tools, decoded by the edge.

#: Commands a hub answers on ``cmd/res/{name}``; any other name gets status "error".
COMMANDS = ("ping", "self-test")

Transaction = Text80


class RemoteConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The desired config (retained on ``.../config``): a version plus any of the keys an
    operator may set remotely. The hub validates the values with the same limits as its
    config file; the reply's ``transaction`` and ``version`` echo ``version``."""

    version: Text80 | Int64 = ""
    cancel_window_s: float | None = None
    heartbeat_s: float | None = None
    telemetry_window_s: float | None = None
    upload_raw_imu: bool | None = None
    #: who wears which of the hub's wearables (wearable id -> resident id, None = nobody), from the
    #: provisioning registry (`fallwatch device assign --push`); wearables not named keep theirs
    wearers: Annotated[dict[Id, Id | None], Meta(max_length=256)] | None = None

    def settings(self) -> dict[str, float | bool]:
        """The scalar keys this document sets (everything but ``version`` and ``wearers`` that is not None)."""
        out: dict[str, float | bool] = {}
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if name not in ("version", "wearers") and value is not None:
                out[name] = value
        return out


class CommandRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A command on ``.../cmd/req/{name}`` (QoS 1, message expiry 300 s). The reply on
    ``.../cmd/res/{name}`` carries the same ``transaction``."""

    transaction: Transaction
    args: Annotated[dict[FieldName, FieldValue], Meta(max_length=16)] = {}


class _TransactionHead(msgspec.Struct):
    """Just the transaction of a request that failed to decode, so it can still be answered."""

    transaction: str | None = None


def decode_remote_config(payload: bytes | bytearray) -> RemoteConfig:
    """Decode a desired config; an empty payload (retained config cleared) sets nothing."""
    if not payload:
        return RemoteConfig()
    try:
        raw = msgspec.json.decode(payload)
    except msgspec.DecodeError as exc:
        raise ContractError("bad_json", str(exc)) from None
    if not isinstance(raw, dict):
        raise ContractError("invalid_payload", "the config must be a JSON object")
    unknown = sorted(set(raw) - set(RemoteConfig.__struct_fields__))
    if unknown:
        raise ContractError("invalid_payload", f"unknown keys {unknown}")
    try:
        return msgspec.convert(raw, RemoteConfig)
    except msgspec.ValidationError as exc:
        raise ContractError("invalid_payload", str(exc)) from None


_command_decoder = msgspec.json.Decoder(CommandRequest)
_transaction_decoder = msgspec.json.Decoder(_TransactionHead)


def decode_command(payload: bytes | bytearray) -> CommandRequest:
    """Decode a command request strictly (reasons ``too_large``, ``bad_json``, ``invalid_payload``)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ContractError("too_large", f"payload of {len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        return _command_decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise ContractError("invalid_payload", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ContractError("bad_json", str(exc)) from None


def transaction_of(payload: bytes | bytearray) -> str | None:
    """The transaction id of a (possibly malformed) request, if one can be read (≤ 80 chars)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None
    try:
        head = _transaction_decoder.decode(payload)
    except msgspec.DecodeError:
        return None
    tx = head.transaction
    return tx if isinstance(tx, str) and 0 < len(tx) <= 80 else None


def encode_downlink(msg: RemoteConfig | CommandRequest | ModelUpdate) -> bytes:
    return _encoder.encode(msg)


# ---------------------------------------------------------------- signed model updates (…/ota/model)

#: The largest model a hub accepts (inline or downloaded).
MAX_MODEL_BYTES = 32 * 2**20
#: An update document may carry the model inline, base64: 4/3 of the model plus the manifest.
MAX_UPDATE_BYTES = MAX_MODEL_BYTES * 4 // 3 + 64 * 1024

Sha256Hex = Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]


class ModelManifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """What the signature covers (:func:`manifest_bytes`): which model, which version, its hash."""

    model: Literal["fall"]  # the only model a hub installs over the air today
    version: Annotated[str, Meta(min_length=1, max_length=40)]
    sha256: Sha256Hex
    size: Annotated[int, Meta(ge=1, le=MAX_MODEL_BYTES)]
    expires_ms: Ms
    url: Annotated[str, Meta(max_length=2000)] | None = None  # download here when not inline


class KeyAnnouncement(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """A new model-signing key, signed by a key the hub already trusts (:func:`announcement_bytes`):
    how a hub learns the next key without a visit. ``seq`` only grows (no replay of an old
    announcement); ``retire_signer`` makes the hub stop trusting the key that signed it."""

    new_key: Annotated[str, Meta(min_length=40, max_length=64)]  # base64 of the 32-byte ed25519 key
    seq: Annotated[int, Meta(ge=1, le=2**31)]
    expires_ms: Ms
    retire_signer: bool = False


class ModelUpdate(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """The retained document on ``…/ota/model``: manifest, its ed25519 signature, maybe the model,
    and maybe a key announcement (signed by a trusted key) introducing the key that signed it."""

    manifest: ModelManifest
    signature: Annotated[str, Meta(max_length=200)]  # base64 of the 64-byte signature
    model_b64: str | None = None
    key_announcement: KeyAnnouncement | None = None
    announcement_signature: Annotated[str, Meta(max_length=200)] | None = None


def announcement_bytes(ann: KeyAnnouncement) -> bytes:
    """The canonical signed bytes of a key announcement; the prefix keeps a manifest signature
    from ever being taken for an announcement signature (or the other way round)."""
    return b"fallwatch-key-announcement:" + json.dumps(msgspec.to_builtins(ann), sort_keys=True,
                                                      separators=(",", ":"), ensure_ascii=True).encode()


def manifest_bytes(manifest: ModelManifest) -> bytes:
    """The canonical bytes that are signed: sorted keys, no spaces, ASCII (stable across tools)."""
    return json.dumps(msgspec.to_builtins(manifest), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode()


_update_decoder = msgspec.json.Decoder(ModelUpdate)


def decode_model_update(payload: bytes | bytearray) -> ModelUpdate:
    """Decode an update document strictly (reasons ``too_large``, ``bad_json``, ``invalid_payload``)."""
    if len(payload) > MAX_UPDATE_BYTES:
        raise ContractError("too_large", f"update of {len(payload)} bytes > {MAX_UPDATE_BYTES}")
    try:
        return _update_decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise ContractError("invalid_payload", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ContractError("bad_json", str(exc)) from None

# ---------------------------------------------------------------- payloads the gateway publishes
# Not envelopes (no device, no seq): the gateway's retained presence and its dead letters.


class GatewayPresence(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Retained on ``topics.gateway_state(gateway_id)``: ``ready`` on connect, ``offline`` on a
    clean stop, ``lost`` as the last will (Homie/Sparkplug-style birth and death)."""

    state: Literal["ready", "offline", "lost"]
    gateway_id: Id
    ts_ms: Ms


#: Longest ``detail`` / ``topic`` a dead letter carries (longer ones are cut).
DEAD_LETTER_TEXT_MAX = 1000


class DeadLetter(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Published on ``topics.dead_letter(reason)`` for every rejected message: why, where it
    came from, and the payload (base64, at most ``MAX_PAYLOAD_BYTES``) so it can be replayed."""

    reason: Annotated[str, Meta(max_length=40)]  # the ContractError reason (counter label)
    detail: Annotated[str, Meta(max_length=DEAD_LETTER_TEXT_MAX)]
    topic: Annotated[str, Meta(max_length=DEAD_LETTER_TEXT_MAX)]
    gateway_id: Id
    received_ms: Ms
    payload_b64: str


_presence_decoder = msgspec.json.Decoder(GatewayPresence)
_dead_letter_decoder = msgspec.json.Decoder(DeadLetter)


def encode_gateway(payload: GatewayPresence | DeadLetter) -> bytes:
    return _encoder.encode(payload)


def decode_presence(payload: bytes) -> GatewayPresence:
    return _presence_decoder.decode(payload)


def decode_dead_letter(payload: bytes) -> DeadLetter:
    return _dead_letter_decoder.decode(payload)
