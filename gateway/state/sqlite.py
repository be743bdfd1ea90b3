"""SQLite state backend (the default): one file, WAL, ``synchronous=FULL``, ``BEGIN IMMEDIATE``.

``BEGIN IMMEDIATE`` takes the write lock when a transaction starts, so two writer threads
never deadlock upgrading a read lock; connections are in autocommit mode
(``isolation_level=None``) so that the store decides where transactions begin.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal

from fallwatch.gateway.state import DIALECTS, Connection, Cursor, Dialect
from fallwatch.plugins import PluginConfig


class SqliteStateConfig(PluginConfig):
    type: Literal["sqlite"] = "sqlite"


class SqliteDialect:
    name = "sqlite"
    autoinc = "INTEGER PRIMARY KEY AUTOINCREMENT"

    def __init__(self, path: str) -> None:
        self.path = path
        Path(path).parent.mkdir(parents=True, exist_ok=True)

    def connect(self) -> Connection:
        conn = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def sql(self, q: str) -> str:
        return q

    def begin(self, conn: Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def end_read(self, conn: Connection) -> None:
        """Nothing to end: in autocommit mode a plain SELECT holds no transaction."""

    def describe(self) -> str:
        return self.path

    def append_only(self, table: str) -> list[str]:
        return [f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END" for op in ("UPDATE", "DELETE")]

    def lock_chain(self, cur: Cursor, table: str) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` already holds the database's write lock."""


@DIALECTS.register(SqliteStateConfig)
def _make(_: SqliteStateConfig, dsn: str) -> Dialect:
    return SqliteDialect(dsn)
