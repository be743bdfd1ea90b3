"""Staff accounts, roles and what each role may do.

Staff data (who fell, where, when) is personal health data: every request to it is
authenticated, checked against the caller's role, and written to the audit log
(``access_log`` in the state DB). Accounts live in a TOML file that holds only a
SHA-256 of each personal token, so a leaked file does not leak tokens; tokens are
created by ``fallwatch gateway staff add`` and shown once.

An account may also carry a ``team`` (the ``[[gateway.paging.teams]]`` id whose sites its
holder sees; none: every site) and a ``password_argon2`` (an Argon2id hash made with
argon2-cffi, for signing in to the console with a name and a password instead of the token).

Roles (least privilege):

=============  ==============================================================
``carer``      sees open and recent alerts with resident and room, acknowledges
               and resolves them
``lead``       a team lead: everything a carer may, plus the team's planning view
               ("who to visit today") and the residents' risk pages with actions taken
``technician`` sees the device registry and device alerts (offline, test overdue)
               but not fall alerts or residents
``admin``      everything, including the audit log
=============  ==============================================================
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROLES = ("carer", "lead", "technician", "admin")

#: permission -> roles that hold it
PERMISSIONS: dict[str, frozenset[str]] = {
    "alerts:read": frozenset({"carer", "lead", "admin"}),
    "alerts:act": frozenset({"carer", "lead", "admin"}),
    "residents:read": frozenset({"carer", "lead", "admin"}),
    "residents:act": frozenset({"carer", "lead", "admin"}),
    "planning:read": frozenset({"lead", "admin"}),
    "device_alerts:read": frozenset({"carer", "lead", "technician", "admin"}),
    "devices:read": frozenset({"technician", "admin"}),
    "audit:read": frozenset({"admin"}),
    "residents:export": frozenset({"admin"}),
    "residents:erase": frozenset({"admin"}),
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
    #: the team whose sites this person sees (None: every site)
    team: str | None = None

    def may(self, permission: str) -> bool:
        return self.role in PERMISSIONS.get(permission, frozenset())


class StaffError(ValueError):
    pass


def password_hash(password: str) -> str:
    """An Argon2id hash of a console password (argon2-cffi's recommended parameters)."""
    from argon2 import PasswordHasher

    return PasswordHasher().hash(password)


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the name is unknown, so a wrong name costs as long as a wrong password."""
    return password_hash(secrets.token_urlsafe(16))


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class StaffDirectory:
    """The accounts file (``[[user]] name, role, token_sha256``), re-read when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime = -1.0
        self._by_hash: dict[str, StaffUser] = {}
        self._passwords: dict[str, tuple[str, StaffUser]] = {}

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
        passwords: dict[str, tuple[str, StaffUser]] = {}
        for entry in data.get("user", []):
            role = entry.get("role")
            if str(entry.get("name", "")).strip().lower() in RESERVED_NAMES:
                raise StaffError(f"{self.path}: user name {entry.get('name')!r} is reserved")
            if role not in ROLES:
                raise StaffError(f"{self.path}: user {entry.get('name')!r} has unknown role {role!r}")
            team = entry.get("team")
            user = StaffUser(str(entry["name"]), role, team=str(team) if team else None)
            users[str(entry["token_sha256"])] = user
            if entry.get("password_argon2"):
                passwords[user.name] = (str(entry["password_argon2"]), user)
        self._by_hash, self._passwords, self._mtime = users, passwords, mtime

    def authenticate(self, token: str | None) -> StaffUser | None:
        if not token:
            return None
        self._load()
        digest = _hash(token)
        for known, user in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return user
        return None

    def check_password(self, name: str, password: str) -> StaffUser | None:
        """The account if ``password`` is its password (Argon2id, constant work for unknown names)."""
        from argon2 import PasswordHasher
        from argon2.exceptions import InvalidHashError, VerificationError

        self._load()
        hashed, user = self._passwords.get(name, (_dummy_hash(), None))
        try:
            PasswordHasher().verify(hashed, password)
        except (VerificationError, InvalidHashError):
            return None
        return user

    def user(self, name: str) -> StaffUser | None:
        """The account of that name as the file says now (a session re-checks it on every request)."""
        return next((u for u in self.users() if u.name == name), None)

    def users(self) -> list[StaffUser]:
        self._load()
        return list(self._by_hash.values())

    def add(self, name: str, role: str, team: str | None = None, password: str | None = None) -> str:
        """Create an account and return its token (shown once, stored only as a hash)."""
        if role not in ROLES:
            raise StaffError(f"role must be one of {', '.join(ROLES)}")
        if name.strip().lower() in RESERVED_NAMES:
            raise StaffError(f"user name {name!r} is reserved ({', '.join(sorted(RESERVED_NAMES))})")
        if not name or any(c in name for c in '"\\\n'):
            raise StaffError("name must be non-empty and contain no quotes, backslashes or newlines")
        if team is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", team):
            raise StaffError(f"team {team!r} is not a team id")
        if any(u.name == name for u in self.users()):
            raise StaffError(f"user {name!r} exists already")
        token = secrets.token_urlsafe(24)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(f'\n[[user]]\nname = "{name}"\nrole = "{role}"\ntoken_sha256 = "{_hash(token)}"\n')
            if team:
                f.write(f'team = "{team}"\n')
            if password:
                f.write(f'password_argon2 = "{password_hash(password)}"\n')
        self.path.chmod(0o600)
        return token
