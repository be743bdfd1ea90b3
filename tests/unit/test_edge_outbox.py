"""The durable outbox: seq persisted across restarts, FIFO order, acks, thinning never touches alerts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fallwatch.edge.outbox import Outbox, Pending


def _p(kind: str, i: int) -> Pending:
    return Pending(kind, f"t/{kind}", lambda seq, i=i: f"{kind}-{i}-{seq}".encode())


def test_seq_is_persisted_and_never_reused(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    seqs = ob.append_many([_p("fall", i) for i in range(5)])
    assert seqs == [1, 2, 3, 4, 5]
    ob.ack([1, 2, 3, 4, 5])
    will = ob.reserve()
    ob.close()
    ob2 = Outbox(tmp_path / "o.sqlite")
    assert ob2.boot_id == ob.boot_id + 1
    assert ob2.append("fall", "t", lambda s: b"x") == will + 1  # acked rows' and the will's seqs stay used
    ob2.close()


def test_rows_survive_reopen_in_order_with_payload_built_from_seq(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    ob.append_many([_p("fall", i) for i in range(3)])
    ob.close()
    rows = Outbox(tmp_path / "o.sqlite").peek(0, 10)
    assert [r.seq for r in rows] == [1, 2, 3]
    assert [r.payload for r in rows] == [b"fall-0-1", b"fall-1-2", b"fall-2-3"]
    assert Outbox(tmp_path / "o.sqlite").peek(2, 10)[0].seq == 3


def test_thin_drops_only_telemetry(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    items = []
    for i in range(100):
        items.append(_p("tele", i))
        if i % 10 == 0:
            items.append(_p("fall", i))
            items.append(_p("health", i))
    ob.append_many(items)
    dropped = ob.thin(max_depth=60)
    assert dropped == len(items) - 60
    kinds = ob.depth_by_kind()
    assert kinds["fall"] == 10 and kinds["health"] == 10
    assert kinds["tele"] == 40
    assert ob.thinned == dropped
    kept = [r.seq for r in ob.peek(0, 1000) if r.kind == "tele"]
    assert max(np.diff(kept)) <= 5  # spread over the backlog, not a hole
    assert ob.thin(max_depth=5) == 40  # never below the alerts: all telemetry goes, nothing else
    assert ob.depth_by_kind() == {"fall": 10, "health": 10}


def test_reject_moves_row_aside(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    ob.append_many([_p("fall", 0), _p("fall", 1)])
    ob.reject(1, "not authorised")
    assert [r.seq for r in ob.peek()] == [2]
    assert ob.rejected == 1
    assert ob._db.execute("SELECT reason FROM rejected").fetchone()[0] == "not authorised"
