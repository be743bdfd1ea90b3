"""The provisioning registry: which hub, wearable and room sensor belongs where, who wears
what, who the residents are, and which broker identities may connect (docs/provisioning.md).

It lives in the gateway's state store (SQLite or PostgreSQL, the same :class:`StateStore`
dialects and transactions) in tables of its own, created by :meth:`Registry.setup`, so the
ingest path's tables are untouched:

* ``reg_devices``     — one row per device id: kind (hub, wearable, sensor, gateway), site,
  home, the hub a wearable or sensor belongs to, room, status (active, pending, revoked,
  retired), certificate expiry;
* ``reg_credentials`` — broker users and their password hashes in Mosquitto's own
  ``$7$`` format (PBKDF2-SHA512): the plaintext exists only in the enrolment bundle (or the
  0600 file of a gateway), never in the database, so the broker's password file can be
  regenerated from here at any time;
* ``reg_residents``   — display name, flat, team, next of kin (personal data: the CLI shows
  it only on request, and every such read is audited), erased on removal;
* ``reg_assignments`` — wearable → resident with from/to times, never rewritten, so
  "who wore wear-7 at 03:12" has an answer after a reassignment;
* ``reg_bundles``     — one-time enrolment codes: only a hash of the code, the expiry, when it
  was used, the pending credential hash and the bundle encrypted under the code;
* ``reg_log``         — append-only, hash-chained audit of every change, through the state
  store's own audit mechanism (``fallwatch gateway audit-verify`` checks it too).

Why the broker enforcement is generated from here and reloaded with SIGHUP (not dynamic
security): Mosquitto 2.0 re-reads the password and ACL files on SIGHUP and disconnects any
connected client whose credentials no longer verify, without touching the others, so a
revocation is effective in well under a second, and the files are plain text an operator can
read and diff.
"""

from __future__ import annotations

import base64
import contextlib
import grp
import hashlib
import json
import os
import secrets
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fallwatch.gateway import brokerconf
from fallwatch.gateway.privacy import pseudonym
from fallwatch.gateway.state import StateStore
from fallwatch.protocol import contract as c
from fallwatch.protocol.enrolment import BundleError, code_id, seal, unseal
from fallwatch.protocol.ids import ID_RE

KINDS = ("hub", "wearable", "sensor", "gateway")
SENSOR_KINDS = ("pir", "bed", "chair", "door", "bathroom")
#: the chained columns of ``reg_log`` (see ``StateStore._append_audit``)
LOG_FIELDS = ("at_ms", "actor", "action", "subject", "detail")
#: resident fields that are personal data (shown only with ``personal=True``)
PERSONAL = ("name", "flat", "next_of_kin")
#: PBKDF2 iterations of the password hashes: mosquitto_passwd 2.0's default. The passwords are
#: 24 random bytes, so the count protects nothing a guess could find; the broker pays it per CONNECT.
HASH_ITERATIONS = 101

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS reg_devices (
        device_id TEXT PRIMARY KEY, kind TEXT NOT NULL, site_id TEXT NOT NULL, home_id TEXT,
        hub_id TEXT, room TEXT, sensor_kind TEXT, status TEXT NOT NULL,
        cert_not_after_ms BIGINT, cert_serial TEXT, created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS reg_credentials (
        username TEXT PRIMARY KEY, device_id TEXT NOT NULL, hash TEXT NOT NULL, created_ms BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS reg_residents (
        site_id TEXT NOT NULL, resident_id TEXT NOT NULL, home_id TEXT, name TEXT, flat TEXT,
        team TEXT, next_of_kin TEXT, status TEXT NOT NULL, created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL, PRIMARY KEY (site_id, resident_id))""",
    """CREATE TABLE IF NOT EXISTS reg_assignments (
        id {autoinc}, device_id TEXT NOT NULL, site_id TEXT NOT NULL, resident_id TEXT NOT NULL,
        from_ms BIGINT NOT NULL, to_ms BIGINT)""",
    """CREATE TABLE IF NOT EXISTS reg_bundles (
        code_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, created_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL, used_ms BIGINT, void_ms BIGINT, creds TEXT NOT NULL,
        sealed TEXT NOT NULL, cert_serial TEXT, cert_not_after_ms BIGINT)""",
    """CREATE TABLE IF NOT EXISTS reg_log (
        id {autoinc}, at_ms BIGINT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        subject TEXT NOT NULL, detail TEXT, chain TEXT)""",
]


def config_user(gateway: str) -> str:
    """The broker user with which `fallwatch device push-config` sets hubs' desired config."""
    return f"{gateway}-config"


class RegistryError(ValueError):
    """A request the registry refuses (unknown device, wrong kind, bad id, used bundle …)."""


def mosquitto_hash(password: str, *, salt: bytes | None = None, iterations: int = HASH_ITERATIONS) -> str:
    """A password hash in Mosquitto 2.0's own ``$7$`` format (PBKDF2-SHA512, what
    ``mosquitto_passwd`` writes), computed here so no password ever reaches a command line."""
    salt = salt if salt is not None else os.urandom(12)
    dk = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(dk).decode()}"


def check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise RegistryError(f"invalid {what} {value!r}: must match [a-z0-9][a-z0-9-]* (max 63 chars)")
    return value


@dataclass
class BrokerFiles:
    """Where the generated broker config goes and how the running broker is told."""

    out: Path
    gateways: list[str]
    tls_dir: str
    data_dir: str = "/var/lib/mosquitto"
    plain_port: int | None = 1883
    tls_port: int | None = 8883
    pid_file: Path | None = None
    log_file: str | None = None
    client_certs: bool = False
    #: prepended to mosquitto.conf (e.g. ``user root`` for a test broker)
    preamble: str = ""


class Registry:
    """Provisioning records in a :class:`StateStore`, every change audited in ``reg_log``."""

    def __init__(self, store: StateStore, *, now_ms: Any = None) -> None:
        self.store = store
        self._now = now_ms or c.now_ms

    # ------------------------------------------------------------ plumbing
    def setup(self) -> None:
        st = self.store
        st.create_tables(_SCHEMA)  # under the schema lock: replicas start together on a fresh PostgreSQL
        with st._tx() as cur:
            st.lock_schema(cur)
            for stmt in st.dialect.append_only("reg_log"):
                cur.execute(stmt)

    def _audit(self, cur: Any, actor: str, action: str, subject: str, detail: Any = None) -> None:
        text = None if detail is None else (detail if isinstance(detail, str) else json.dumps(detail, sort_keys=True))
        self.store._append_audit(cur, "reg_log", (self._now(), actor, action, subject, text), LOG_FIELDS)

    def _one(self, q: str, args: tuple[Any, ...]) -> dict[str, Any] | None:
        rows = self.store._select(q, args)
        return rows[0] if rows else None

    def note(self, actor: str, action: str, subject: str, detail: Any = None) -> None:
        """Audit something done outside the registry's tables (e.g. a config pushed to a hub)."""
        with self.store._tx() as cur:
            self._audit(cur, actor, action, subject, detail)

    def log(self, subject: str | None = None) -> list[dict[str, Any]]:
        if subject:
            return self.store._select("SELECT * FROM reg_log WHERE subject = ? ORDER BY id", (subject,))
        return self.store._select("SELECT * FROM reg_log ORDER BY id")

    def verify(self) -> dict[str, dict[str, Any]]:
        return self.store.verify_audit({"reg_log": LOG_FIELDS})

    # ------------------------------------------------------------ devices
    def device(self, device_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM reg_devices WHERE device_id = ?", (device_id,))

    def _need(self, device_id: str, *kinds: str) -> dict[str, Any]:
        d = self.device(device_id)
        if d is None:
            raise RegistryError(f"no device {device_id!r} in the registry")
        if kinds and d["kind"] not in kinds:
            raise RegistryError(f"{device_id} is a {d['kind']}, not a {' or '.join(kinds)}")
        if d["status"] == "retired":
            raise RegistryError(f"{device_id} is retired")
        return d

    def add_device(self, device_id: str, kind: str, *, actor: str, site_id: str | None = None,
                   home_id: str | None = None, hub_id: str | None = None, room: str | None = None,
                   sensor_kind: str | None = None) -> dict[str, Any]:
        """Register a device. A hub needs a site (and a home, default = the site); a wearable
        or sensor needs its hub (site and home follow it), a sensor its room and kind; a
        gateway is site-less. Hubs start ``pending`` (no broker access until their
        enrolment code is redeemed), the others ``active``."""
        check_id(device_id, "device id")
        if kind not in KINDS:
            raise RegistryError(f"unknown kind {kind!r} (one of {', '.join(KINDS)})")
        if self.device(device_id) is not None:
            raise RegistryError(f"device id {device_id!r} is already registered (ids are broker user names: "
                                f"unique across all sites, also after retirement)")
        status = "active"
        if kind == "gateway":
            site_id, home_id, hub_id = "*", None, None
        elif kind == "hub":
            if not site_id:
                raise RegistryError("a hub needs --site")
            check_id(site_id, "site id")
            home_id = check_id(home_id, "home id") if home_id else site_id
            hub_id, status = None, "pending"
        else:
            if not hub_id:
                raise RegistryError(f"a {kind} needs --hub")
            hub = self._need(hub_id, "hub")
            if site_id and site_id != hub["site_id"]:
                raise RegistryError(f"hub {hub_id} is at site {hub['site_id']}, not {site_id}")
            site_id, home_id = hub["site_id"], hub["home_id"]
        if kind == "sensor":
            if sensor_kind not in SENSOR_KINDS:
                raise RegistryError(f"a sensor needs --sensor-kind (one of {', '.join(SENSOR_KINDS)})")
            if not room:
                raise RegistryError("a sensor needs --room")
            check_id(room, "room")
        elif room or sensor_kind:
            raise RegistryError("--room and --sensor-kind are for sensors")
        for user in ((brokerconf.alert_user(device_id), config_user(device_id)) if kind == "gateway" else (device_id,)):
            if self._users_taken(user) or self.device(user) is not None:
                raise RegistryError(f"broker user {user} already exists")
        now = self._now()
        with self.store._tx() as cur:
            self.store._exec(
                cur,
                "INSERT INTO reg_devices (device_id, kind, site_id, home_id, hub_id, room, sensor_kind, status, "
                "created_ms, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (device_id, kind, site_id, home_id, hub_id, room, sensor_kind, status, now, now))
            self._audit(cur, actor, "device.add", device_id,
                        {"kind": kind, "site": site_id, "home": home_id, "hub": hub_id, "room": room,
                         "sensor_kind": sensor_kind})
        return self._need(device_id)

    def _users_taken(self, user: str) -> str | None:
        row = self._one("SELECT username FROM reg_credentials WHERE username = ?", (user,))
        return str(row["username"]) if row else None

    def devices(self, site_id: str | None = None, kind: str | None = None, hub_id: str | None = None,
                status: str | None = None) -> list[dict[str, Any]]:
        q, args = "SELECT * FROM reg_devices WHERE 1 = 1", list[Any]()
        for col, val in (("site_id", site_id), ("kind", kind), ("hub_id", hub_id), ("status", status)):
            if val:
                q += f" AND {col} = ?"
                args.append(val)
        return self.store._select(q + " ORDER BY site_id, device_id", tuple(args))

    def show(self, device_id: str) -> dict[str, Any]:
        """A device with its parts (a hub's wearables and sensors), its broker users (never a
        hash), its assignment history, its open enrolment codes and its audit trail."""
        d = self.device(device_id)
        if d is None:
            raise RegistryError(f"no device {device_id!r} in the registry")
        out = dict(d)
        out["broker_users"] = [r["username"] for r in self.store._select(
            "SELECT username FROM reg_credentials WHERE device_id = ? ORDER BY username", (device_id,))]
        if d["kind"] == "hub":
            out["parts"] = [{k: p[k] for k in ("device_id", "kind", "room", "sensor_kind", "status")}
                            for p in self.devices(hub_id=device_id)]
        if d["kind"] == "wearable":
            out["assignments"] = self.assignments(device_id)
        now = self._now()
        out["enrolment_codes"] = [
            {"created_ms": b["created_ms"], "expires_ms": b["expires_ms"], "used_ms": b["used_ms"],
             "state": _bundle_state(b, now)}
            for b in self.store._select("SELECT * FROM reg_bundles WHERE device_id = ? ORDER BY created_ms",
                                        (device_id,))]
        na = d.get("cert_not_after_ms")
        out["cert_expires_in_days"] = None if na is None else round((na - now) / 86_400_000, 1)
        out["log"] = [{k: r[k] for k in ("at_ms", "actor", "action", "detail")} for r in self.log(device_id)]
        return out

    def move(self, device_id: str, *, actor: str, site_id: str | None = None, home_id: str | None = None,
             hub_id: str | None = None, room: str | None = None) -> dict[str, Any]:
        """A hub to another site/home (its parts follow); a wearable or sensor to another hub
        (and site) or a sensor to another room. A wearable moved away from its resident's
        site is unassigned."""
        d = self._need(device_id, "hub", "wearable", "sensor")
        changes: dict[str, Any] = {}
        now = self._now()
        with self.store._tx() as cur:
            ex = self.store._exec
            if d["kind"] == "hub":
                if hub_id or room:
                    raise RegistryError("a hub moves with --site/--home only")
                new_site = check_id(site_id, "site id") if site_id else d["site_id"]
                new_home = check_id(home_id, "home id") if home_id else (new_site if site_id else d["home_id"])
                changes = {"site": [d["site_id"], new_site], "home": [d["home_id"], new_home]}
                ex(cur, "UPDATE reg_devices SET site_id = ?, home_id = ?, updated_ms = ? "
                   "WHERE device_id = ? OR hub_id = ?", (new_site, new_home, now, device_id, device_id))
                if new_site != d["site_id"]:
                    self._close_assignments(cur, now, hub_id=device_id)
            else:
                if site_id or home_id:
                    raise RegistryError(f"a {d['kind']} follows its hub: move it with --hub")
                new_hub = d["hub_id"]
                if hub_id:
                    new_hub = self._need(hub_id, "hub")["device_id"]
                hub = self._need(new_hub, "hub")
                new_room = d["room"]
                if room:
                    if d["kind"] != "sensor":
                        raise RegistryError("only a sensor has a room")
                    new_room = check_id(room, "room")
                changes = {"hub": [d["hub_id"], new_hub], "room": [d["room"], new_room]}
                ex(cur, "UPDATE reg_devices SET hub_id = ?, site_id = ?, home_id = ?, room = ?, updated_ms = ? "
                   "WHERE device_id = ?", (new_hub, hub["site_id"], hub["home_id"], new_room, now, device_id))
                if hub["site_id"] != d["site_id"]:
                    self._close_assignments(cur, now, device_id=device_id)
            self._audit(cur, actor, "device.move", device_id, changes)
        return self._need(device_id)

    def assign(self, device_id: str, resident_id: str | None, *, actor: str) -> dict[str, Any]:
        """Give a wearable to a resident of its site (None = take it back). The previous
        assignment is closed, not overwritten: history keeps who wore it when."""
        d = self._need(device_id, "wearable")
        if resident_id is not None:
            r = self.resident(d["site_id"], resident_id)
            if r is None or r["status"] != "active":
                raise RegistryError(f"no active resident {resident_id!r} at site {d['site_id']}")
        now = self._now()
        who = self._who(d["site_id"], resident_id)  # before the transaction: a read ends one on PostgreSQL
        with self.store._tx() as cur:
            self._close_assignments(cur, now, device_id=device_id)
            if resident_id is not None:
                self.store._exec(cur, "INSERT INTO reg_assignments (device_id, site_id, resident_id, from_ms) "
                                      "VALUES (?, ?, ?, ?)", (device_id, d["site_id"], resident_id, now))
            self._audit(cur, actor, "device.assign", device_id, {"resident": who})
        return self.show(device_id)

    def _who(self, site_id: str, resident_id: str | None) -> str | None:
        """How the audit log names a resident: their pseudonym, never their id (it must survive
        their erasure without naming them: gateway/privacy.py)."""
        return None if resident_id is None else pseudonym(self.store, site_id, resident_id)

    def _close_assignments(self, cur: Any, now: int, *, device_id: str | None = None, hub_id: str | None = None,
                           site_id: str | None = None, resident_id: str | None = None) -> None:
        ex = self.store._exec
        if device_id:
            ex(cur, "UPDATE reg_assignments SET to_ms = ? WHERE device_id = ? AND to_ms IS NULL", (now, device_id))
        if hub_id:
            ex(cur, "UPDATE reg_assignments SET to_ms = ? WHERE to_ms IS NULL AND device_id IN "
                    "(SELECT device_id FROM reg_devices WHERE hub_id = ?)", (now, hub_id))
        if site_id and resident_id:
            ex(cur, "UPDATE reg_assignments SET to_ms = ? WHERE site_id = ? AND resident_id = ? AND to_ms IS NULL",
               (now, site_id, resident_id))

    def assignments(self, device_id: str) -> list[dict[str, Any]]:
        return self.store._select("SELECT resident_id, site_id, from_ms, to_ms FROM reg_assignments "
                                  "WHERE device_id = ? ORDER BY id", (device_id,))

    def wearer(self, device_id: str, at_ms: int | None = None) -> str | None:
        """Who wore a wearable at ``at_ms`` (now if None): past alerts keep their resident."""
        t = self._now() if at_ms is None else at_ms
        row = self._one("SELECT resident_id FROM reg_assignments WHERE device_id = ? AND from_ms <= ? "
                        "AND (to_ms IS NULL OR to_ms > ?) ORDER BY id DESC LIMIT 1", (device_id, t, t))
        return str(row["resident_id"]) if row else None

    def revoke(self, device_id: str, *, actor: str, reason: str = "") -> dict[str, Any]:
        """Take a device's broker access away now (lost, stolen, compromised): its users are
        deleted and its open enrolment codes voided; a new bundle brings it back."""
        d = self._need(device_id, "hub", "gateway")
        now = self._now()
        with self.store._tx() as cur:
            self.store._exec(cur, "DELETE FROM reg_credentials WHERE device_id = ?", (device_id,))
            self.store._exec(cur, "UPDATE reg_bundles SET void_ms = ? WHERE device_id = ? AND used_ms IS NULL "
                                  "AND void_ms IS NULL", (now, device_id))
            self.store._exec(cur, "UPDATE reg_devices SET status = 'revoked', cert_serial = NULL, updated_ms = ? "
                                  "WHERE device_id = ?", (now, device_id))
            self._audit(cur, actor, "device.revoke", device_id, {"reason": reason, "was": d["status"]})
        return self._need(device_id)

    def retire(self, device_id: str, *, actor: str) -> dict[str, Any]:
        """End of life: no broker access, assignments closed, the record and its history kept
        (the id is never reused, so old alerts stay unambiguous)."""
        d = self._need(device_id)
        now = self._now()
        with self.store._tx() as cur:
            ex = self.store._exec
            ex(cur, "DELETE FROM reg_credentials WHERE device_id = ?", (device_id,))
            ex(cur, "UPDATE reg_bundles SET void_ms = ? WHERE device_id = ? AND used_ms IS NULL AND void_ms IS NULL",
               (now, device_id))
            self._close_assignments(cur, now, device_id=device_id)
            ex(cur, "UPDATE reg_devices SET status = 'retired', cert_serial = NULL, updated_ms = ? WHERE device_id = ?",
               (now, device_id))
            if d["kind"] == "hub":  # its parts stay registered but unattached
                ex(cur, "UPDATE reg_devices SET hub_id = NULL, updated_ms = ? WHERE hub_id = ?", (now, device_id))
            self._audit(cur, actor, "device.retire", device_id, {"was": d["status"]})
        return self.device(device_id) or {}

    def gateway_credentials(self, device_id: str, *, actor: str) -> dict[str, str]:
        """New passwords for a gateway's three broker users — bulk link, alert link and the
        provisioning tools' ``{id}-config`` (:func:`config_user`: a tool connecting as the
        gateway's own user would take over the running gateway's session) — effective at the
        next broker sync; returned once, stored only as hashes."""
        self._need(device_id, "gateway")
        creds = {u: secrets.token_urlsafe(24)
                 for u in (device_id, brokerconf.alert_user(device_id), config_user(device_id))}
        now = self._now()
        with self.store._tx() as cur:
            self._set_credentials(cur, device_id, {u: mosquitto_hash(p) for u, p in creds.items()}, now)
            self.store._exec(cur, "UPDATE reg_devices SET status = 'active', updated_ms = ? WHERE device_id = ?",
                             (now, device_id))
            self._audit(cur, actor, "device.credentials", device_id, {"users": sorted(creds)})
        return creds

    def _set_credentials(self, cur: Any, device_id: str, hashes: dict[str, str], now: int) -> None:
        self.store._exec(cur, "DELETE FROM reg_credentials WHERE device_id = ?", (device_id,))
        for user, h in hashes.items():
            self.store._exec(cur, "INSERT INTO reg_credentials (username, device_id, hash, created_ms) "
                                  "VALUES (?, ?, ?, ?)", (user, device_id, h, now))

    def revoked_serials(self) -> list[str]:
        """Every client certificate the CA issued (one per bundle) that is not an active
        device's current one: superseded, from an unused, voided or expired bundle, or of a
        revoked or retired device. The CRL lists them all, so a certificate is as inert as
        its bundle's password until the code is redeemed."""
        issued = {r["cert_serial"] for r in self.store._select(
            "SELECT cert_serial FROM reg_bundles WHERE cert_serial IS NOT NULL")}
        current = {r["cert_serial"] for r in self.store._select(
            "SELECT cert_serial FROM reg_devices WHERE status = 'active' AND cert_serial IS NOT NULL")}
        return sorted(issued - current)

    def expiring_certs(self, within_days: float = 30.0) -> list[dict[str, Any]]:
        """Devices whose client certificate expires within ``within_days`` (or has), for health."""
        limit = self._now() + int(within_days * 86_400_000)
        return self.store._select("SELECT device_id, site_id, cert_not_after_ms FROM reg_devices WHERE "
                                  "cert_not_after_ms IS NOT NULL AND cert_not_after_ms < ? AND status != 'retired' "
                                  "ORDER BY cert_not_after_ms", (limit,))

    # ------------------------------------------------------------ enrolment bundles
    def create_bundle(self, device_id: str, *, actor: str, broker_url: str, enrol_url: str, ttl_s: float,
                      ca_pem: str | None = None, model_pubkeys: tuple[str, ...] = (),
                      client_cert: tuple[str, str] | None = None) -> tuple[dict[str, Any], str]:
        """Everything a hub needs, with a fresh credential that is inert until the one-time
        code is redeemed (:meth:`redeem`), which must happen before ``ttl_s`` runs out. A
        newer bundle voids the older unused ones. The hub's current credential (a rotation)
        keeps working until then, so a routine rotation never cuts a hub off early."""
        d = self._need(device_id, "hub")
        serial, not_after = None, None
        if client_cert is not None:  # the CA has signed it already: the CRL keeps it dead until redemption
            from fallwatch.gateway import pki

            serial, not_after = pki.serial(client_cert[0]), int(pki.expiry(client_cert[0]).timestamp() * 1000)
        code = secrets.token_urlsafe(24)
        password = secrets.token_urlsafe(24)
        now = self._now()
        expires = now + int(ttl_s * 1000)
        bundle = {
            "fallwatch_bundle": 1,
            "site_id": d["site_id"],
            "device_id": device_id,
            "home_id": d["home_id"],
            "broker_url": broker_url,
            "username": device_id,
            "password": password,
            "ca_pem": ca_pem,
            "client_cert_pem": client_cert[0] if client_cert else None,
            "client_key_pem": client_cert[1] if client_cert else None,
            "model_pubkeys": list(model_pubkeys),
            "edge": self.hub_config(device_id),
            "enrol_url": enrol_url,
            "code": code,
            "expires_ms": expires,
        }
        with self.store._tx() as cur:
            ex = self.store._exec
            ex(cur, "UPDATE reg_bundles SET void_ms = ? WHERE device_id = ? AND used_ms IS NULL AND void_ms IS NULL",
               (now, device_id))
            ex(cur, "INSERT INTO reg_bundles (code_id, device_id, created_ms, expires_ms, creds, sealed, cert_serial, "
                    "cert_not_after_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
               (code_id(code), device_id, now, expires, json.dumps({device_id: mosquitto_hash(password)}),
                seal(code, bundle), serial, not_after))
            self._audit(cur, actor, "bundle.create", device_id,
                        {"expires_ms": expires, **({"client_cert": serial} if serial else {})})
        return bundle, code

    def redeem(self, code: str, *, actor: str = "device") -> dict[str, Any]:
        """Use a one-time code: activates the bundle's credential (the old one, if any, stops
        working at the next broker sync) and returns the bundle. Raises RegistryError for an
        unknown, used, voided or expired code — the bundle's credential then never works."""
        cid = code_id(code)
        now = self._now()
        with self.store._tx() as cur:
            ex = self.store._exec
            ex(cur, "UPDATE reg_bundles SET used_ms = ? WHERE code_id = ? AND used_ms IS NULL AND void_ms IS NULL "
                    "AND expires_ms > ?", (now, cid, now))
            won = bool(cur.rowcount)
            ex(cur, "SELECT device_id, creds, sealed, used_ms, void_ms, expires_ms, cert_serial, cert_not_after_ms "
                    "FROM reg_bundles WHERE code_id = ?", (cid,))
            row = cur.fetchone()
            if row is None:
                raise RegistryError("unknown enrolment code")
            device_id, creds, sealed = row[0], row[1], row[2]
            if not won:
                state = _bundle_state({"used_ms": row[3], "void_ms": row[4], "expires_ms": row[5]}, now)
                self._audit(cur, actor, "bundle.refused", device_id, {"why": state})
                why = f"enrolment code {state}"
            else:
                ex(cur, "SELECT status FROM reg_devices WHERE device_id = ?", (device_id,))
                st = cur.fetchone()
                if st is None or st[0] == "retired":
                    raise RegistryError(f"device {device_id} is retired")
                self._set_credentials(cur, device_id, json.loads(creds), now)
                ex(cur, "UPDATE reg_devices SET status = 'active', updated_ms = ? WHERE device_id = ?",
                   (now, device_id))
                if row[6] is not None:  # its client certificate becomes the one (the previous one is now revoked)
                    ex(cur, "UPDATE reg_devices SET cert_serial = ?, cert_not_after_ms = ? WHERE device_id = ?",
                       (row[6], row[7], device_id))
                self._audit(cur, actor, "bundle.redeem", device_id, None)
                why = ""
        if why:  # committed: the refusal is in the audit log
            raise RegistryError(why)
        try:
            return unseal(code, sealed)
        except BundleError as exc:
            raise RegistryError(str(exc)) from exc

    def hub_config(self, device_id: str) -> dict[str, Any]:
        """The ``[edge]`` section of a hub from the registry: ids, its wearables with their
        current wearer, its room sensors."""
        d = self._need(device_id, "hub")
        parts = [p for p in self.devices(hub_id=device_id) if p["status"] == "active"]
        return {
            "site_id": d["site_id"],
            "device_id": device_id,
            "wearables": [{"id": p["device_id"], **({"resident_id": w} if (w := self.wearer(p["device_id"])) else {})}
                          for p in parts if p["kind"] == "wearable"],
            "room_sensors": [{"id": p["device_id"], "kind": p["sensor_kind"], "room": p["room"]}
                             for p in parts if p["kind"] == "sensor"],
        }

    # ------------------------------------------------------------ residents
    def add_resident(self, site_id: str, resident_id: str, *, actor: str, name: str | None = None,
                     flat: str | None = None, team: str | None = None, next_of_kin: str | None = None,
                     home_id: str | None = None) -> dict[str, Any]:
        check_id(site_id, "site id")
        check_id(resident_id, "resident id")
        if team:
            check_id(team, "team")
        for what, v in (("name", name), ("flat", flat), ("next of kin", next_of_kin)):
            if v is not None and (len(v) > 200 or any(ord(ch) < 32 or ord(ch) == 127 for ch in v)):
                raise RegistryError(f"{what}: at most 200 characters, no control characters")
        if self.resident(site_id, resident_id) is not None:
            raise RegistryError(f"resident {resident_id} already exists at site {site_id}")
        now = self._now()
        who = self._who(site_id, resident_id)
        with self.store._tx() as cur:
            self.store._exec(
                cur, "INSERT INTO reg_residents (site_id, resident_id, home_id, name, flat, team, next_of_kin, "
                     "status, created_ms, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, 'active', ?, ?)",
                (site_id, resident_id, home_id or site_id, name, flat, team, next_of_kin, now, now))
            # personal data stays out of the audit detail (the log is append-only: it could not be erased)
            self._audit(cur, actor, "resident.add", f"{site_id}/{who}", {"team": team})
        return self.resident(site_id, resident_id) or {}

    def resident(self, site_id: str, resident_id: str) -> dict[str, Any] | None:
        """One resident with all fields (display name, flat, team, next of kin), None if unknown:
        for the notification engine's routing and the console, which apply their own roles."""
        return self._one("SELECT * FROM reg_residents WHERE site_id = ? AND resident_id = ?", (site_id, resident_id))

    def residents(self, team: str | None = None, site_id: str | None = None,
                  include_removed: bool = False) -> list[dict[str, Any]]:
        q, args = "SELECT * FROM reg_residents WHERE 1 = 1", list[Any]()
        if team:
            q += " AND team = ?"
            args.append(team)
        if site_id:
            q += " AND site_id = ?"
            args.append(site_id)
        if not include_removed:
            q += " AND status = 'active'"
        return self.store._select(q + " ORDER BY site_id, resident_id", tuple(args))

    def read_personal(self, actor: str, team: str | None = None, site_id: str | None = None) -> list[dict[str, Any]]:
        """:meth:`residents` for a person, with the read recorded in the audit log."""
        rows = self.residents(team=team, site_id=site_id)
        with self.store._tx() as cur:
            self._audit(cur, actor, "resident.read-personal", site_id or "*",
                        {"team": team, "residents": len(rows)})
        return rows

    def move_resident(self, site_id: str, resident_id: str, *, actor: str, to_site: str | None = None,
                      flat: str | None = None, team: str | None = None, home_id: str | None = None
                      ) -> dict[str, Any]:
        r = self.resident(site_id, resident_id)
        if r is None or r["status"] != "active":
            raise RegistryError(f"no active resident {resident_id!r} at site {site_id}")
        new_site = check_id(to_site, "site id") if to_site else site_id
        if team:
            check_id(team, "team")
        if new_site != site_id and self.resident(new_site, resident_id) is not None:
            raise RegistryError(f"resident id {resident_id} already exists at site {new_site}")
        now = self._now()
        who = self._who(site_id, resident_id)
        with self.store._tx() as cur:
            if new_site != site_id:  # their wearable stays at the old site's hub: take it back
                self._close_assignments(cur, now, site_id=site_id, resident_id=resident_id)
            self.store._exec(
                cur, "UPDATE reg_residents SET site_id = ?, flat = COALESCE(?, flat), team = COALESCE(?, team), "
                     "home_id = COALESCE(?, home_id), updated_ms = ? WHERE site_id = ? AND resident_id = ?",
                (new_site, flat, team, home_id, now, site_id, resident_id))
            if new_site != site_id:  # the pseudonym moves with them
                self.store._exec(cur, "UPDATE privacy_pseudonyms SET site_id = ? WHERE site_id = ? AND resident_id = ?",
                                 (new_site, site_id, resident_id))
            self._audit(cur, actor, "resident.move", f"{site_id}/{who}",
                        {"to_site": new_site, "team": team, "flat_changed": flat is not None})
        return self.resident(new_site, resident_id) or {}

    def remove_resident(self, site_id: str, resident_id: str, *, actor: str) -> None:
        """The resident leaves: personal data erased, wearables taken back; the ids stay so
        past alerts and the assignment history still mean something."""
        r = self.resident(site_id, resident_id)
        if r is None or r["status"] != "active":
            raise RegistryError(f"no active resident {resident_id!r} at site {site_id}")
        now = self._now()
        who = self._who(site_id, resident_id)
        with self.store._tx() as cur:
            self._close_assignments(cur, now, site_id=site_id, resident_id=resident_id)
            self.store._exec(cur, "UPDATE reg_residents SET status = 'removed', name = NULL, flat = NULL, "
                                  "next_of_kin = NULL, updated_ms = ? WHERE site_id = ? AND resident_id = ?",
                             (now, site_id, resident_id))
            self._audit(cur, actor, "resident.remove", f"{site_id}/{who}", None)

    def teams(self) -> list[str]:
        return [r["team"] for r in self.store._select(
            "SELECT DISTINCT team FROM reg_residents WHERE team IS NOT NULL AND status = 'active' ORDER BY team")]

    # ------------------------------------------------------------ broker enforcement
    def broker_users(self) -> dict[str, str]:
        """username → ``$7$`` hash of every active identity (hubs; gateways' two links)."""
        rows = self.store._select(
            "SELECT c.username, c.hash FROM reg_credentials c JOIN reg_devices d ON d.device_id = c.device_id "
            "WHERE d.status = 'active' ORDER BY c.username")
        return {r["username"]: r["hash"] for r in rows}

    def acl(self) -> str:
        """The ACL from the registry: each active gateway's links and each active hub's
        site-literal subtree (:func:`brokerconf.acl_text`); nothing for anyone else."""
        active = [d for d in self.devices(status="active") if d["kind"] in ("hub", "gateway")]
        gateways = [d["device_id"] for d in active if d["kind"] == "gateway"]
        text = brokerconf.acl_text(gateways, [(d["site_id"], d["device_id"]) for d in active if d["kind"] == "hub"])
        for gw in gateways:  # the provisioning tools: read and set hubs' desired config, nothing else
            text += f"\nuser {config_user(gw)}\ntopic readwrite fallwatch/v1/+/+/config\n"
        return text

    def sync_broker(self, files: BrokerFiles) -> dict[str, Any]:
        """Write mosquitto.conf, passwd and acl from the registry (each replaced atomically,
        passwd owner-only, or 0640 group mosquitto) and SIGHUP the running broker: Mosquitto
        re-reads both files and disconnects the clients whose credentials no longer verify."""
        out = Path(files.out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        users = self.broker_users()
        _atomic_write(out / "passwd", "".join(f"{u}:{h}\n" for u, h in users.items()), 0o600, group="mosquitto")
        _atomic_write(out / "acl", self.acl(), 0o644)
        crl = None
        if files.client_certs:  # Mosquitto re-reads the CRL on SIGHUP too
            from fallwatch.gateway import pki

            _atomic_write(out / "crl.pem", pki.crl(Path(files.tls_dir), self.revoked_serials()).decode(), 0o644)
            crl = str(out / "crl.pem")
        conf = brokerconf.mosquitto_conf(
            out, tls_dir=files.tls_dir, data_dir=files.data_dir, plain_port=files.plain_port,
            tls_port=files.tls_port, log_file=files.log_file,
            pid_file=str(files.pid_file) if files.pid_file else None, client_certs=files.client_certs, crlfile=crl)
        _atomic_write(out / "mosquitto.conf", files.preamble + conf, 0o644)
        reloaded = reload_broker(files.pid_file) if files.pid_file else None
        return {"users": len(users), "dir": str(out), "reloaded_pid": reloaded}


def _bundle_state(b: dict[str, Any], now: int) -> str:
    if b.get("used_ms") is not None:
        return "already used"
    if b.get("void_ms") is not None:
        return "voided (a newer bundle, revocation or retirement)"
    if b["expires_ms"] <= now:
        return "expired"
    return "open"


def _atomic_write(path: Path, text: str, mode: int, group: str | None = None) -> None:
    """Write a file next to its final place with ``mode`` from the start, then rename: the
    broker never reads half a password file, and nobody else ever reads it at all."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if group is not None:
            with contextlib.suppress(KeyError, PermissionError):
                os.chown(tmp, -1, grp.getgrnam(group).gr_gid)
                os.chmod(tmp, 0o640)  # the broker drops to its group before it reads the file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def reload_broker(pid_file: Path) -> int | None:
    """SIGHUP the broker whose pid is in ``pid_file``; None if there is no running broker."""
    try:
        pid = int(Path(pid_file).read_text().split()[0])
        os.kill(pid, signal.SIGHUP)
    except (FileNotFoundError, IndexError, ValueError, ProcessLookupError):
        return None
    return pid



def bulk_apply(reg: Registry, rows: list[dict[str, str | None]], *, actor: str, dry_run: bool) -> dict[str, Any]:
    """Add or move many devices from CSV rows (``action,device_id,kind,site,home,hub,room,
    sensor_kind,resident``). Every row is checked first against the registry and the rows
    above it; if any row is bad, nothing is changed and each bad row is reported with its
    line number, so a technician fixes the file and runs it again instead of untangling a
    half-applied roll-out. ``dry_run`` reports what each row would do and changes nothing."""
    planned: dict[str, dict[str, Any]] = {}  # device_id -> its record as the rows so far leave it
    lines: list[str] = []
    errors = 0
    plan: list[tuple[int, dict[str, str]]] = []

    def known(device_id: str) -> dict[str, Any] | None:
        return planned.get(device_id) or reg.device(device_id)

    for n, raw in enumerate(rows, start=2):  # line 1 is the header
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if None in raw:
            errors += 1
            lines.append(f"line {n}: ERROR more fields than the header has")
            continue
        try:
            action = row.get("action") or "add"
            dev = check_id(row.get("device_id", ""), "device id")
            if action == "add":
                kind = row.get("kind", "")
                if kind not in ("hub", "wearable", "sensor"):
                    raise RegistryError(f"kind {kind!r}: one of hub, wearable, sensor (gateways: `device add`)")
                if known(dev) is not None:
                    raise RegistryError(f"device {dev} already exists")
                rec: dict[str, Any] = {"device_id": dev, "kind": kind,
                                       "status": "pending" if kind == "hub" else "active"}
                if kind == "hub":
                    rec["site_id"] = check_id(row.get("site", ""), "site id")
                    rec["home_id"] = check_id(row["home"], "home id") if row.get("home") else rec["site_id"]
                else:
                    hub = known(row.get("hub", "") or "-")
                    if hub is None or hub["kind"] != "hub" or hub["status"] == "retired":
                        raise RegistryError(f"hub {row.get('hub') or '(empty)'} is not a registered hub")
                    rec.update(site_id=hub["site_id"], home_id=hub["home_id"], hub_id=hub["device_id"])
                if kind == "sensor":
                    if row.get("sensor_kind") not in SENSOR_KINDS:
                        raise RegistryError(f"sensor_kind {row.get('sensor_kind')!r}: one of {', '.join(SENSOR_KINDS)}")
                    rec["room"] = check_id(row.get("room", ""), "room")
                    rec["sensor_kind"] = row["sensor_kind"]
                elif row.get("room") or row.get("sensor_kind"):
                    raise RegistryError("room and sensor_kind are for sensors")
                if row.get("resident"):
                    if kind != "wearable":
                        raise RegistryError("resident is for wearables")
                    r = reg.resident(rec["site_id"], row["resident"])
                    if r is None or r["status"] != "active":
                        raise RegistryError(f"no active resident {row['resident']} at site {rec['site_id']}")
                what = f"add {kind} {dev} at {rec['site_id']}/{rec['home_id']}" + (
                    f" on {rec.get('hub_id')}" if rec.get("hub_id") else "") + (
                    f" room {row['room']}" if row.get("room") else "") + (
                    f" worn by {row['resident']}" if row.get("resident") else "")
            elif action == "move":
                cur = known(dev)
                if cur is None or cur["status"] == "retired":
                    raise RegistryError(f"no device {dev} to move")
                rec = dict(cur)
                if cur["kind"] == "hub":
                    if not row.get("site") and not row.get("home"):
                        raise RegistryError("a hub moves with site and/or home")
                    rec["site_id"] = check_id(row["site"], "site id") if row.get("site") else cur["site_id"]
                    rec["home_id"] = check_id(row["home"], "home id") if row.get("home") else rec["site_id"]
                elif cur["kind"] in ("wearable", "sensor"):
                    if row.get("hub"):
                        hub = known(row["hub"])
                        if hub is None or hub["kind"] != "hub":
                            raise RegistryError(f"hub {row['hub']} is not a registered hub")
                        rec.update(site_id=hub["site_id"], home_id=hub["home_id"], hub_id=hub["device_id"])
                    if row.get("room"):
                        if cur["kind"] != "sensor":
                            raise RegistryError("only a sensor has a room")
                        rec["room"] = check_id(row["room"], "room")
                    if not row.get("hub") and not row.get("room"):
                        raise RegistryError("move a wearable/sensor with hub and/or room")
                else:
                    raise RegistryError(f"a {cur['kind']} is not moved by CSV")
                what = f"move {cur['kind']} {dev}: {cur['site_id']}/{cur.get('hub_id') or cur['home_id']}" \
                       f" -> {rec['site_id']}/{rec.get('hub_id') or rec['home_id']}" + (
                           f" room {cur.get('room')} -> {rec['room']}" if row.get("room") else "")
            else:
                raise RegistryError(f"action {action!r}: add or move")
        except RegistryError as exc:
            errors += 1
            lines.append(f"line {n}: ERROR {exc}")
            continue
        planned[dev] = rec
        plan.append((n, row))
        lines.append(f"line {n}: {'would ' if dry_run else ''}{what}")
    changed = 0
    if not dry_run and not errors:
        for n, row in plan:
            try:
                if (row.get("action") or "add") == "add":
                    reg.add_device(row["device_id"], row["kind"], actor=actor, site_id=row.get("site") or None,
                                   home_id=row.get("home") or None, hub_id=row.get("hub") or None,
                                   room=row.get("room") or None, sensor_kind=row.get("sensor_kind") or None)
                    if row.get("resident"):
                        reg.assign(row["device_id"], row["resident"], actor=actor)
                else:
                    reg.move(row["device_id"], actor=actor, site_id=row.get("site") or None,
                             home_id=row.get("home") or None, hub_id=row.get("hub") or None,
                             room=row.get("room") or None)
                changed += 1
            except RegistryError as exc:  # a concurrent change since the check: stop, say where
                errors += 1
                lines.append(f"line {n}: ERROR while applying (rows above it were applied): {exc}")
                break
    return {"lines": lines, "ok": len(plan), "errors": errors, "changed": changed}
