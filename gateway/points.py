"""Contract messages → time-series points (the storage schema, documented in docs/storage.md).

A point is a plain ``(measurement, tags, fields, ts_ms)`` tuple so it can be spooled to
disk (msgpack), written to InfluxDB (line protocol with influxdb-client's escaping rules,
:func:`to_line`) or to the embedded SQLite store without conversion loss.

Schema rules that matter for the queries staff and dashboards run:

* tags are bounded and grouped-by (site, device, sensor, room, status, level); ids that
  grow without bound (event_id, msg_id, resident_id) are *fields*, never tags;
* the timestamp is the envelope's ``ts_ms`` (device event time, ms precision), so a QoS 1
  redelivery written twice lands on the same series+time and overwrites itself;
* numeric telemetry values are always written as floats, because InfluxDB fixes a
  field's type per shard and a sensor that sends ``12`` once and ``12.5`` later would
  otherwise have the second write refused.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any, Protocol, cast

import msgspec

from fallwatch.protocol import contract as c

#: (measurement, tags, fields, ts_ms)
SeriesPoint = tuple[str, dict[str, str], dict[str, Any], int]

MEASUREMENTS = (
    "fall_alert",
    "telemetry",
    "health",
    "sensor_health",
    "risk",
    "device_state",
    "test_alarm",
    "device_event",
)

_json = msgspec.json.Encoder()


class InfluxPoint(Protocol):
    """The part of influxdb-client's ``Point`` used here (the library leaves it unannotated)."""

    def tag(self, key: str, value: str) -> InfluxPoint: ...
    def field(self, field: str, value: Any) -> InfluxPoint: ...
    def time(self, time: int, write_precision: str = ...) -> InfluxPoint: ...
    def to_line_protocol(self, precision: str | None = None) -> str: ...


# Line protocol escaping: influxdb-client's tables and rules (client/write/point.py, 1.x), kept
# here so the gateway does not import that package to write to InfluxDB 1.x: importing its
# ``point`` module loads the whole client (hundreds of generated API modules) and numpy,
# ~46 MB of the gateway's resident memory (issue 16: aim 95 MB per process). The v2/v3 sink,
# which does use the client, still builds its ``Point``s (:func:`influx_point`); a test
# checks that both give the same line for the same point.
_ESCAPE_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})
_ESCAPE_KEY = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})
_ESCAPE_STRING = str.maketrans({'"': r'\"', "\\": r"\\"})


def _tags_line(tags: dict[str, str]) -> str:
    out = []
    for key, value in sorted(tags.items()):
        if value is None:
            continue
        k, v = str(key).translate(_ESCAPE_KEY), str(value).translate(_ESCAPE_KEY)
        if v.endswith("\\"):
            v += " "
        if k and v:
            out.append(f"{k}={v}")
    return ("," if out else "") + ",".join(out)


_key_cache: dict[str, str] = {}


def _key(key: str) -> str:
    """A field key escaped, cached: a gateway writes the same few dozen keys over and over."""
    k = _key_cache.get(key)
    if k is None:
        k = str(key).translate(_ESCAPE_KEY)
        if len(_key_cache) > 10_000:
            _key_cache.clear()
        _key_cache[key] = k
    return k


def _fields_line(fields: dict[str, Any]) -> str:
    """The field set; exact types first (what the gateway's points hold), then the general
    rules for subclasses and decimals (issue 16: a third of a light batch's line building
    went to ``isinstance`` against unions)."""
    out = []
    for key in sorted(fields):
        value = fields[key]
        t = type(value)
        if t is float:
            if value - value != 0.0:  # inf or nan: left out, as influxdb-client does
                continue
            text = repr(value)
            out.append(f"{_key(key)}={text[:-2] if text.endswith('.0') else text}")
        elif t is str:
            text = value.replace("\n", "\\n").replace("\r", "\\r") if ("\n" in value or "\r" in value) else value
            out.append(f'{_key(key)}="{text.translate(_ESCAPE_STRING)}"')
        elif t is int:
            out.append(f"{_key(key)}={value}i")
        elif t is bool:
            out.append(f"{_key(key)}={'true' if value else 'false'}")
        elif value is None:
            continue
        else:
            _other_field(out, key, value)
    return ",".join(out)


def _other_field(out: list[str], key: str, value: Any) -> None:
    """Decimals, and subclasses of the exact types (an ``IntEnum``, numpy's ``float64``): as
    their base type, through the same formatting."""
    if isinstance(value, Decimal):
        if value.is_finite():
            text = str(value)
            out.append(f"{_key(key)}={text[:-2] if text.endswith('.0') else text}")
        return
    for base in (int, float, str):  # bool cannot be subclassed: exact bools never get here
        if isinstance(value, base):
            part = _fields_line({key: base(value)})
            if part:
                out.append(part)
            return
    raise ValueError(f'Type: "{type(value)}" of field: "{key}" is not supported.')


def _base_tags(msg: c.Message) -> dict[str, str]:
    return {"site_id": msg.site_id, "device_id": msg.device_id}


def _put(fields: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        fields[key] = value


def _fall(msg: c.FallAlert) -> list[SeriesPoint]:
    d = msg.data
    tags = _base_tags(msg)
    if d.sensor:
        tags["sensor"] = d.sensor
    tags["status"] = d.status
    fields: dict[str, Any] = {
        "event_id": d.event_id,
        "confidence": float(d.confidence),
        "peak_g": float(d.peak_g),
        "lying_s": float(d.lying_s),
        "impact_ms": int(d.impact_ms),
        "msg_id": msg.msg_id,
        "seq": int(msg.seq),
        "reasons": ",".join(r.code for r in d.reasons),
        "model": d.model,
    }
    _put(fields, "resident_id", msg.resident_id)
    _put(fields, "room", d.room)
    return [("fall_alert", tags, fields, msg.ts_ms)]


def _tele(msg: c.Telemetry) -> list[SeriesPoint]:
    d = msg.data
    tags = _base_tags(msg)
    tags["sensor"] = d.sensor
    if d.room:
        tags["room"] = d.room
    # window_s is always present, so "how many summaries arrived" is one query whatever the sensor sends
    fields: dict[str, Any] = {"window_s": float(d.window_s)}
    for k, v in d.fields.items():
        fields[k] = v if isinstance(v, bool | str) else float(v)
    return [("telemetry", tags, fields, msg.ts_ms)]


def _health(msg: c.Health) -> list[SeriesPoint]:
    d = msg.data
    fields: dict[str, Any] = {
        "uptime_s": float(d.uptime_s),
        "outbox_depth": int(d.outbox_depth),
        "model_version": d.model_version,
        "fw": d.fw,
        "seq": int(msg.seq),
        "warnings": len(d.warnings),
    }
    for key in ("cpu_pct", "mem_mb", "temp_c"):
        v = getattr(d, key)
        if v is not None:
            fields[key] = float(v)
    batteries = [s.battery_pct for s in d.sensors.values() if s.battery_pct is not None]
    if batteries:
        fields["min_battery_pct"] = float(min(batteries))
    out: list[SeriesPoint] = [("health", _base_tags(msg), fields, msg.ts_ms)]
    for sensor, sh in d.sensors.items():
        sf: dict[str, Any] = {"status": sh.status, "last_seen_ms": int(sh.last_seen_ms)}
        _put(sf, "battery_pct", None if sh.battery_pct is None else float(sh.battery_pct))
        _put(sf, "rssi_dbm", None if sh.rssi_dbm is None else float(sh.rssi_dbm))
        out.append(("sensor_health", {**_base_tags(msg), "sensor": sensor}, sf, msg.ts_ms))
    return out


def _risk(msg: c.RiskScore) -> list[SeriesPoint]:
    d = msg.data
    tags = {**_base_tags(msg), "level": d.level}
    fields: dict[str, Any] = {"score": float(d.score), "day": d.day, "model": d.model, "seq": int(msg.seq)}
    _put(fields, "resident_id", msg.resident_id)
    for name, value in d.features.items():
        fields[f"feat_{name}"] = float(value)
    for f in d.factors:
        fields[f"contrib_{f.name}"] = float(f.contribution)
    return [("risk", tags, fields, msg.ts_ms)]


def _state(msg: c.State) -> list[SeriesPoint]:
    d = msg.data
    tags = {**_base_tags(msg), "state": d.state}
    fields = {
        "fw": d.fw,
        "model_version": d.model_version,
        "heartbeat_s": float(d.heartbeat_s),
        "boot_id": int(msg.boot_id),
        "seq": int(msg.seq),
    }
    return [("device_state", tags, fields, msg.ts_ms)]


def _test(msg: c.TestAlarm, received_ms: int) -> list[SeriesPoint]:
    fields = {"note": msg.data.note, "seq": int(msg.seq), "delay_ms": float(max(0, received_ms - msg.ts_ms))}
    return [("test_alarm", _base_tags(msg), fields, msg.ts_ms)]


def _status(msg: c.CommandResult | c.OtaStatus) -> list[SeriesPoint]:
    d = msg.data
    tags = {**_base_tags(msg), "kind": c.kind_of(msg), "status": d.status}
    fields = {"transaction": d.transaction, "detail": d.detail, "version": d.version, "seq": int(msg.seq)}
    return [("device_event", tags, fields, msg.ts_ms)]


def to_points(msg: c.Message, received_ms: int, max_ahead_ms: int | None = None) -> list[SeriesPoint]:
    """The points one accepted message becomes (possibly none).

    Raises ContractError(``invalid_payload``) for a non-finite number: InfluxDB cannot
    store NaN or infinity, and influxdb-client would drop such a field (or the whole
    point) without a word, which would be silent loss.

    With ``max_ahead_ms``, a time stamp later than receipt + ``max_ahead_ms`` is clamped to
    that: a device clock ahead must not write (and fix field types in) future shards. Times
    in the past are kept: a hub that was offline sends its backlog with the times it saw.
    """
    points = _to_points(msg, received_ms)
    if max_ahead_ms is not None:
        latest = received_ms + max_ahead_ms
        if msg.ts_ms > latest:
            points = [(m, tags, fields, min(ts, latest)) for m, tags, fields, ts in points]
    for m, _, fields, _ in points:
        for k, v in fields.items():
            if isinstance(v, float) and not math.isfinite(v):
                raise c.ContractError("invalid_payload", f"non-finite value {v} in {m}.{k}")
    return points


def _to_points(msg: c.Message, received_ms: int) -> list[SeriesPoint]:
    if isinstance(msg, c.Telemetry):
        return _tele(msg)
    if isinstance(msg, c.FallAlert):
        return _fall(msg)
    if isinstance(msg, c.Health):
        return _health(msg)
    if isinstance(msg, c.RiskScore):
        return _risk(msg)
    if isinstance(msg, c.State):
        return _state(msg)
    if isinstance(msg, c.TestAlarm):
        return _test(msg, received_ms)
    if isinstance(msg, c.CommandResult | c.OtaStatus):
        return _status(msg)
    return []  # pragma: no cover - Message is a closed union


def influx_point(p: SeriesPoint) -> InfluxPoint:
    from influxdb_client.client.write.point import Point
    from influxdb_client.domain.write_precision import WritePrecision

    measurement, tags, fields, ts_ms = p
    point = cast(InfluxPoint, Point(measurement))
    for k, v in tags.items():
        point.tag(k, v)
    for k, v in fields.items():
        # line protocol has no escape for a raw newline inside a string field
        point.field(k, v.replace("\n", "\\n").replace("\r", "\\r") if isinstance(v, str) else v)
    return point.time(ts_ms, WritePrecision.MS)


_prefix_cache: dict[tuple[Any, ...], str] = {}


def _series_prefix(measurement: str, tags: dict[str, str]) -> str:
    """``measurement,tag=value,…`` escaped, cached per series.

    A gateway sees the same few thousand series over and over, and escaping the tag set
    was the biggest single cost of serialising a point; the cache is bounded (cleared
    when it passes 100,000 series, which bounded tag cardinality never reaches).
    """
    key = (measurement, *tags.items())
    prefix = _prefix_cache.get(key)
    if prefix is None:
        prefix = measurement.translate(_ESCAPE_MEASUREMENT) + _tags_line(tags)
        if len(_prefix_cache) > 100_000:
            _prefix_cache.clear()
        _prefix_cache[key] = prefix
    return prefix


def to_line(p: SeriesPoint) -> str:
    """One line of InfluxDB line protocol ("" for a point without fields), escaped as
    influxdb-client's ``Point.to_line_protocol`` does (18 → 9 µs a line by not building a
    ``Point`` per line, issue 16; the series prefix is cached)."""
    measurement, tags, fields, ts_ms = p
    field_part = _fields_line(fields)  # raw newlines in string fields escaped there
    if not field_part:
        return ""
    return f"{_series_prefix(measurement, tags)} {field_part} {ts_ms}"


def series_key(tags: dict[str, str]) -> str:
    """A canonical text form of a tag set (sorted), used by the embedded store."""
    return _json.encode(dict(sorted(tags.items()))).decode()
