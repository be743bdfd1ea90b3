"""PostgreSQL state backend (psycopg 3), for several gateway replicas sharing the load.

``gateway.state_db = "postgresql://…"``. psycopg opens a transaction on the first
statement, so a write needs no explicit ``BEGIN`` and every read must be ended with a
rollback, or the connection would sit "idle in transaction" holding its snapshot.
"""

from __future__ import annotations

from typing import Literal

from fallwatch.gateway.state import DIALECTS, Connection, Dialect
from fallwatch.plugins import PluginConfig


class PostgresStateConfig(PluginConfig):
    type: Literal["postgresql"] = "postgresql"


class PostgresDialect:
    name = "postgresql"
    autoinc = "BIGSERIAL PRIMARY KEY"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def connect(self) -> Connection:
        import psycopg  # only deployments with replicas need the driver

        return psycopg.connect(self.dsn, autocommit=False)

    def sql(self, q: str) -> str:
        return q.replace("?", "%s")

    def begin(self, conn: Connection) -> None:
        """psycopg begins the transaction with the first statement."""

    def end_read(self, conn: Connection) -> None:
        conn.rollback()

    def describe(self) -> str:
        return "postgresql"  # the DSN may carry a password


@DIALECTS.register(PostgresStateConfig)
def _make(_: PostgresStateConfig, dsn: str) -> Dialect:
    return PostgresDialect(dsn)
