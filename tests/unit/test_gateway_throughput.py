"""Issue 16's bulk-path pieces on their own: the linger, coalesced registry updates, the
multi-row ``seen`` insert, and how the ``--workers`` pool names its workers and merges
their metrics (the pool itself runs on a real broker in test_gateway_durability.py)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fallwatch.config import load_config
from fallwatch.gateway.ingest import DeviceCoalescer, collect
from fallwatch.gateway.links import Item
from fallwatch.gateway.pool import merge_metrics, worker_config
from fallwatch.gateway.state import DeviceUpdate, StateStore, WriteGate
from fallwatch.protocol import contract


def _store_gate_and_fall(tmp_path: Path) -> tuple[StateStore, WriteGate, contract.FallAlert]:
    """A fresh SQLite state store, its write gate, and one decoded fall alert to record."""
    from fallwatch.testing.publisher import fall

    st = StateStore(str(tmp_path / "state.sqlite"))
    st.setup()
    assert st.gate is not None
    alert = contract.decode(*fall("s", "hub-1", 1, event="ev-1"))
    assert isinstance(alert, contract.FallAlert)
    return st, st.gate, alert


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


def test_routine_updates_of_every_device_go_out_together_once_the_interval_has_passed() -> None:
    """Light load: each device sends about once a batch, so coalescing per device would write
    every batch's devices anyway; routine updates wait for one write of all of them."""
    c = DeviceCoalescer(every_s=3600)
    c.add({("s", f"d{i}"): DeviceUpdate("s", f"d{i}", 1000) for i in range(3)})
    c.written(c.due(flush=False))  # new to this process: written at once
    assert c.pending == 0 and c.next_due_s() == 3600
    for t in (2000, 3000):
        c.add({("s", f"d{i}"): DeviceUpdate("s", f"d{i}", t + i) for i in range(3)})
        assert c.due(flush=False) == [] and c.pending == 3
    assert 0 < c.next_due_s() <= 3600
    c.add({("s", "d1"): DeviceUpdate("s", "d1", 3500, state="online")})  # news: that one goes now
    assert [u.device_id for u in c.due(flush=False)] == ["d1"] and c.next_due_s() == 0.0
    c.written(c.due(flush=False))
    assert c.pending == 2
    c.every_s = 0.0  # the interval has passed
    due = c.due(flush=False)
    assert sorted((u.device_id, u.last_seen_ms) for u in due) == [("d0", 3000), ("d2", 3002)]
    c.written(due)
    assert c.pending == 0


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


# ------------------------------------------------------------------ fall alerts ahead of telemetry (issue 16)
def _wait(cond: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Liveness only (no figure is asserted): until ``cond`` holds or ``timeout_s`` passed."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_a_fall_alert_commits_ahead_of_telemetry_commits_already_waiting(tmp_path: Path) -> None:
    """One process, SQLite: the alert worker's transaction goes ahead of a bulk commit that
    queued first (before, both met in SQLite's busy handler and could sleep through each
    other's commits). The order is read back from the database, not from a clock."""
    st, gate, alert = _store_gate_and_fall(tmp_path)
    gate.acquire()  # a transaction already running: everyone else queues behind it
    bulk = threading.Thread(target=st.commit_batch, args=(["tele-1", "tele-2"], 1, []))
    bulk.start()
    assert _wait(lambda: gate.waiting == 1)  # the telemetry commit queued first ...
    urgent = threading.Thread(target=st.record_fall, args=(alert, 2))
    urgent.start()
    assert _wait(lambda: gate.urgent_waiting == 1)  # ... then the fall alert
    gate.release()
    bulk.join(10)
    urgent.join(10)
    order = [r["msg_id"] for r in st._select("SELECT msg_id FROM seen ORDER BY rowid")]
    assert order == [alert.msg_id, "tele-1", "tele-2"]
    st.close()


def test_the_write_gate_is_reentrant_and_lets_ordinary_writers_in_when_no_alert_waits() -> None:
    from fallwatch.gateway.state import WriteGate

    gate, got = WriteGate(), []
    gate.acquire()
    gate.acquire()  # the same thread again: no deadlock
    t = threading.Thread(target=lambda: (gate.acquire(), got.append("bulk"), gate.release()))
    t.start()
    assert _wait(lambda: gate.waiting == 1)
    gate.release()
    assert got == []  # still held once
    gate.release()
    t.join(10)
    assert got == ["bulk"]


def test_a_fall_alert_is_recorded_and_notified_while_a_large_telemetry_batch_is_being_written(
        tmp_path: Path) -> None:
    """The whole gateway in one process (fake broker at the paho seam): while the bulk writer
    is inside the series-store write of a 2,000-message batch, a fall alert arrives; it is
    recorded and staff are told before that batch is stored, and the batch is stored after."""
    from fallwatch.gateway.app import Gateway
    from fallwatch.gateway.channels import Action
    from fallwatch.gateway.store import Storage
    from fallwatch.mqtt import make_client
    from fallwatch.testing import publisher as t
    from fallwatch.testing.channels import RecordingChannel
    from fallwatch.testing.fake_mqtt import FakeBroker, FakeClient

    cfg = load_config(overrides={
        "mqtt": {"url": "mqtt://fake-broker:1883"},
        "influx": {"url": "", "embedded_path": str(tmp_path / "series.sqlite")},
        "gateway": {"gateway_id": "gw-unit", "state_db": str(tmp_path / "state.sqlite"),
                    "spool_dir": str(tmp_path / "spool"), "http_port": 0,
                    # one batch of exactly 2,000: the linger holds the batch open until it is full
                    "batch_max": 2000, "batch_max_delay_ms": 60_000},
    })
    writing, release = threading.Event(), threading.Event()
    with FakeBroker():
        rec = RecordingChannel()
        gw = Gateway(cfg, channels=[rec])
        real = gw.storage.write_split

        def slow_bulk_write(points: list[Any], sink: Any) -> Any:
            if any(p[0] == "telemetry" for p in points) and len(points) >= 2000:
                writing.set()
                release.wait(30)  # the batch is "being written" until the test says so
            return real(points, sink)

        gw.storage.write_split = slow_bulk_write  # type: ignore[method-assign]
        assert isinstance(gw.storage, Storage)
        gw.start()
        pub = make_client(gw.cfg.mqtt, "hub-u")
        assert isinstance(pub, FakeClient)
        pub.connect_async("fake-broker")
        pub.loop_start()
        try:
            assert _wait(lambda: gw.ready()[0] and pub.is_connected() and gw.storage.ready)
            for i in range(2000):
                pub.publish(*t.tele("site-u", "hub-u", i), qos=1)
            assert _wait(writing.is_set)  # the bulk writer holds a large batch in the store write
            pub.publish(*t.fall("site-u", "hub-u", 10_000, event="ev-x"), qos=1)
            assert _wait(lambda: bool(rec.events(action=Action.RAISED)))
            stored_meanwhile = gw.stats()["stored"]
            assert stored_meanwhile == 1  # the alert, and nothing of the batch still being written
            assert [a["alert_id"] for a in gw.alerts()] == ["fall:site-u:hub-u:ev-x"]
        finally:
            release.set()
        assert _wait(lambda: gw.stats()["stored"] == 2001)
        pub.disconnect()
        pub.loop_stop()
        gw.stop()


def test_shared_property_tables_decode_publish_properties_as_paho_does() -> None:
    """The network thread's cheaper ``Properties`` (issue 16) reads every property paho reads,
    the same way, and refuses the same malformed packet."""
    from paho.mqtt import _packet
    from paho.mqtt.enums import MQTTProtocolVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from fallwatch.gateway.links import SharedTablesProperties, share_property_tables

    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
    props.UserProperty = [("schema", "fallwatch/1"), ("x", "y")]
    props.MessageExpiryInterval = 60
    topic = b"fallwatch/v1/s/d/tele/x"
    body = len(topic).to_bytes(2, "big") + topic + (7).to_bytes(2, "big") + props.pack() + b'{"a":1}'
    twice = props.pack()[1:]  # the ContentType property once more
    bad = len(topic).to_bytes(2, "big") + topic + (8).to_bytes(2, "big") + bytes([2 * len(twice)]) + twice * 2

    def decode(packet: bytes) -> Any:
        return _packet.decode_publish(0x32, packet, MQTTProtocolVersion.MQTTv5)

    want = decode(body)
    share_property_tables()
    try:
        got = decode(body)
        assert isinstance(got.properties, SharedTablesProperties)
        for name in ("ContentType", "UserProperty", "MessageExpiryInterval"):
            assert getattr(got.properties, name) == getattr(want.properties, name)
        assert (got.payload, got.mid, got.topic) == (want.payload, want.mid, want.topic) == (b'{"a":1}', 7, topic)
        assert not hasattr(got.properties, "ResponseTopic")
        with pytest.raises(Exception, match="more than once"):
            decode(bad)
        # assignments paho refuses are refused the same way
        p = SharedTablesProperties(PacketTypes.PUBLISH)
        with pytest.raises(Exception, match="must be one of"):
            p.NoSuchProperty = 1
        with pytest.raises(Exception, match="does not apply"):
            p.ReceiveMaximum = 10  # a CONNECT property
        c = SharedTablesProperties(PacketTypes.CONNECT)
        with pytest.raises(Exception, match="range"):
            c.ReceiveMaximum = 0
        p.UserProperty = ("a", "b")
        p.UserProperty = ("c", "d")
        assert p.UserProperty == [("a", "b"), ("c", "d")]  # accumulated, as paho does
    finally:
        _packet.Properties = Properties  # type: ignore[misc]


def test_a_large_telemetry_commit_lets_a_waiting_fall_alert_in_between_its_statements(tmp_path: Path) -> None:
    """A fall alert that starts waiting while a 1,200-key batch is being committed goes in
    before the rest of that batch (read back from the database's insertion order), and the
    batch is still stored whole, each key once."""
    st, gate, alert = _store_gate_and_fall(tmp_path)
    real = st._exec_in
    started: list[threading.Thread] = []

    def first_statement_then_an_alert(q: str, args: list[Any], cur: Any) -> None:
        real(q, args, cur)
        if not started:  # the alert arrives while the batch's transaction is open
            started.append(threading.Thread(target=st.record_fall, args=(alert, 2)))
            started[0].start()
            assert _wait(lambda: gate.urgent_waiting == 1)

    st._exec_in = first_statement_then_an_alert  # type: ignore[method-assign]
    keys = [f"tele-{i:04d}" for i in range(1200)]
    st.commit_batch(keys, 1, [DeviceUpdate("s", f"hub-{i}", 1) for i in range(300)])
    started[0].join(10)
    order = [r["msg_id"] for r in st._select("SELECT msg_id FROM seen ORDER BY rowid")]
    assert order == [*keys[:500], alert.msg_id, *keys[500:]]
    assert len(st.devices()) == 300  # every registry update of the batch
    st.close()


def test_site_bindings_looked_up_for_a_whole_batch_are_the_ones_looked_up_one_by_one(tmp_path: Path) -> None:
    from fallwatch.gateway.decode import SiteCheck

    st = StateStore(str(tmp_path / "state.sqlite"))
    st.setup()
    # hub-2 spoke for site b first, then (forged, or moved) for a: it stays bound to b
    st.commit_batch([], 0, [DeviceUpdate("a", "hub-1", 10), DeviceUpdate("b", "hub-2", 5)])
    st.commit_batch([], 0, [DeviceUpdate("a", "hub-2", 20)])
    one_by_one = {d: st.device_site(d) for d in ("hub-1", "hub-2", "hub-3")}
    assert one_by_one == {"hub-1": "a", "hub-2": "b", "hub-3": None}
    assert st.device_sites(["hub-1", "hub-2", "hub-3"]) == {"hub-1": "a", "hub-2": "b"}
    lookups: list[str] = []
    check = SiteCheck(lambda d: lookups.append(d) or st.device_site(d), st.device_sites)
    check.prefetch({"hub-1", "hub-2", "hub-3"})
    assert check.check("a", "hub-1") is None and check.check("b", "hub-2") is None
    assert check.check("a", "hub-2") is not None  # refused, as before
    assert check.check("c", "hub-3") is None  # a new device: the batch's query said so, then bound
    assert check.check("d", "hub-3") is not None  # ... to the site it first spoke for
    assert check.check("a", "hub-4") is None  # not in a prefetched batch: looked up on its own
    assert lookups == ["hub-4"]
    st.close()


def test_acks_of_a_batch_go_out_in_one_write_with_the_bytes_paho_would_send() -> None:
    """Several PUBACKs queued as one out-packet (issue 16) are exactly paho's PUBACKs, in order,
    and an ack of another QoS in between keeps its place."""
    import paho.mqtt.client as mqtt

    from fallwatch.gateway.acks import AckTracker
    from fallwatch.gateway.links import puback_many

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
    c._sockpairW = None  # type: ignore[assignment]  # not started: nothing to wake
    c._thread = threading.current_thread()  # type: ignore[assignment]  # queue only, do not write
    for mid in (7, 300, 65535):
        c.ack(mid, 1)
    one_by_one = b"".join(p["packet"] for p in c._out_packet)
    c._out_packet.clear()
    many = puback_many(c)
    assert many is not None
    many([7, 300, 65535])
    assert [p["packet"] for p in c._out_packet] == [one_by_one]
    assert puback_many(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)) is None  # auto-ack

    sent: list[tuple[str, Any]] = []
    tr = AckTracker(lambda mid, qos: sent.append(("one", (mid, qos))), lambda mids: sent.append(("many", mids)))
    entries = [tr.track(m, q) for m, q in ((1, 1), (2, 1), (3, 2), (4, 1), (5, 1), (6, 1))]
    tr.done(entries[1:])  # not the first: nothing may go out yet
    assert sent == []
    tr.done(entries[:1])
    assert sent == [("many", [1, 2]), ("one", (3, 2)), ("many", [4, 5, 6])]
    assert tr.acked == 6 and tr.pending == 0


def test_the_bulk_link_stops_reading_while_enough_received_messages_wait() -> None:
    """``buffer_reads``' hold (issue 16: a 50,000-message drain held ~40,000 in memory): while
    held no packet is read (the broker keeps the rest); once released reading goes on."""
    import paho.mqtt.client as mqtt

    from fallwatch.gateway.links import buffer_reads

    class Client:
        _sock = object()
        reads = 0

        def _sock_recv(self, n: int) -> bytes:
            return b""

        def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
            Client.reads += 1
            return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN  # one read per call here

    held = [True]
    c = Client()
    buffer_reads(c, hold=lambda: held[0])  # type: ignore[arg-type]
    assert c.loop_read() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and Client.reads == 0
    held[0] = False
    c.loop_read()
    assert Client.reads == 1


def test_devices_due_is_the_supervisors_own_test_in_sql(tmp_path: Path) -> None:
    """``devices_due`` returns exactly the devices the supervisor's Python tests pick out of
    the whole registry (lost, silent, test alarm overdue), thresholds included."""
    st = StateStore(str(tmp_path / "state.sqlite"))
    st.setup()
    now, offline_ms, test_ms = 10_000_000, 60_000, 1_000_000
    ups = []
    for i, (seen, test, state) in enumerate([
        (now, None, None), (now - offline_ms, None, None), (now - offline_ms - 1, None, None),
        (now, None, "lost"), (now, now - test_ms, None), (now, now - test_ms - 1, None), (now, 0, None),
        (now - 5 * offline_ms, now - 2 * test_ms, "online"),
    ]):
        u = DeviceUpdate("s", f"d{i}", seen, state=state, last_test_ms=test)
        ups.append(u)
    st.commit_batch([], now, ups)
    # first_seen_ms is the first last-seen; make some devices old so a missing test alarm counts
    with st._tx() as cur:
        st._exec(cur, "UPDATE devices SET first_seen_ms = ? WHERE device_id IN ('d0', 'd6')", (now - 2 * test_ms,))

    def python(d: dict[str, Any]) -> bool:
        ref = d.get("last_test_ms") or d["first_seen_ms"]
        return (d.get("state") == "lost" or now - int(d["last_seen_ms"]) > offline_ms
                or now - int(ref) > test_ms)

    want = [d["device_id"] for d in st.devices() if python(d)]
    got = [d["device_id"] for d in st.devices_due(now - offline_ms, now - test_ms)]
    assert got == want == ["d0", "d2", "d3", "d5", "d6", "d7"]
    assert [d["device_id"] for d in st.devices([("s", "d1"), ("s", "d4"), ("s", "nope")])] == ["d1", "d4"]
    st.close()


def test_settling_a_gateway_process_freezes_what_start_up_made_and_still_collects_later_garbage() -> None:
    """``runtime.settle`` (called by ``fallwatch gateway run`` once started): the start-up heap is
    frozen out of the collector's walks, the switch interval is the gateway's, and reference
    cycles made afterwards are still collected (nothing leaks). In a fresh interpreter: both
    settings are process-wide."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import gc, sys, weakref
        from fallwatch.gateway.runtime import SWITCH_INTERVAL_S, settle
        settle()
        assert gc.get_freeze_count() > 1000, gc.get_freeze_count()
        assert sys.getswitchinterval() == SWITCH_INTERVAL_S
        class Node:
            pass
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle made after the freeze
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_topics_are_parsed_alike_cached_or_not_and_long_ones_are_never_cached() -> None:
    from fallwatch.protocol import topics

    short = "fallwatch/v1/site-a/hub-1/tele/wrist"
    long = "fallwatch/v1/site-a/hub-1/tele/" + "w" * 5_000  # a hub may publish topics of 64 KB
    before = topics._parse_cached.cache_info().currsize
    assert topics.parse(short) == topics.parse(short) == topics._parse(short)
    assert topics.parse(long) == topics._parse(long) and topics.parse(long).sub == "w" * 5_000
    assert topics._parse_cached.cache_info().currsize <= before + 1  # the short one at most
    with pytest.raises(topics.TopicError):
        topics.parse("fallwatch/v1/site-a/hub-1/nope")


def test_a_paced_link_reads_on_while_the_socket_has_more_and_waits_only_at_light_load() -> None:
    """The bulk link's read pace (issue 16) must not throttle a busy link whose socket hands
    out a little per ``recv`` (TLS: one record, one packet from Mosquitto), nor a broker that
    sends few messages before it waits for acks: a read goes on until the socket is empty
    and waits for the pace only after a light one."""
    import socket

    import paho.mqtt.client as mqtt

    from fallwatch.gateway.links import buffer_reads, fast_publish

    class Records:  # a socket that, like TLS, hands out at most one small record per recv
        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock

        def recv(self, n: int) -> bytes:
            return self.sock.recv(min(n, 60))

    def publish(mid: int) -> bytes:
        topic = b"fallwatch/v1/s/hub-1/tele/w1"
        body = len(topic).to_bytes(2, "big") + topic + mid.to_bytes(2, "big") + b"\x00" + b"{}"
        return bytes([0x32, len(body)]) + body

    a, b = socket.socketpair()
    a.setblocking(False)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
    got: list[int] = []
    inline = fast_publish(c, lambda topic, payload, mid, retain: got.append(mid))
    pace = buffer_reads(c, pace_s=0.05, inline=inline)
    c._sock = Records(a)  # type: ignore[assignment]
    try:
        b.sendall(b"".join(publish(i) for i in range(1, 401)))
        assert c.loop_read() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        assert got == list(range(1, 401))  # all of it in one read, though each recv gave one packet
        assert not pace.paced and pace.wait_until == 0.0  # busy: the next read waits for nothing
        b.sendall(b"".join(publish(i) for i in range(401, 404)))
        c.loop_read()
        assert got[400:] == [401, 402, 403]
        assert pace.paced and pace.wait_until > time.monotonic()  # light: the next read gathers
    finally:
        c._sock = None
        a.close()
        b.close()


def test_a_connection_error_while_a_paced_read_drains_the_socket_is_paho_s_to_handle() -> None:
    """The extra ``recv`` of a paced read (is the socket empty?) meets a reset connection:
    paho's reading sees it and reports the connection lost, as it would have; nothing
    escapes into paho's loop (its network thread would die with the link)."""
    import paho.mqtt.client as mqtt

    from fallwatch.gateway.links import buffer_reads

    topic = b"fallwatch/v1/s/hub-1/tele/w1"
    body = len(topic).to_bytes(2, "big") + topic + (1).to_bytes(2, "big") + b"\x00{}"
    first = bytes([0x32, len(body)]) + body

    class Resetting:
        calls = 0
        closed = False

        def recv(self, n: int) -> bytes:
            Resetting.calls += 1
            if Resetting.calls == 1:
                return first
            raise ConnectionResetError("reset by peer")

        def close(self) -> None:
            Resetting.closed = True

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
    got: list[int] = []
    c.on_message = lambda _c, _u, m: got.append(m.mid)
    buffer_reads(c, pace_s=0.05)
    c._sock = Resetting()  # type: ignore[assignment]
    try:
        rc = c.loop_read()
    finally:
        c._sock = None
    assert got == [1] and rc == mqtt.MQTTErrorCode.MQTT_ERR_CONN_LOST and Resetting.closed  # paho closed it


@pytest.mark.parametrize("chunk", [65_536, 1_000, 100, 7, 1])
def test_publishes_taken_straight_from_the_read_buffer_are_what_paho_reads(chunk: int) -> None:
    """``buffer_reads`` with ``fast_publish``'s parser (issue 16) takes whole PUBLISH packets
    from its buffer without paho reading them: over a real socket, a byte stream of plain
    and other PUBLISHes, other packet types and packets split across reads (buffers of
    1,000 and 100 bytes split packets and their length bytes between the two paths; 7 and
    1 leave everything to paho) delivers exactly what a stock paho client delivers, in the
    same order."""
    import socket

    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from fallwatch.gateway.links import buffer_reads, fast_publish

    def props(**kw: Any) -> bytes:
        p = Properties(PacketTypes.PUBLISH)
        for k, v in kw.items():
            setattr(p, k, v)
        return bytes(p.pack())

    def packet(command: int, body: bytes) -> bytes:
        n, length = len(body), b""
        while True:
            n, b = n >> 7, n & 127
            length += bytes([b | (128 if n else 0)])
            if not n:
                return bytes([command]) + length + body

    def publish(command: int, topic: bytes, mid: int | None, properties: bytes, payload: bytes) -> bytes:
        return packet(command, len(topic).to_bytes(2, "big") + topic + (b"" if mid is None else mid.to_bytes(2, "big"))
                      + properties + payload)

    t = b"fallwatch/v1/s/hub-1/tele/w1"
    stream = b"".join([
        publish(0x32, t, 1, b"\x00", b'{"a":1}'),
        publish(0x33, t, 2, props(ContentType="application/json"), b"r" * 300),  # retained
        publish(0x32, t, 3, b"\x00", b"y" * 20_000),  # a remaining length of three bytes
        bytes([0xD0, 0x00]),  # PINGRESP: paho's
        publish(0x30, t, None, b"\x00", b"qos0"),  # paho's
        publish(0x32, t, 4, props(UserProperty=[("k", "v")]), b"user"),  # declined: paho's
        publish(0x3A, "fallwatch/v1/s/hüb/tele/w1".encode(), 5, props(PayloadFormatIndicator=1), b""),  # dup
        *(publish(0x32, t, 6 + i, b"\x00", b"m%d" % i) for i in range(50)),
    ])

    def run(fast: bool) -> tuple[list[tuple[Any, ...]], mqtt.Client]:
        a, b = socket.socketpair()
        a.setblocking(False)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
        got: list[tuple[Any, ...]] = []
        c.on_message = lambda _c, _u, m: got.append((m.topic, bytes(m.payload), m.mid, bool(m.retain), m.qos))
        if fast:
            inline = fast_publish(c, lambda topic, payload, mid, retain: got.append((topic, payload, mid, retain, 1)))
            assert inline is not None

            def counted(header: int, packet: bytes | bytearray) -> bool:
                took = inline(header, packet)
                taken[0] += took
                return took

            buffer_reads(c, chunk=chunk, inline=counted)
        c._sock = a
        b.sendall(stream)
        try:
            for _ in range(len(stream) + 200):  # one packet per call for stock paho; chunk 1: a byte per recv
                assert c.loop_read() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        finally:
            c._sock = None
            a.close()
            b.close()
        return got, c

    taken = [0]
    want, _ = run(False)
    got, c = run(True)
    assert len(want) == 56 and got == want
    assert c._in_packet["command"] == 0  # nothing left half-read
    # the path under test was taken (a buffer of 100 bytes holds a few whole small packets)
    assert (taken[0] > 0) == (chunk >= 100), taken


def test_the_publish_fast_path_delivers_what_paho_would_and_leaves_everything_else_to_paho() -> None:
    """``links.fast_publish`` (issue 16, fifth pass) parses a plain QoS 1 PUBLISH itself: for
    each packet the fast client delivers exactly the topic, payload, packet id and retain flag
    a stock paho client hands ``on_message``, and every packet it does not handle (QoS 0 and
    2, a property the gateway might need, a topic that is not UTF-8, a content type that is
    not UTF-8, a properties length that overruns) reaches paho's own handler unchanged."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.exception import MalformedPacket
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from fallwatch.gateway.links import fast_publish

    def props(**kw: Any) -> bytes:
        p = Properties(PacketTypes.PUBLISH)
        for k, v in kw.items():
            setattr(p, k, v)
        return bytes(p.pack())

    def publish(topic: bytes, mid: int | None, properties: bytes, payload: bytes) -> bytes:
        return (len(topic).to_bytes(2, "big") + topic + (b"" if mid is None else mid.to_bytes(2, "big"))
                + properties + payload)

    t = b"fallwatch/v1/s/hub-1/tele/w1"
    fast_cases = [  # (command byte, packet)
        (0x32, publish(t, 7, b"\x00", b'{"a":1}')),
        (0x33, publish(t, 65535, props(ContentType="application/json"), b"x" * 300)),  # retained
        (0x3A, publish("fallwatch/v1/s/hüb/tele/w1".encode(), 1, props(PayloadFormatIndicator=1,
                                                                       ContentType="application/json"), b"")),  # dup
    ]
    paho_cases = [
        (0x30, publish(t, None, b"\x00", b"qos0")),
        (0x34, publish(t, 9, b"\x00", b"qos2")),
        (0x32, publish(t, 10, props(ContentType="application/json", UserProperty=[("k", "v")]), b"user")),
        (0x32, publish(t, 11, props(MessageExpiryInterval=60), b"expiry")),
        (0x32, publish(b"fallwatch/\xff", 12, b"\x00", b"bad topic")),
    ]
    twice = props(ContentType="a")[1:]
    malformed = [  # paho refuses these (and drops the connection): so must the fast path
        (0x32, publish(t, 13, b"\x05\x03\x00\x02\xff\xfe", b"bad content type")),
        (0x32, publish(t, 14, b"\x7f\x01\x01", b"overrun")),
        (0x32, publish(t, 15, bytes([2 * len(twice)]) + twice * 2, b"content type twice")),
        *((0x32, publish(t, 16, bytes([3 + len(bad)]) + b"\x03" + len(bad).to_bytes(2, "big") + bad, b"bad text"))
          for bad in ("x\ufeff".encode(), b"x\x00")),  # UTF-8, but not MQTT's (MQTT-1.5.4-2/3)
    ]

    def client(fast: bool) -> tuple[mqtt.Client, list[tuple[str, Any]]]:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
        got: list[tuple[str, Any]] = []

        def on_message(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
            got.append(("paho", (m._topic, bytes(m.payload), m.mid, bool(m.retain), m.qos)))

        c.on_message = on_message
        c._send_pubrec = lambda mid: mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS  # type: ignore[method-assign]  # not connected
        if fast:
            fast_publish(c, lambda topic, payload, mid, retain: got.append(
                ("fast", (topic.encode(), payload, mid, retain, 1))))
        return c, got

    def feed(c: mqtt.Client, cases: list[tuple[int, bytes]]) -> None:
        for command, packet in cases:
            c._in_packet["command"] = command
            c._in_packet["packet"] = bytearray(packet)
            assert c._handle_publish() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    stock, want = client(False)
    feed(stock, fast_cases + paho_cases)
    fast, got = client(True)
    feed(fast, fast_cases + paho_cases)
    assert [g[1] for g in got] == [w[1] for w in want]  # the same messages, field for field
    # all but the QoS 2 one, which paho keeps until its PUBREL, as the stock client does
    assert [g[0] for g in got] == ["fast"] * len(fast_cases) + ["paho"] * (len(paho_cases) - 1)
    assert list(fast._in_messages) == list(stock._in_messages) == [9]
    for case in malformed:
        for c in (stock, fast):
            with pytest.raises(MalformedPacket):
                feed(c, [case])
    assert len(got) == len(want)
    # and a client with per-topic callbacks is left to paho entirely
    fast.message_callback_add("fallwatch/#", lambda *_: got.append(("filtered", None)))
    feed(fast, fast_cases[:1])
    assert got[-1] == ("filtered", None)
