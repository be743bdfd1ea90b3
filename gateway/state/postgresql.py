"""PostgreSQL state backend (psycopg 3), for several gateway replicas sharing the load.

``gateway.state_db = "postgresql://…"``. psycopg opens a transaction on the first
statement, so a write needs no explicit ``BEGIN`` and every read must be ended with a
rollback, or the connection would sit "idle in transaction" holding its snapshot.
"""

from __future__ import annotations

from typing import Literal

from fallwatch.gateway.state import DIALECTS, Connection, Cursor, Dialect
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

    def append_only(self, table: str) -> list[str]:
        return [
            "CREATE OR REPLACE FUNCTION fallwatch_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$",
            *(f"CREATE OR REPLACE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
              "FOR EACH STATEMENT EXECUTE FUNCTION fallwatch_append_only()"
              for op in ("UPDATE", "DELETE", "TRUNCATE")),
        ]

    def lock_chain(self, cur: Cursor, table: str) -> None:
        """Replicas append to one chain: a transaction-scoped advisory lock orders them."""
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"fallwatch:{table}",))


@DIALECTS.register(PostgresStateConfig)
def _make(_: PostgresStateConfig, dsn: str) -> Dialect:
    return PostgresDialect(dsn)
