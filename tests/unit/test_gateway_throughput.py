"""Issue 16's bulk-path pieces on their own: the linger, coalesced registry updates, the
multi-row ``seen`` insert, and how the ``--workers`` pool names its workers and merges
their metrics (the pool itself runs on a real broker in test_gateway_durability.py)."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

from fallwatch.config import load_config
from fallwatch.gateway.ingest import DeviceCoalescer, collect
from fallwatch.gateway.links import Item
from fallwatch.gateway.pool import merge_metrics, worker_config
from fallwatch.gateway.state import DeviceUpdate, StateStore


def _item(n: int, age_s: float = 0.0) -> Item:
    return (f"t{n}", b"{}", None, time.time_ns() - int(age_s * 1e9), False)


def test_linger_waits_for_more_under_light_load() -> None:
    q: queue.SimpleQueue[Item] = queue.SimpleQueue()
    q.put(_item(1))
    threading.Timer(0.1, lambda: q.put(_item(2))).start()
    batch = collect(q, 1.0, 2, 30.0, threading.Event())  # returns once the batch is full
    assert [i[0] for i in batch] == ["t1", "t2"]


def test_linger_counts_from_receipt_so_a_message_that_waited_does_not_wait_again() -> None:
    q: queue.SimpleQueue[Item] = queue.SimpleQueue()
    q.put(_item(1, age_s=7200))
    # an hour's linger from *now* would hang this test; from receipt it is long over
    assert [i[0] for i in collect(q, 1.0, 100, 3600.0, threading.Event())] == ["t1"]


def test_registry_updates_coalesce_but_news_and_new_devices_go_out_at_once() -> None:
    c = DeviceCoalescer(every_s=3600)
    first = {("s", "d"): DeviceUpdate("s", "d", 1000)}
    c.add(first)
    assert [u.last_seen_ms for u in c.due(flush=False)] == [1000]  # a device new to this process
    c.written(c.due(flush=False))
    c.add({("s", "d"): DeviceUpdate("s", "d", 2000)})
    c.add({("s", "d"): DeviceUpdate("s", "d", 3000)})
    assert c.due(flush=False) == [] and c.pending == 1  # routine: waits, merged
    flushed = c.due(flush=True)
    assert [u.last_seen_ms for u in flushed] == [3000]  # the newest last-seen
    c.written(flushed)
    assert c.pending == 0
    news = DeviceUpdate("s", "d", 4000, fw="1.2.3")
    c.add({("s", "d"): news})
    c.add({("s", "d"): news})  # a retried batch adds the same again: still one update
    due = c.due(flush=False)
    assert len(due) == 1 and due[0].fw == "1.2.3"


def test_an_update_is_only_dropped_once_it_was_written() -> None:
    c = DeviceCoalescer(every_s=3600)
    c.add({("s", "d"): DeviceUpdate("s", "d", 1000)})
    due = c.due(flush=False)
    # the commit failed (no written()): the retry finds the same update still due
    c.add({("s", "d"): DeviceUpdate("s", "d", 1000)})
    assert [u.last_seen_ms for u in c.due(flush=False)] == [u.last_seen_ms for u in due] == [1000]


def test_seen_keys_of_a_large_batch_are_all_stored_once(tmp_path: Path) -> None:
    st = StateStore(str(tmp_path / "s.sqlite"))
    st.setup()
    ids = [f"d:{i}" for i in range(1234)]  # more than one INSERT's worth
    st.commit_batch(ids, 1, [], {i: f"h{i}" for i in ids})
    st.commit_batch([*ids[:10], "d:x"], 2, [], {"d:0": "other"})  # repeats: the first digest is kept
    seen = st.seen_digests([*ids, "d:x", "d:nope"])
    assert len(seen) == 1235 and seen["d:0"] == "hd:0" and seen["d:x"] is None and "d:nope" not in seen
    st.close()


def test_worker_identities() -> None:
    cfg = load_config(overrides={"mqtt": {"username": "gw-1", "password": "p"},
                                 "gateway": {"gateway_id": "gw-1", "spool_dir": "/var/spool/fw"}})
    w0, w1 = worker_config(cfg, 0), worker_config(cfg, 1)
    assert w0.gateway.gateway_id == "gw-1" and w0.mqtt.username == "gw-1" and w0.mqtt.client_id is None
    assert w0.gateway.shared_group == w1.gateway.shared_group == "gw-1"
    assert (w1.gateway.gateway_id, w1.mqtt.client_id, w1.mqtt.username) == ("gw-1-w1", "gw-1-w1", "gw-1-w1")
    assert w1.mqtt.for_alert_link().username == "gw-1-w1-alerts"
    assert w1.gateway.spool_dir != w0.gateway.spool_dir
    assert w1.gateway.state_db == w0.gateway.state_db  # one registry, one de-dup table


def test_metrics_of_workers_merge_into_one_exposition() -> None:
    text = ("# HELP fw_stored Stored.\n# TYPE fw_stored counter\nfw_stored_total 5.0\n"
            "# HELP fw_lat Latency.\n# TYPE fw_lat histogram\nfw_lat_bucket{le=\"0.1\",path=\"bulk\"} 3.0\n")
    merged = merge_metrics([("0", text), ("1", text.replace("5.0", "7.0"))])
    lines = merged.splitlines()
    assert lines.count("# TYPE fw_stored counter") == 1
    assert 'fw_stored_total{worker="0"} 5.0' in lines and 'fw_stored_total{worker="1"} 7.0' in lines
    assert 'fw_lat_bucket{worker="1",le="0.1",path="bulk"} 3.0' in lines
    # each family's samples stay together under its header
    assert lines.index('fw_stored_total{worker="1"} 7.0') < lines.index("# HELP fw_lat Latency.")
