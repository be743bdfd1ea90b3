"""One simulated hub as its own process: the real edge agent, fed by the ``sim`` source,
with a journal of what it committed (for the chaos suite's accounting).

It is ``fallwatch edge run`` plus one thing: every fall decision and every telemetry row
the agent commits to its outbox is appended to a JSON-lines journal (flushed at once), so
the suite knows what the edge *decided* without asking a component that may have died.
The journal is written after the outbox commit returns, so a SIGKILL between the two can
leave a row in the outbox (and later in InfluxDB) that is not in the journal: the
accounting reports that as ``unjournaled``, never as a loss. Every record carries the
hub's wall time (``wall``) *and* CLOCK_MONOTONIC (``mono``, one clock for the whole
machine): the ``clock_jump`` fault steps this process's wall clock (libfaketime), so the
suite times decisions by ``mono``, which no wall-clock step moves. Run as
``python -m fallwatch.app.chaos.hub --config hub.toml --journal hub.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, SupportsIndex


class Journal:
    """Append-only JSON lines, one write per record (a crash loses at most the last line)."""

    def __init__(self, path: Path) -> None:
        self._fh = open(path, "a", buffering=1)  # noqa: SIM115 - kept open for the process's life
        self._lock = threading.Lock()

    def write(self, **rec: Any) -> None:
        rec.setdefault("mono", time.monotonic())
        line = json.dumps(rec, sort_keys=True) + "\n"
        with self._lock:
            self._fh.write(line)


def _hook_outbox(agent: Any, journal: Journal) -> None:
    """Journal every telemetry row the outbox committed (sensor, hub time stamp, seq)."""
    import msgspec

    outbox = agent.outbox
    inner = outbox.append_many

    def append_many(items: Any, done_pending: Any = ()) -> list[int]:
        items = list(items)
        seqs: list[int] = inner(items, done_pending)
        for seq, item in zip(seqs, items, strict=False):
            if item.kind != "tele":
                continue
            try:  # build() again: the row may already be sent and deleted
                body = msgspec.json.decode(item.build(seq))
            except msgspec.DecodeError:
                continue
            journal.write(kind="tele", seq=seq, ts_ms=int(body.get("ts_ms", 0)),
                          sensor=str(body.get("data", {}).get("sensor", "")))
        return seqs

    outbox.append_many = append_many


def _sleep_that_survives_libfaketime() -> None:
    """Under Debian 12's libfaketime 0.9.10 with ``FAKETIME_DONT_FAKE_MONOTONIC=1``,
    ``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)`` -- what ``time.sleep`` uses since
    Python 3.11 -- fails with EINVAL (wolfcw/libfaketime#426, fixed after 0.9.10). In a hub
    run under it (the clock_jump fault) ``time.sleep`` waits on a never-set Event instead,
    which is timed by CLOCK_MONOTONIC and is unaffected; the wall clock is still faked."""
    if "libfaketime" not in os.environ.get("LD_PRELOAD", ""):
        return
    never = threading.Event()

    def sleep(secs: float | SupportsIndex) -> None:
        never.wait(max(0.0, float(secs)))

    time.sleep = sleep


def main(argv: list[str] | None = None) -> int:
    _sleep_that_survives_libfaketime()
    from fallwatch.app import sim_source
    from fallwatch.config import load_config
    from fallwatch.edge.agent import EdgeAgent
    from fallwatch.edge.sources import configured_sensors, make_source

    p = argparse.ArgumentParser(prog="fallwatch-chaos-hub")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--journal", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sim_source.register()
    cfg = load_config(args.config)
    source = make_source(cfg.edge)
    journal = Journal(args.journal)
    agent = EdgeAgent(cfg, sensors=[*source.sensors, *configured_sensors(cfg.edge)],
                      start_epoch_ms=source.start_epoch_ms)
    start_ms = source.start_epoch_ms
    journal.write(kind="boot", pid=os.getpid(), start_epoch_ms=start_ms, wall=time.time())

    def on_alert(d: Any) -> None:
        journal.write(kind="decision", event_id=d.event_id, status=d.status, sensor=d.sensor,
                      impact_ms=int(start_ms + d.impact_t_s * 1000), seq=d.seq, wall=time.time())

    agent.on_alert(on_alert)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    agent.start()
    _hook_outbox(agent, journal)
    try:
        for frames, now_s in source.batches():
            agent.feed(frames, now_s)
            if stop.is_set():
                break
        # the scenario is over: keep the hub up (publishing its backlog) until told to stop
        last = now_s if "now_s" in locals() else 0.0
        t0 = time.monotonic()
        while not stop.wait(0.5):
            agent.feed([], last + time.monotonic() - t0)
    finally:
        source.close()
        agent.stop()
    st = agent.stats()
    journal.write(kind="exit", wall=time.time(), outbox_depth=int(st.get("outbox_depth", 0)),
                  alerts_raised=int(st.get("alerts_raised", 0)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
