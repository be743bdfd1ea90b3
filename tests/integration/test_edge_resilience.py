"""Store-and-forward under failure: a broker that goes away, and an agent killed with SIGKILL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fallwatch.config import FallwatchConfig, load_config
from fallwatch.edge import synth
from fallwatch.edge.agent import EdgeAgent
from fallwatch.edge.outbox import Outbox
from fallwatch.protocol.frames import SensorFrame
from fallwatch.testing.recorder import UplinkRecorder

pytestmark = pytest.mark.integration


def _cfg(url: str, tmp: Path, site: str) -> FallwatchConfig:
    return load_config(
        None,
        {
            "mqtt": {"url": url, "keepalive_s": 5},
            "edge": {
                "site_id": site,
                "device_id": "hub-1",
                "cancel_window_s": 2.0,
                "outbox_path": str(tmp / "outbox.sqlite"),
                "model_dir": str(tmp / "m"),
            },
        },
    )


def falls_for(wearables: list[str], t0_s: float, spacing_s: float) -> list[SensorFrame]:
    """One fall per wearable, impacts ``spacing_s`` apart, frames merged in reception order."""
    frames: list[SensorFrame] = []
    for k, sid in enumerate(wearables):
        lead = t0_s + k * spacing_s
        a0, g0 = synth.quiet(int(max(lead, 0.0) * 50) + 250, walking=True)
        fa, fg, _ = synth.fall(post_s=12)
        acc, gyro = np.vstack([a0, fa]), np.vstack([g0, fg])
        frames += synth.frames("hub-1", synth.packets(sid, acc, gyro, per_packet=25))
    return sorted(frames, key=lambda f: f.rx_t_s)


def feed(
    agent: EdgeAgent, frames: list[SensorFrame], step_s: float = 0.5, tail_s: float = 5.0
) -> None:
    t = 0.0
    i = 0
    end = frames[-1].rx_t_s + tail_s
    while t < end:
        t += step_s
        j = i
        while j < len(frames) and frames[j].rx_t_s <= t:
            j += 1
        agent.feed(frames[i:j], t)
        i = j


@pytest.fixture
def brokerdir() -> Iterator[Path]:
    """A broker work dir the broker can write even when it drops root to the 'mosquitto'
    user: otherwise its persistence file (the subscribers' sessions) silently fails to save
    and a restart forgets who was subscribed."""
    d = Path(tempfile.mkdtemp(prefix="fw-edge-res-"))
    os.chmod(d, 0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_broker_outage_every_alert_delivered_in_order_once(
    mosquitto_factory, tmp_path: Path, unique_name: str, brokerdir: Path
) -> None:
    broker = mosquitto_factory(workdir=brokerdir)
    cfg = _cfg(broker.url, tmp_path, unique_name)
    rec = UplinkRecorder(cfg.mqtt, f"rec-{unique_name}", site=unique_name, persistent=True).start()
    agent = EdgeAgent(cfg)
    agent.start()
    try:
        before = [f"wear-a{i}" for i in range(3)]
        feed(agent, falls_for(before, 5.0, 3.0))
        assert agent.flush(10)
        assert rec.wait_for(lambda r: len(r.falls()) == 3)

        broker.stop()  # the uplink goes down
        during = [f"wear-b{i}" for i in range(4)]
        frames = falls_for(during, 5.0, 3.0)
        frames = [
            SensorFrame(f.hub_id, f.sensor_id, f.transport, f.rx_t_s + 100.0, f.payload)
            for f in frames
        ]
        feed(agent, frames)
        assert agent.stats()["alerts_raised"] == 7
        assert (
            agent.outbox is not None and agent.outbox.depth_by_kind().get("fall") == 4
        )  # held on disk
        assert not agent.flush(1.0)

        broker.restart()  # same port, same persistence: the agent and the recorder come back
        assert agent.flush(30)
        assert rec.wait_for(lambda r: len(r.falls()) >= 7, timeout_s=15)
        time.sleep(0.5)  # would-be duplicates have time to arrive
        got = rec.falls()
        ids = [m.msg.data.event_id for m in got]
        seqs = [m.msg.seq for m in got]
        assert len(ids) == 7 and len(set(ids)) == 7  # every alert, once
        assert seqs == sorted(seqs)  # in the order they were raised
        assert [m.msg.data.sensor for m in got[3:]] == during
        assert rec.errors == []
        assert agent.stats()["disconnects"] >= 1 and agent.stats()["connects"] >= 2
    finally:
        agent.stop()
        rec.stop()


CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    from fallwatch.edge import synth
    from fallwatch.edge.agent import EdgeAgent
    from fallwatch.config import load_config

    url, outbox, site = sys.argv[1], sys.argv[2], sys.argv[3]
    cfg = load_config(None, {"mqtt": {"url": url}, "edge": {"site_id": site, "device_id": "hub-1",
                      "cancel_window_s": 0.0, "outbox_path": outbox, "telemetry_window_s": 1.0,
                      "model_dir": outbox + ".models"}})
    agent = EdgeAgent(cfg)
    committed = []
    agent.on_alert(committed.append)  # told only once the alert is in the outbox
    agent.start()
    fa, fg, imp = synth.fall(pre_s=2.0, post_s=3.0)
    t = 0.0
    k = 0
    while True:  # a new wearable falls every simulated 4 s, forever (until SIGKILL)
        k += 1
        pk = synth.packets(f"wear-{k}", fa, fg, per_packet=25, t0_ms=int(t * 1000))
        for fr in synth.frames("hub-1", pk):
            agent.feed([fr], fr.rx_t_s)
        t += 4.0
        agent.feed([], t)
        for ev in committed:
            print("ALERT", ev.seq, ev.event_id, flush=True)  # printed only once committed
        committed.clear()
        time.sleep(0.01)
""")


def test_sigkill_mid_stream_loses_nothing_from_the_outbox(
    mosquitto_factory, tmp_path: Path, unique_name: str
) -> None:
    broker = mosquitto_factory()
    cfg = _cfg(broker.url, tmp_path, unique_name)
    rec = UplinkRecorder(cfg.mqtt, f"rec-{unique_name}", site=unique_name, persistent=True).start()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    outbox = str(tmp_path / "outbox.sqlite")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    child = subprocess.Popen(
        [sys.executable, str(script), broker.url, outbox, unique_name],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    committed: dict[int, str] = {}
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 60
        while len(committed) < 12 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            _, seq, event_id = line.split()
            committed[int(seq)] = event_id
        assert len(committed) >= 12, "the child agent did not raise alerts"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert child.returncode == -signal.SIGKILL

    # after the kill: every committed alert is either at the broker already or still on disk
    ob = Outbox(outbox)
    on_disk = {r.seq for r in ob.peek(0, 100_000) if r.kind == "fall"}
    ob.close()
    rec.wait_for(lambda r: len(r.falls()) + len(on_disk) >= len(committed), timeout_s=5)
    at_broker = {m.msg.seq for m in rec.falls()}
    assert set(committed) <= at_broker | on_disk

    # a restarted agent on the same outbox delivers the rest; nothing is missing
    agent = EdgeAgent(cfg)
    agent.start()
    try:
        assert agent.flush(30)
        assert rec.wait_for(
            lambda r: set(committed) <= {m.msg.seq for m in r.falls()}, timeout_s=15
        )
        by_seq = {m.msg.seq: m.msg.data.event_id for m in rec.falls()}
        assert all(by_seq[s] == e for s, e in committed.items())
        assert agent.outbox is not None and agent.outbox.boot_id >= 2
        new_seq = agent.outbox.next_seq
        assert new_seq > max(committed)  # seq never goes back after a crash
    finally:
        agent.stop()
        rec.stop()


def test_long_outage_thins_telemetry_never_alerts(tmp_path: Path, unique_name: str) -> None:
    from fallwatch.testing.services import free_port

    cfg = load_config(None, {"mqtt": {"url": f"mqtt://127.0.0.1:{free_port()}"},  # nothing listens: uplink down
                             "edge": {"site_id": unique_name, "device_id": "hub-1", "cancel_window_s": 0.0,
                                      "telemetry_window_s": 1.0, "max_outbox_rows": 150,
                                      "outbox_path": str(tmp_path / "o.sqlite"), "model_dir": str(tmp_path / "m")}})
    agent = EdgeAgent(cfg)
    agent.start()
    try:
        wearables = [f"wear-{i:02d}" for i in range(20)]  # 20 summaries a second pile up
        feed(agent, falls_for(wearables, 5.0, 1.5), tail_s=20.0)
        assert agent.outbox is not None
        kinds = agent.outbox.depth_by_kind()
        assert kinds["fall"] == 20  # every alert kept
        assert agent.stats()["telemetry_thinned"] > 0
        assert agent.outbox.depth() <= 150 + 20  # bounded: the cap + one window of summaries
        assert agent.stats()["connects"] == 0
    finally:
        agent.publisher.stop()


def test_alert_the_broker_took_while_nobody_was_subscribed_is_kept_and_sent_again(mosquitto, tmp_path: Path) -> None:
    """MQTT 5 PUBACK "No matching subscribers" (0x10) means the message went nowhere: Mosquitto
    does not restore shared subscriptions from persistence, so after a broker restart every
    message until the gateways re-subscribe is answered so and dropped. The hub keeps the row
    and sends it again (found by ``fallwatch chaos``: alerts and telemetry were lost there)."""
    site = "site-nosub"
    cfg = _cfg(mosquitto.url, tmp_path, site)
    agent = EdgeAgent(cfg)
    agent.start()
    try:
        acc, gyro, _ = synth.fall(post_s=6)
        for f in synth.frames(agent.device_id, synth.packets("wear-1", acc, gyro, per_packet=25)):
            agent.feed([f], f.rx_t_s)
        agent.feed([], 40.0)
        assert agent.stats()["alerts_raised"] == 1
        deadline = time.monotonic() + 20
        while agent.stats().get("refused", 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert agent.outbox is not None and agent.outbox.depth_by_kind().get("fall") == 1  # kept, not deleted
        with UplinkRecorder(load_config(None, {"mqtt": {"url": mosquitto.url}}).mqtt, "rec-nosub",
                            site=site) as rec:
            assert rec.wait_for(lambda r: len(r.falls()) == 1, 40)  # the retry after the backoff
            assert agent.flush(20)
    finally:
        agent.stop()
