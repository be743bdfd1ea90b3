"""Staff accounts, roles and what each role may do.

Staff data (who fell, where, when) is personal health data: every request to it is
authenticated, checked against the caller's role, and written to the audit log
(``access_log`` in the state DB). Accounts live in a TOML file that holds only a
SHA-256 of each personal token, so a leaked file does not leak tokens; tokens are
created by ``fallwatch gateway staff add`` and shown once.

Roles (least privilege):

=============  ==============================================================
``carer``      sees open and recent alerts with resident and room, acknowledges
               and resolves them
``technician`` sees the device registry and device alerts (offline, test overdue)
               but not fall alerts or residents
``admin``      everything, including the audit log
=============  ==============================================================
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROLES = ("carer", "technician", "admin")

#: permission -> roles that hold it
PERMISSIONS: dict[str, frozenset[str]] = {
    "alerts:read": frozenset({"carer", "admin"}),
    "alerts:act": frozenset({"carer", "admin"}),
    "device_alerts:read": frozenset({"carer", "technician", "admin"}),
    "devices:read": frozenset({"technician", "admin"}),
    "audit:read": frozenset({"admin"}),
    "metrics:read": frozenset({"technician", "admin"}),
}


#: names a person's account may not have: the gateway's own actors in the audit logs, and the
#: two service identities that name the actor themselves (a carer called "api-token" could
#: otherwise acknowledge alerts in anyone's name)
RESERVED_NAMES = frozenset({"anonymous", "api-token", "gateway", "device", "-"})


@dataclass(frozen=True, slots=True)
class StaffUser:
    name: str
    role: str
    #: a service identity (the automation token, the development gateway): the request names
    #: the person acting; never true for an account from the accounts file
    service: bool = False

    def may(self, permission: str) -> bool:
        return self.role in PERMISSIONS.get(permission, frozenset())


class StaffError(ValueError):
    pass


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class StaffDirectory:
    """The accounts file (``[[user]] name, role, token_sha256``), re-read when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime = -1.0
        self._by_hash: dict[str, StaffUser] = {}

    def _load(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._by_hash, self._mtime = {}, -1.0
            return
        if mtime == self._mtime:
            return
        data = tomllib.loads(self.path.read_text())
        users: dict[str, StaffUser] = {}
        for entry in data.get("user", []):
            role = entry.get("role")
            if str(entry.get("name", "")).strip().lower() in RESERVED_NAMES:
                raise StaffError(f"{self.path}: user name {entry.get('name')!r} is reserved")
            if role not in ROLES:
                raise StaffError(f"{self.path}: user {entry.get('name')!r} has unknown role {role!r}")
            users[str(entry["token_sha256"])] = StaffUser(str(entry["name"]), role)
        self._by_hash, self._mtime = users, mtime

    def authenticate(self, token: str | None) -> StaffUser | None:
        if not token:
            return None
        self._load()
        digest = _hash(token)
        for known, user in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return user
        return None

    def users(self) -> list[StaffUser]:
        self._load()
        return list(self._by_hash.values())

    def add(self, name: str, role: str) -> str:
        """Create an account and return its token (shown once, stored only as a hash)."""
        if role not in ROLES:
            raise StaffError(f"role must be one of {', '.join(ROLES)}")
        if name.strip().lower() in RESERVED_NAMES:
            raise StaffError(f"user name {name!r} is reserved ({', '.join(sorted(RESERVED_NAMES))})")
        if not name or any(c in name for c in '"\\\n'):
            raise StaffError("name must be non-empty and contain no quotes, backslashes or newlines")
        if any(u.name == name for u in self.users()):
            raise StaffError(f"user {name!r} exists already")
        token = secrets.token_urlsafe(24)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(f'\n[[user]]\nname = "{name}"\nrole = "{role}"\ntoken_sha256 = "{_hash(token)}"\n')
        self.path.chmod(0o600)
        return token
