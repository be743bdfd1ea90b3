"""A resident's data on request: export it as one file, erase it end to end (docs/privacy.md).

What is "the resident's data" is written down once, in :data:`RESIDENT_TABLES` (state-store
tables keyed by the resident, or by the alerts about them) and :func:`erase_series` (the
series store), so export and erasure cannot disagree about it, and a new table holding
resident data is one line there.

How erasure and the append-only audit logs live together: the audit logs never name a
resident. Where an audit row is about a resident it carries a *pseudonym* (``~`` and 12 hex
digits, random, kept in ``privacy_pseudonyms``); alert-log rows name alerts by alert id
(site, hub, event), never by resident, and carry no risk scores. Erasure deletes the
pseudonym's row, so what stays in the audit logs — who did what, when, to which alert — can
no longer be tied to the person through the gateway (GDPR art. 17(3)(b)/(e): the record of
who handled an alarm and who read health data is kept as the controller's own obligation).

An erasure must also stick: a batch a replica spooled while the store was down, a message a
hub still holds in its outbox, or a QoS 1 redelivery could bring the data back. So the first
step of an erasure is a *tombstone* in the shared state store (``privacy_erasures``: a keyed
hash of the site and resident id, the erasure time and the resident's wearables with their
assignment periods — no id in clear): every gateway process drops points and alerts it
matches (refreshed every :data:`TOMBSTONE_REFRESH_S`), and the erasure waits longer than that
before it deletes, so no replica can write behind it. Message ids already seen stay in the
de-duplication table (``seen`` holds message ids and a digest, no content), so a redelivery
is dropped as a duplicate before it is even looked at.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fallwatch.config import InfluxConfig
from fallwatch.gateway.points import SeriesPoint
from fallwatch.gateway.sinks import SinkError
from fallwatch.gateway.state import StateStore
from fallwatch.protocol import contract as c

log = logging.getLogger("fallwatch.gateway.privacy")

#: a replica re-reads the tombstones at least this often
TOMBSTONE_REFRESH_S = 1.0
#: how long an erasure waits after writing its tombstone before deleting (> the refresh)
ERASE_WAIT_S = 2.5
EXPORT_FORMAT = "fallwatch-resident-export/1"

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS privacy_pseudonyms (
        site_id TEXT NOT NULL, resident_id TEXT NOT NULL, pseudonym TEXT NOT NULL UNIQUE,
        created_ms BIGINT NOT NULL, PRIMARY KEY (site_id, resident_id))""",
    """CREATE TABLE IF NOT EXISTS privacy_erasures (
        id {autoinc}, subject TEXT NOT NULL, site_id TEXT NOT NULL, pseudonym TEXT NOT NULL,
        erased_ms BIGINT NOT NULL, sensors TEXT NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS privacy_keys (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
]

#: ``where`` clauses, each with two placeholders (site_id, resident_id)
BY_RESIDENT = "site_id = ? AND resident_id = ?"
BY_ALERT = "alert_id IN (SELECT alert_id FROM alerts WHERE site_id = ? AND resident_id = ?)"
BY_ALERT_MSG = "msg_id IN (SELECT msg_id FROM alerts WHERE site_id = ? AND resident_id = ?)"

#: Every state-store table that holds a resident's data: (table, rows of the resident, exported?).
#: Order matters for erasure: rows found through ``alerts`` go before ``alerts`` itself.
#: Tables that do not exist on this gateway (no registry, a module not merged) are skipped.
#: A new table with resident data is one more line here (e.g. the console's ``resident_actions``).
RESIDENT_TABLES: list[tuple[str, str, bool]] = [
    ("deliveries", BY_ALERT, True),          # every try to page someone about their alerts
    ("ack_tokens", BY_ALERT, False),         # acknowledge links issued for their alerts
    ("pages", BY_ALERT, True),               # paging state of their alerts
    ("alert_points", BY_ALERT_MSG, False),   # a fall alert's points not yet in the series store
    ("alerts", BY_RESIDENT, True),           # their alerts, outcomes and notes, planning items
    ("reg_assignments", BY_RESIDENT, True),  # which wearable they wore when
    ("reg_residents", BY_RESIDENT, True),    # name, flat, team, next of kin
    ("resident_actions", BY_RESIDENT, True),  # actions taken after a risk review (the console)
    ("privacy_pseudonyms", BY_RESIDENT, False),  # last: the link from the audit logs to them
]


class PrivacyError(RuntimeError):
    """An export or erasure that cannot be done (unknown resident, a store that cannot delete)."""


class StoreUnavailable(PrivacyError):
    """The series store did not answer: nothing was deleted from the state store; try again."""


# ------------------------------------------------------------------ pseudonyms


def _ensure_schema(store: StateStore) -> None:
    if getattr(store, "_privacy_ready", False):
        return
    store.create_tables(SCHEMA)
    store._privacy_ready = True  # type: ignore[attr-defined]


def pseudonym(store: StateStore, site_id: str, resident_id: str) -> str:
    """The resident's pseudonym in the audit logs (made on first use, the same for every
    replica: the row is inserted once, whoever gets there first)."""
    _ensure_schema(store)
    q = "SELECT pseudonym FROM privacy_pseudonyms WHERE site_id = ? AND resident_id = ?"
    rows = store._select(q, (site_id, resident_id))
    if rows:
        return str(rows[0]["pseudonym"])
    with store._tx() as cur:
        store._exec(cur, "INSERT INTO privacy_pseudonyms (site_id, resident_id, pseudonym, created_ms) "
                         "VALUES (?, ?, ?, ?) ON CONFLICT (site_id, resident_id) DO NOTHING",
                    (site_id, resident_id, "~" + secrets.token_hex(6), c.now_ms()))
    return str(store._select(q, (site_id, resident_id))[0]["pseudonym"])


def subject_key(store: StateStore) -> bytes:
    """The key of the tombstones' hashes (generated once, shared by replicas through the state store)."""
    _ensure_schema(store)
    with store._tx() as cur:
        store._exec(cur, "INSERT INTO privacy_keys (name, value) VALUES ('tombstone', ?) "
                         "ON CONFLICT (name) DO NOTHING", (secrets.token_hex(32),))
    return bytes.fromhex(str(store._select("SELECT value FROM privacy_keys WHERE name = 'tombstone'")[0]["value"]))


def subject_hash(key: bytes, site_id: str, resident_id: str) -> str:
    return hmac.new(key, f"{site_id}/{resident_id}".encode(), hashlib.sha256).hexdigest()


# ------------------------------------------------------------------ tombstones, applied on ingest


class ErasedFilter:
    """What every gateway process drops because its resident was erased: points and fall
    alerts naming them with an event time up to the erasure, and telemetry of a wearable they
    wore, from the time they wore it. Re-read from the shared state store every
    :data:`TOMBSTONE_REFRESH_S` (one small SELECT), so an erasure on one replica holds on all."""

    def __init__(self, store: StateStore, on_drop: Callable[[int], None] | None = None) -> None:
        self.store = store
        self.on_drop = on_drop
        self._lock = threading.Lock()
        self._loaded = -1e9
        self._key: bytes | None = None
        self._subjects: dict[str, int] = {}
        self._sensors: dict[tuple[str, str], list[tuple[int, int]]] = {}

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._loaded < TOMBSTONE_REFRESH_S:
            return
        with self._lock:
            if now - self._loaded < TOMBSTONE_REFRESH_S:
                return
            try:
                if self._key is None:
                    self._key = subject_key(self.store)
                rows = self.store._select("SELECT subject, site_id, erased_ms, sensors FROM privacy_erasures")
            except Exception:  # the state DB is away: keep what we knew (ingest fails on its own then)
                log.warning("could not re-read the erasure tombstones; keeping the %d known", len(self._subjects),
                            exc_info=True)
                self._loaded = now
                return
            subjects: dict[str, int] = {}
            sensors: dict[tuple[str, str], list[tuple[int, int]]] = {}
            for r in rows:
                subjects[str(r["subject"])] = max(subjects.get(str(r["subject"]), 0), int(r["erased_ms"]))
                for sensor, start, end in json.loads(r["sensors"]):
                    sensors.setdefault((str(r["site_id"]), str(sensor)), []).append(
                        (int(start), int(end if end is not None else r["erased_ms"])))
            self._subjects, self._sensors, self._loaded = subjects, sensors, now

    def erased(self, site_id: str, resident_id: str | None, ts_ms: int) -> bool:
        if not resident_id:
            return False
        self._refresh()
        if not self._subjects or self._key is None:
            return False
        until = self._subjects.get(subject_hash(self._key, site_id, resident_id))
        return until is not None and ts_ms <= until

    def message(self, msg: c.Message) -> bool:
        """Whether a fall alert / risk score is about an erased resident (from before the erasure)."""
        return self.erased(msg.site_id, getattr(msg, "resident_id", None), msg.ts_ms)

    def points(self, points: list[SeriesPoint]) -> list[SeriesPoint]:
        self._refresh()
        if not self._subjects and not self._sensors:
            return points
        keep = [p for p in points if not self._drop(p)]
        if len(keep) != len(points) and self.on_drop is not None:
            self.on_drop(len(points) - len(keep))
        return keep

    def _drop(self, p: SeriesPoint) -> bool:
        measurement, tags, fields, ts = p
        site = tags.get("site_id", "")
        rid = fields.get("resident_id")
        if isinstance(rid, str) and self.erased(site, rid, ts):
            return True
        spans = self._sensors.get((site, tags.get("sensor", "")))
        return bool(spans) and measurement in WEARABLE_MEASUREMENTS and any(a <= ts <= b for a, b in spans or ())


#: measurements whose ``sensor`` tag names a wearable: the wearer's data while they wore it
WEARABLE_MEASUREMENTS = ("telemetry", "sensor_health", "fall_alert")
#: measurements whose points carry a ``resident_id`` field
RESIDENT_MEASUREMENTS = ("fall_alert", "risk")


# ------------------------------------------------------------------ the series store


def _q(v: str) -> str:
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"


def series_points(cfg: InfluxConfig, site_id: str, resident_id: str, measurement: str) -> list[dict[str, Any]]:
    """The points of ``measurement`` naming the resident (tags and fields, ``time`` in ms)."""
    from fallwatch.gateway.sinks import sink_type

    kind = sink_type(cfg)
    if kind == "influxdb-v1":
        from fallwatch.gateway.sinks.influx1 import Influx1Sink

        sink = Influx1Sink(cfg)
        try:
            series = sink.query(f'SELECT * FROM "{measurement}" WHERE "site_id" = {_q(site_id)} '
                                f'AND "resident_id" = {_q(resident_id)}')
        finally:
            sink.close()
        return [dict(zip(s["columns"], row, strict=False)) for s in series for row in s.get("values", [])]
    if kind == "embedded-sqlite":
        import sqlite3

        db = sqlite3.connect(cfg.embedded_path, timeout=30)
        try:
            rows = db.execute("SELECT series, fields, ts_ms FROM points WHERE measurement = ? "
                              "AND json_extract(series, '$.site_id') = ? AND json_extract(fields, '$.resident_id') = ? "
                              "ORDER BY ts_ms", (measurement, site_id, resident_id)).fetchall()
        except sqlite3.OperationalError:  # no points table yet
            rows = []
        finally:
            db.close()
        return [{"time": ts, **json.loads(s), **json.loads(f)} for s, f, ts in rows]
    if kind == "influxdb-client":
        from influxdb_client.client.influxdb_client import InfluxDBClient

        token = cfg.token or (f"{cfg.username}:{cfg.password or ''}" if cfg.username else "")
        with InfluxDBClient(url=cfg.url, token=token, org=cfg.org, timeout=int(cfg.timeout_s * 1000)) as client:
            tables = client.query_api().query(
                f'from(bucket: {json.dumps(cfg.bucket)}) |> range(start: 0) '
                f'|> filter(fn: (r) => r._measurement == {json.dumps(measurement)} and r.site_id == '
                f'{json.dumps(site_id)}) |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value") '
                f'|> filter(fn: (r) => r.resident_id == {json.dumps(resident_id)})', org=cfg.org)
            out = []
            for t in tables:
                for r in t.records:
                    row = {k: v for k, v in r.values.items() if not k.startswith("_") and k not in ("result", "table")}
                    row["time"] = int(r.get_time().timestamp() * 1000)
                    out.append(row)
            return out
    raise PrivacyError(f"series store {kind!r}: reading a resident's points is not supported")


def erase_series(cfg: InfluxConfig, site_id: str, resident_id: str,
                 wearables: list[tuple[str, int, int | None]], now_ms: int) -> dict[str, int]:
    """Delete the resident's points from the series store: every point naming them (fall
    alerts, risk scores) and every point of a wearable they wore while they wore it.
    Returns points deleted per measurement. Raises :class:`PrivacyError` for a store that
    cannot delete points (InfluxDB 3.x has no point deletion)."""
    from fallwatch.gateway.sinks import sink_type

    kind = sink_type(cfg)
    counts: dict[str, int] = {}
    if kind == "influxdb-v1":
        from fallwatch.gateway.sinks.influx1 import Influx1Sink

        sink = Influx1Sink(cfg)
        try:
            stmts: list[str] = []
            for m in RESIDENT_MEASUREMENTS:
                pts = series_points(cfg, site_id, resident_id, m)
                keys = [row[0] for s in sink.query(f'SHOW TAG KEYS FROM "{m}"') for row in s.get("values", [])]
                for p in pts:
                    # a point is its measurement, its whole tag set and its time (absent tag = '')
                    where = " AND ".join(f'"{k}" = {_q(str(p.get(k) or ""))}' for k in keys)
                    stmts.append(f'DELETE FROM "{m}" WHERE {where} AND time >= {p["time"]}ms AND time <= {p["time"]}ms')
                counts[m] = len(pts)
            for sensor, start, end in wearables:
                for m in ("telemetry", "sensor_health"):
                    span = f'"site_id" = {_q(site_id)} AND "sensor" = {_q(sensor)} AND time >= {start}ms ' \
                           f'AND time <= {end if end is not None else now_ms}ms'
                    counts[m] = counts.get(m, 0) + _count(sink.query(f'SELECT count(*) FROM "{m}" WHERE {span}'))
                    stmts.append(f'DELETE FROM "{m}" WHERE {span}')
            for i in range(0, len(stmts), 50):  # InfluxQL runs ;-separated statements in one request
                sink.query("; ".join(stmts[i:i + 50]))
        finally:
            sink.close()
        return counts
    if kind == "embedded-sqlite":
        import sqlite3

        db = sqlite3.connect(cfg.embedded_path, timeout=30)
        try:
            with db:
                for m in RESIDENT_MEASUREMENTS:
                    counts[m] = db.execute(
                        "DELETE FROM points WHERE measurement = ? AND json_extract(series, '$.site_id') = ? "
                        "AND json_extract(fields, '$.resident_id') = ?", (m, site_id, resident_id)).rowcount
                for sensor, start, end in wearables:
                    for m in ("telemetry", "sensor_health"):
                        counts[m] = counts.get(m, 0) + db.execute(
                            "DELETE FROM points WHERE measurement = ? AND json_extract(series, '$.site_id') = ? "
                            "AND json_extract(series, '$.sensor') = ? AND ts_ms BETWEEN ? AND ?",
                            (m, site_id, sensor, start, end if end is not None else now_ms)).rowcount
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise PrivacyError(f"embedded series store: {exc}") from None
        finally:
            db.close()
        return counts
    if kind == "influxdb-client" and cfg.version == 2:
        from datetime import UTC, datetime

        from influxdb_client.client.influxdb_client import InfluxDBClient

        def at(ms: int) -> datetime:
            return datetime.fromtimestamp(ms / 1000, UTC)

        token = cfg.token or (f"{cfg.username}:{cfg.password or ''}" if cfg.username else "")
        with InfluxDBClient(url=cfg.url, token=token, org=cfg.org, timeout=int(cfg.timeout_s * 1000)) as client:
            api = client.delete_api()
            for m in RESIDENT_MEASUREMENTS:  # the delete predicate takes tags only: one point at a time
                pts = series_points(cfg, site_id, resident_id, m)
                for p in pts:
                    pred = " AND ".join([f'_measurement="{m}"', *(f'{k}="{p[k]}"' for k in
                                         ("site_id", "device_id", "sensor", "status", "level") if p.get(k))])
                    api.delete(at(p["time"]), at(p["time"]), pred, bucket=cfg.bucket, org=cfg.org)
                counts[m] = len(pts)
            for sensor, start, end in wearables:
                for m in ("telemetry", "sensor_health"):
                    api.delete(at(start), at(end if end is not None else now_ms),
                               f'_measurement="{m}" AND site_id="{site_id}" AND sensor="{sensor}"',
                               bucket=cfg.bucket, org=cfg.org)
                    counts[m] = counts.get(m, -1)  # the delete API does not say how many
        return counts
    raise PrivacyError(f"series store {kind!r} (influx.version {cfg.version}) cannot delete single points: "
                       "erase the resident's series there by hand (docs/privacy.md), nothing was changed")


def _count(series: list[dict[str, Any]]) -> int:
    """Points in a ``SELECT count(*)`` answer: the largest per-field count."""
    return max((int(v) for s in series for row in s.get("values", []) for v in row[1:]
                if isinstance(v, int | float)), default=0)


# ------------------------------------------------------------------ export and erasure


#: the columns each kind of ``where`` clause needs in its table
_NEEDS = {BY_RESIDENT: {"site_id", "resident_id"}, BY_ALERT: {"alert_id"}, BY_ALERT_MSG: {"msg_id"}}


def _tables(store: StateStore) -> list[tuple[str, str, bool]]:
    """:data:`RESIDENT_TABLES` that exist in this state store. A listed table without the
    columns its clause needs is an error (an erasure must not skip it silently)."""
    out = []
    for table, where, exported in RESIDENT_TABLES:
        try:
            cols = store._columns(table)
        except Exception:  # no such table here (sqlite3 and psycopg raise different errors)
            continue
        missing = _NEEDS.get(where, set()) - cols
        if missing:
            raise PrivacyError(f"table {table} is listed in RESIDENT_TABLES but has no {', '.join(sorted(missing))} "
                               "column: fix its entry in gateway/privacy.py")
        out.append((table, where, exported))
    return out


def _wearables(store: StateStore, site_id: str, resident_id: str) -> list[tuple[str, int, int | None]]:
    try:
        rows = store._select("SELECT device_id, from_ms, to_ms FROM reg_assignments WHERE " + BY_RESIDENT
                             + " ORDER BY id", (site_id, resident_id))
    except Exception:  # no registry on this gateway
        return []
    return [(str(r["device_id"]), int(r["from_ms"]), None if r["to_ms"] is None else int(r["to_ms"])) for r in rows]


class Privacy:
    """Export and erasure of one resident, over the state store and the series store."""

    def __init__(self, store: StateStore, influx: InfluxConfig | None,
                 spool_dir: Path | list[Path] | None = None, wait_s: float | None = None) -> None:
        self.store = store
        self.influx = influx
        #: the spools on this machine (a pool's workers have one each)
        self.spool_dirs = [] if spool_dir is None else [Path(spool_dir)] if not isinstance(spool_dir, list) \
            else [Path(d) for d in spool_dir]
        self.wait_s = wait_s

    def setup(self) -> None:
        _ensure_schema(self.store)

    def site_of(self, resident_id: str, site_id: str | None = None) -> str | None:
        """The site of a resident id: ``site_id`` if given, else the one site that knows the id
        (None: no site does); several sites → PrivacyError (say which)."""
        if site_id:
            return site_id
        sites: set[str] = set()
        for table in ("reg_residents", "alerts", "privacy_pseudonyms"):
            try:
                sites |= {str(r["site_id"]) for r in self.store._select(
                    f"SELECT DISTINCT site_id FROM {table} WHERE resident_id = ?", (resident_id,))}
            except Exception:  # no such table
                continue
        if len(sites) > 1:
            raise PrivacyError(f"resident id {resident_id!r} exists at sites {', '.join(sorted(sites))}: give --site")
        return next(iter(sites), None)

    def known(self, site_id: str, resident_id: str) -> bool:
        """Whether the gateway holds anything about the resident (registry or alerts)."""
        for table in ("reg_residents", "alerts"):
            try:
                if self.store._select(f"SELECT 1 AS x FROM {table} WHERE {BY_RESIDENT} LIMIT 1",
                                      (site_id, resident_id)):
                    return True
            except Exception:  # no such table
                continue
        return False

    def _audit(self, actor: str, action: str, site_id: str, resident_id: str, detail: dict[str, Any]) -> str:
        pseudo = pseudonym(self.store, site_id, resident_id)
        with self.store._tx() as cur:
            self.store._append_audit(cur, "privacy_log", (c.now_ms(), actor, action, f"{site_id}/{pseudo}",
                                                          json.dumps(detail, sort_keys=True)))
        return pseudo

    def export(self, site_id: str, resident_id: str, actor: str) -> dict[str, Any]:
        """Everything the gateway holds about the resident, as one JSON-able document; the
        export itself is audited (who, when, which pseudonym, how much)."""
        if not self.known(site_id, resident_id):
            raise PrivacyError(f"the gateway holds nothing about resident {resident_id!r} at site {site_id}")
        doc: dict[str, Any] = {"format": EXPORT_FORMAT, "exported_ms": c.now_ms(), "exported_by": actor,
                               "site_id": site_id, "resident_id": resident_id}
        tables = {t: w for t, w, exported in _tables(self.store) if exported}
        rows = {t: self.store._select(f"SELECT * FROM {t} WHERE {w}", (site_id, resident_id))
                for t, w in tables.items()}
        registered = rows.pop("reg_residents", [])
        doc["resident"] = registered[0] if registered else None
        doc["device_assignments"] = rows.pop("reg_assignments", [])
        alerts = rows.pop("alerts", [])
        deliveries = rows.pop("deliveries", [])
        pages = {p["alert_id"]: p for p in rows.pop("pages", [])}
        for a in alerts:
            a["trail"] = self.store.audit(str(a["alert_id"]))
            a["deliveries"] = [d for d in deliveries if d["alert_id"] == a["alert_id"]]
            a["page"] = pages.get(a["alert_id"])
        doc["alerts"] = sorted(alerts, key=lambda a: int(a["raised_ms"]))
        doc.update(rows)  # further tables (e.g. resident_actions) under their own names
        series: dict[str, Any] = {}
        if self.influx is not None:
            try:
                for m in RESIDENT_MEASUREMENTS:
                    series[m] = series_points(self.influx, site_id, resident_id, m)
            except SinkError as exc:
                raise StoreUnavailable(f"series store unavailable ({exc}); nothing exported, try again") from None
        doc["risk_scores"] = [{"time_ms": p["time"], "day": p.get("day"), "score": p.get("score"),
                               "level": p.get("level"), "model": p.get("model"),
                               "factors": {k[8:]: v for k, v in p.items() if k.startswith("contrib_")}}
                              for p in series.get("risk", [])]
        doc["series"] = {"fall_alert": series.get("fall_alert", [])}
        counts = {"alerts": len(alerts), "deliveries": len(deliveries), "risk_scores": len(doc["risk_scores"]),
                  "assignments": len(doc["device_assignments"])}
        doc["pseudonym"] = self._audit(actor, "resident.export", site_id, resident_id, counts)
        return doc

    def erase(self, site_id: str, resident_id: str, actor: str) -> dict[str, Any]:
        """Erase the resident everywhere (docs/privacy.md): tombstone, wait for every replica
        to see it, the series store, the local spool, then every state-store table in one
        transaction with its audit row. Idempotent: a second run finds nothing and says so."""
        _ensure_schema(self.store)
        now = c.now_ms()
        key = subject_key(self.store)
        subject = subject_hash(key, site_id, resident_id)
        before = self.store._select("SELECT pseudonym, sensors FROM privacy_erasures WHERE subject = ? ORDER BY id",
                                    (subject,))
        # a re-run names them as the first run did (and makes no new link from id to pseudonym)
        pseudo = str(before[0]["pseudonym"]) if before else pseudonym(self.store, site_id, resident_id)
        wearables = _wearables(self.store, site_id, resident_id)
        for r in before:
            # a re-run (another machine's spool, a store that was down) still knows what they wore
            wearables += [w for w in (tuple(x) for x in json.loads(r["sensors"])) if w not in wearables]
        with self.store._tx() as cur:
            self.store._exec(cur, "INSERT INTO privacy_erasures (subject, site_id, pseudonym, erased_ms, sensors) "
                                  "VALUES (?, ?, ?, ?, ?)",
                             (subject, site_id, pseudo, now, json.dumps(wearables)))
        time.sleep(ERASE_WAIT_S if self.wait_s is None else self.wait_s)  # every replica has re-read the tombstones
        try:
            series = erase_series(self.influx, site_id, resident_id, wearables, c.now_ms()) if self.influx else {}
        except SinkError as exc:
            raise StoreUnavailable(f"series store unavailable ({exc}): nothing was deleted from the state store yet; "
                                   "their new data is dropped already (tombstone); run the erasure again") from None
        spooled = sum(self._erase_spool(d, site_id, resident_id, wearables, now) for d in self.spool_dirs)
        counts: dict[str, int] = {}
        tables = _tables(self.store)  # before the transaction: a failed probe would abort it on PostgreSQL
        with self.store._tx() as cur:
            self.store.dialect.lock_chain(cur, "privacy_log")  # two replicas erasing at once: one after the other
            for table, where, _ in tables:
                self.store._exec(cur, f"DELETE FROM {table} WHERE {where}", (site_id, resident_id))
                counts[table] = int(cur.rowcount or 0)
            detail = {"state": counts, "series": series, "spool_points": spooled, "wearables": len(wearables)}
            self.store._append_audit(cur, "privacy_log", (c.now_ms(), actor, "resident.erase",
                                                          f"{site_id}/{pseudo}", json.dumps(detail, sort_keys=True)))
        return {"site_id": site_id, "pseudonym": pseudo, "erased_ms": now, **detail}

    def _erase_spool(self, spool_dir: Path, site_id: str, resident_id: str,
                     wearables: list[tuple[str, int, int | None]], now: int) -> int:
        """Points of the resident in a spool on this machine (another machine's spool is covered
        by the tombstone: its drainer drops them). A batch is rewritten, never deleted, even when
        nothing is left in it: a running gateway's spool keeps counts of its batches, which heal
        when the spool empties but would stay off forever for a batch removed behind its back."""
        if not (spool_dir / "spool.sqlite").exists():
            return 0
        import sqlite3

        import msgspec

        dec = msgspec.msgpack.Decoder(list[tuple[str, dict[str, str], dict[str, Any], int]])
        enc = msgspec.msgpack.Encoder()
        db = sqlite3.connect(spool_dir / "spool.sqlite", timeout=30, isolation_level=None)
        dropped = 0
        try:
            db.execute("BEGIN IMMEDIATE")
            for bid, body in db.execute("SELECT id, body FROM batches").fetchall():
                pts = dec.decode(body)
                keep = [p for p in pts if not (
                    (p[0] in RESIDENT_MEASUREMENTS and p[1].get("site_id") == site_id
                     and p[2].get("resident_id") == resident_id and p[3] <= now)
                    or (p[0] in WEARABLE_MEASUREMENTS and p[1].get("site_id") == site_id and any(
                        p[1].get("sensor") == s and a <= p[3] <= (b if b is not None else now)
                        for s, a, b in wearables)))]
                if len(keep) == len(pts):
                    continue
                dropped += len(pts) - len(keep)
                new = enc.encode(keep)
                db.execute("UPDATE batches SET n = ?, nbytes = ?, body = ? WHERE id = ?",
                           (len(keep), len(new), new, bid))
            db.execute("COMMIT")
        except sqlite3.Error:
            db.execute("ROLLBACK")
            raise
        finally:
            db.close()
        return dropped


# ------------------------------------------------------------------ the audit logs, for an admin

#: the audit tables an admin reads, and how each row becomes (at_ms, actor, action, subject, detail)
AUDIT_VIEWS: dict[str, str] = {
    "access": "SELECT id, at_ms, actor, method || ' ' || path AS action, role AS subject, "
              "CAST(status AS TEXT) || ' ' || COALESCE(client, '') AS detail FROM access_log",
    "alert": "SELECT id, at_ms, actor, action, alert_id AS subject, detail FROM alert_log",
    "registry": "SELECT id, at_ms, actor, action, subject, detail FROM reg_log",
    "privacy": "SELECT id, at_ms, actor, action, subject, detail FROM privacy_log",
}


def audit_entries(store: StateStore, *, log: str | None = None, actor: str | None = None,
                  action: str | None = None, since_ms: int | None = None, until_ms: int | None = None,
                  limit: int = 500) -> list[dict[str, Any]]:
    """Rows of the audit logs, newest first, filtered (actor exact, action a substring)."""
    out: list[dict[str, Any]] = []
    for name, q in AUDIT_VIEWS.items():
        if log and log != name:
            continue
        where, args = [], list[Any]()
        if actor:
            where.append("actor = ?")
            args.append(actor)
        if action:
            where.append("LOWER(action) LIKE ?")
            args.append(f"%{action.lower()}%")
        if since_ms is not None:
            where.append("at_ms >= ?")
            args.append(since_ms)
        if until_ms is not None:
            where.append("at_ms <= ?")
            args.append(until_ms)
        sql = f"SELECT * FROM ({q}) v" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY id DESC LIMIT ?"
        try:
            rows = store._select(sql, (*args, limit))
        except Exception:  # that log does not exist on this gateway (no registry)
            continue
        out.extend({"log": name, **r} for r in rows)
    out.sort(key=lambda r: (-int(r["at_ms"]), r["log"], -int(r["id"])))
    return out[:limit]


def audit_csv(rows: list[dict[str, Any]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["log", "id", "at_ms", "actor", "action", "subject", "detail"])
    for r in rows:
        w.writerow([r["log"], r["id"], r["at_ms"], r["actor"], r["action"], r["subject"], r["detail"]])
    return buf.getvalue()
