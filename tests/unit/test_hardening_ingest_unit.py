"""Issue 11 (items 3, 5, 11): contract bounds, batch splitting, stuck-worker reporting."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import msgspec
import pytest

from fallwatch.edge.outbox import Outbox
from fallwatch.gateway.workers import ATTEMPTS, STUCK_AFTER, Workers, is_transient, run_batch
from fallwatch.protocol import contract as c
from fallwatch.testing import publisher as t


def _raw(topic_payload: tuple[str, bytes], **data: object) -> tuple[str, bytes]:
    topic, payload = topic_payload
    env = msgspec.json.decode(payload)
    env["data"].update(data)
    return topic, msgspec.json.encode(env)


@pytest.mark.parametrize("field,value", [("outbox_depth", 2**64 - 1), ("outbox_depth", 2**63)])
def test_integers_are_bounded_to_int64(field: str, value: int) -> None:
    with pytest.raises(c.ContractError, match="invalid_payload"):
        c.decode(*_raw(t.health("s", "d", 1), **{field: value}))


@pytest.mark.parametrize("text", ["ev\x00x", "ev\n", "ev\x1b[31m", "ev\x85"])
def test_no_nul_or_control_characters_in_strings(text: str) -> None:
    with pytest.raises(c.ContractError, match="invalid_payload"):
        c.decode(*_raw(t.fall("s", "d", 1), event_id=text))
    with pytest.raises(c.ContractError, match="invalid_payload"):
        c.decode(*_raw(t.health("s", "d", 1), fw=text))


def test_safe_text_makes_free_text_fit() -> None:
    assert c.safe_text("a\n\nb\x00c", 200) == "a b c"
    assert c.safe_text("x" * 300, 200) == "x" * 200


def test_telemetry_field_types_are_pinned_by_name() -> None:
    topic, payload = t.tele("s", "d", 1)
    assert c.decode(topic, payload)
    for fields in ({"steps": "lots"}, {"active": 1}, {"status": 3.0}, {"value": "on"}, {"steps": True}):
        bad = msgspec.json.decode(payload)
        bad["data"]["fields"] = fields
        with pytest.raises(c.ContractError, match="field_type"):
            c.decode(topic, msgspec.json.encode(bad))


def test_msg_id_old_and_install_forms() -> None:
    assert c.msg_id_matches("hub-1:7", "hub-1", 7)
    assert c.msg_id_matches("hub-1:abc123:7", "hub-1", 7)
    assert not c.msg_id_matches("hub-2:abc123:7", "hub-1", 7)
    assert not c.msg_id_matches("hub-1:ABC:7", "hub-1", 7)
    assert not c.msg_id_matches("hub-1:abc:8", "hub-1", 7)


def test_install_id_is_created_once_and_kept(tmp_path: Path) -> None:
    a = Outbox(tmp_path / "a.sqlite")
    first = a.install_id
    a.close()
    again = Outbox(tmp_path / "a.sqlite")
    assert again.install_id == first and c.msg_id_matches(c.make_msg_id("h", 1, first), "h", 1)
    again.close()
    other = Outbox(tmp_path / "b.sqlite")  # a re-imaged hub
    assert other.install_id != first
    other.close()


def test_content_digest_ignores_send_time_only() -> None:
    a = c.decode(*t.fall("s", "d", 1, event="e", ts_ms=1_700_000_000_000))
    b = msgspec.structs.replace(a, sent_ms=a.sent_ms + 1000)
    assert c.content_digest(a) == c.content_digest(b)
    assert c.content_digest(a) != c.content_digest(c.decode(*t.fall("s", "d", 1, event="f", ts_ms=1_700_000_000_000)))


def test_transient_and_permanent_errors() -> None:
    assert is_transient(sqlite3.OperationalError("database is locked"))
    assert is_transient(ConnectionError())
    assert not is_transient(OverflowError("Python int too large to convert to SQLite INTEGER"))
    assert not is_transient(ValueError())


def test_a_poison_item_is_split_out_and_the_rest_stored() -> None:
    stop, workers = threading.Event(), Workers(threading.Event())
    done: list[int] = []
    poisoned: list[int] = []
    calls = 0

    def process(items: list[int]) -> None:
        nonlocal calls
        calls += 1
        if 13 in items:
            raise OverflowError("too big")
        done.extend(items)

    run_batch(stop, workers, "bulk", process, list(range(40)), lambda i, e: poisoned.append(i))
    assert poisoned == [13]
    assert done == [i for i in range(40) if i != 13]  # arrival order kept
    assert calls < 40 * ATTEMPTS  # found by halving, not one by one


def test_a_transient_error_is_retried_and_reported_stuck_until_it_passes() -> None:
    stop, workers = threading.Event(), Workers(threading.Event())
    fails = STUCK_AFTER + 1
    seen_stuck: list[dict[str, str]] = []

    def process(items: list[int]) -> None:
        nonlocal fails
        if fails:
            fails -= 1
            seen_stuck.append(workers.problems())
            raise sqlite3.OperationalError("database is locked")

    real_wait = stop.wait
    stop.wait = lambda timeout=None: real_wait(0.001)  # type: ignore[method-assign]  # no real backoff
    run_batch(stop, workers, "alerts", process, [1], lambda i, e: pytest.fail("a transient error is not poison"))
    assert any("gw-alerts" in p and "database is locked" in p["gw-alerts"] for p in seen_stuck)
    assert workers.problems() == {}  # cleared once the batch went through


def test_a_crash_looping_worker_is_reported() -> None:
    stop = threading.Event()
    workers = Workers(stop)
    n = 0

    def bad() -> None:
        nonlocal n
        n += 1
        raise RuntimeError("boom")

    orig = stop.wait
    stop.wait = lambda timeout=None: orig(0.01)  # type: ignore[method-assign]
    workers.start("bad", bad)
    deadline = threading.Event()
    for _ in range(200):
        if "gw-bad" in workers.problems():
            break
        deadline.wait(0.02)
    stop.set()
    workers.join(5)
    assert "crash-looping" in workers.problems().get("gw-bad", "")
