"""Gateway replicas that start together on a fresh PostgreSQL database set the schema up
together: ``CREATE TABLE IF NOT EXISTS`` is not safe against itself there (found by
``fallwatch chaos``: one replica died at start with a UniqueViolation on ``pg_type``)."""

from __future__ import annotations

import threading

import pytest

from fallwatch.gateway.paging.store import PagingStore
from fallwatch.gateway.privacy import Privacy
from fallwatch.gateway.registry import Registry
from fallwatch.gateway.state import StateStore
from fallwatch.testing.services import postgres_database

pytestmark = pytest.mark.integration


def test_replicas_set_up_a_fresh_postgresql_schema_at_the_same_time(unique_name: str) -> None:
    dsn = postgres_database(f"setup-race-{unique_name}")
    n = 6
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def replica() -> None:
        st = StateStore(dsn)
        try:
            barrier.wait(10)
            st.setup()
            PagingStore(st).setup()
            Registry(st).setup()  # its tables too (the registry had no schema lock: found by the chaos CI)
            Privacy(st, None).setup()
        except BaseException as exc:  # collected: the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert StateStore(dsn).alerts() == []
