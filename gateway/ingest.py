"""The bulk path: micro-batches of everything that is not a fall alert.

:class:`InFlight` counts what was received and is not yet finished, and releases the acks
of finished messages (in arrival order, per link). :func:`collect` takes a natural batch
off a queue. :class:`BulkIngest` runs one batch through the stages — decode → de-dup →
store/spool → commit keys and registry updates → ack — and is the only thing the bulk
worker does.
"""

from __future__ import annotations

import operator
import queue
import threading
import time
from collections.abc import Callable

from fallwatch.config import GatewayConfig
from fallwatch.gateway.acks import AckEntry, AckTracker
from fallwatch.gateway.decode import Decoder, device_update
from fallwatch.gateway.dedup import Deduplicator
from fallwatch.gateway.links import Item, ItemQueue, ReadPace, linger_after_pace_s
from fallwatch.gateway.metrics import Counters, Metrics
from fallwatch.gateway.points import SeriesPoint
from fallwatch.gateway.sinks import SeriesSink
from fallwatch.gateway.state import DeviceUpdate, StateStore
from fallwatch.gateway.store import Storage
from fallwatch.gateway.workers import Workers, run_batch
from fallwatch.protocol import contract

#: ``probe(path, e2e_ms)``: called per stored message with now - envelope ``sent_ms``
LatencyProbe = Callable[[str, float], None]


class InFlight:
    """Received-but-unfinished accounting, and the acks released when messages finish."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self.in_progress = 0
        self.last_rx = 0.0
        #: wall-clock ms of the first message received since start (None before): benchmarks time
        #: a drain from it when no poll of /stats fell between start and the first message
        self.first_rx_ms: int | None = None

    def received(self) -> None:
        """Called on a link's network thread for every message it queues."""
        self.last_rx = time.monotonic()
        if self.first_rx_ms is None:
            self.first_rx_ms = time.time_ns() // 1_000_000
        with self.counters.lock:
            self.counters.received += 1
            self.in_progress += 1

    def finish(self, items: list[Item]) -> None:
        """Mark items durable (or deliberately dropped): acks go out in arrival order."""
        with self.counters.lock:
            self.in_progress -= len(items)
        trackers: dict[int, tuple[AckTracker, list[AckEntry]]] = {}
        for i in items:
            e = i[2]
            if e is not None:
                trackers.setdefault(id(e.owner), (e.owner, []))[1].append(e)
        for tracker, entries in trackers.values():
            tracker.done(entries)

    def idle(self, quiet_s: float) -> bool:
        return self.in_progress == 0 and time.monotonic() - self.last_rx >= quiet_s


def collect(q: ItemQueue, first_wait_s: float, limit: int, linger_s: float, stop: threading.Event) -> list[Item]:
    """A batch: whatever queued up while the previous one was written, and under light load
    whatever else arrives until the oldest message has waited ``linger_s``.

    The linger (``batch_max_delay_ms``) counts from the first message's *receipt*, not from
    now: under load that message has already waited longer than the linger, so nothing
    waits and the batch is what queued up (natural batching); at a few hundred messages a
    second it makes one write of ten messages instead of ten writes of one, which is most of
    the CPU a message costs there (issue 16). Fall alerts never come through here.
    """
    try:
        batch = [q.get(timeout=first_wait_s)]
    except queue.Empty:
        return []
    linger_until = batch[0][3] / 1e9 + linger_s  # receipt, wall-clock ns (Item[3])
    while len(batch) < limit:
        try:
            batch.append(q.get_nowait())
        except queue.Empty:
            left = min(linger_s, linger_until - time.time())  # never longer, should the clock step back
            if left <= 0 or stop.is_set():
                break
            try:
                batch.append(q.get(timeout=left))
            except queue.Empty:
                break
    return batch


#: ``DeviceUpdate`` fields beyond what every message carries (last-seen, clock skew, sensors):
#: an update that sets none of them may wait
_NEWS = ("fw", "model_version", "outbox_depth", "uptime_s", "min_battery_pct", "state", "heartbeat_s",
         "boot_id", "last_test_ms")


class DeviceCoalescer:
    """Registry updates written at most once a ``every_s`` for all devices, news at once.

    A device's last-seen and clock skew change with every message; writing them for each
    message was one UPSERT per device per batch (issue 16: 1,000 a batch from 1,000 hubs,
    8 % of a drain), and under light load, where every device sends about once a batch,
    coalescing per device saved nothing: at 200 msg/s every batch wrote its ten devices'
    rows (45 µs of the bulk worker's CPU a message, measured). Now an update is written at
    once when the device is new to this process or says anything else (health, state, a
    test alarm, sensors); otherwise it is merged into the device's pending update, and all
    pending updates go out together with the first batch (or quiet moment,
    :meth:`BulkIngest.loop`) after ``every_s`` since the last time they did. What can be
    lost in a crash is at most ``every_s`` of last-seen, never a message: offline
    detection works in minutes (``offline_after_s``).

    Safe under :func:`run_batch` retries: :meth:`add` merges (doing it twice changes
    nothing) and pending updates are only dropped by :meth:`written`, after the commit.
    """

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_s = every_s
        self._pending: dict[tuple[str, str], DeviceUpdate] = {}
        self._urgent: set[tuple[str, str]] = set()
        #: devices written by this process (a device not in it is news)
        self._known: set[tuple[str, str]] = set()
        self._flushed = time.monotonic()

    def add(self, updates: dict[tuple[str, str], DeviceUpdate]) -> None:
        for key, upd in updates.items():
            have = self._pending.get(key)
            if have is None:
                self._pending[key] = upd
            elif have is not upd:
                have.merge(upd)
            if key not in self._known or not _routine(upd):
                self._urgent.add(key)

    def due(self, flush: bool) -> list[DeviceUpdate]:
        """The pending updates to write now: the urgent ones, and every one once ``every_s``
        has passed since they last went out (or with ``flush``: stopping)."""
        if flush or time.monotonic() - self._flushed >= self.every_s:
            return list(self._pending.values())
        return [self._pending[k] for k in self._urgent if k in self._pending]

    def written(self, updates: list[DeviceUpdate]) -> None:
        for u in updates:
            key = (u.site_id, u.device_id)
            if self._pending.get(key) is u:
                del self._pending[key]
            self._urgent.discard(key)
            self._known.add(key)
        if not self._pending:
            self._flushed = time.monotonic()
        if len(self._known) > 1_000_000:  # bounded: forgetting only means one early write
            self._known.clear()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def next_due_s(self) -> float:
        """Seconds until the pending updates are due (0 when some are due now)."""
        if not self._pending:
            return self.every_s
        if self._urgent & self._pending.keys():
            return 0.0
        return max(0.0, self.every_s - (time.monotonic() - self._flushed))


_news = operator.attrgetter(*_NEWS)
_NO_NEWS = (None,) * len(_NEWS)


def _routine(u: DeviceUpdate) -> bool:
    return not u.sensors and _news(u) == _NO_NEWS


class BulkIngest:
    def __init__(self, cfg: GatewayConfig, q: ItemQueue, decoder: Decoder, dedup: Deduplicator, storage: Storage,
                 state: StateStore, inflight: InFlight, counters: Counters, metrics: Metrics,
                 stop: threading.Event, workers: Workers) -> None:
        self.cfg = cfg
        self.q = q
        self.decoder = decoder
        self.dedup = dedup
        self.storage = storage
        self.state = state
        self.inflight = inflight
        self.counters = counters
        self.metrics = metrics
        self.stop = stop
        self.workers = workers
        self.latency_probe: LatencyProbe | None = None
        #: the bulk link's read pacing (its ``read_pace``): none unless the gateway wires it
        self.read_pace = ReadPace(0.0)
        self.devices = DeviceCoalescer()
        #: called with the messages of each batch once they are durable (derived alerts, observe.py)
        self.observer: Callable[[list[contract.Message]], None] | None = None
        #: says whether a message is about an erased resident (gateway/privacy.py): not observed
        self.erased: Callable[[contract.Message], bool] | None = None

    def loop(self) -> None:
        """Worker: batches off the bulk queue until stopped and drained."""
        sink = self.storage.new_sink()
        # after a paced read (light load) the messages waited in the socket already: what the read
        # delivered is one batch; otherwise the whole linger counts from receipt
        limit, full = self.cfg.batch_max, self.cfg.batch_max_delay_ms / 1000.0
        after_pace = linger_after_pace_s(full, self.read_pace.pace_s)
        while True:
            linger_s = after_pace if self.read_pace.paced else full
            batch = collect(self.q, min(0.2, max(0.01, self.devices.next_due_s())), limit, linger_s, self.stop)
            if not batch:
                if self.devices.pending and (self.stop.is_set() or self.devices.next_due_s() == 0.0):
                    # quiet: what the last batches left pending goes out once it is due
                    run_batch(self.stop, self.workers, "bulk", lambda _: self.flush_devices(), [None], lambda *_: None)
                if self.stop.is_set():
                    return
                continue
            run_batch(self.stop, self.workers, "bulk", lambda items: self.process(items, sink), batch, self.poison)

    def flush_devices(self) -> None:
        due = self.devices.due(flush=self.stop.is_set())
        self.state.commit_batch([], contract.now_ms(), due)
        self.devices.written(due)

    def poison(self, item: Item, exc: Exception) -> None:
        """One message that cannot be stored however often it is tried: dead-letter it (it can be
        replayed from there once fixed), count it, and acknowledge it so the rest goes on."""
        self.decoder.reject("poison", f"{type(exc).__name__}: {exc}", item[0], item[1])
        self.inflight.finish([item])

    def process(self, batch: list[Item], sink: SeriesSink) -> None:
        """One batch: decode, drop duplicates, store or spool, commit, then ack."""
        good = self.decoder.decode(batch)
        fresh, dups, digests = self.dedup.fresh(good)
        points: list[SeriesPoint] = []
        new_ids: list[str] = []
        devices: dict[tuple[str, str], DeviceUpdate] = {}
        tele = 0
        for msg, item, pts in fresh:
            new_ids.append(msg.msg_id)
            if isinstance(msg, contract.Telemetry):
                tele += len(pts)
            points.extend(pts)
            upd = device_update(msg, item[3] // 1_000_000, item[4])
            key = (msg.site_id, msg.device_id)
            if key in devices:
                devices[key].merge(upd)
            else:
                devices[key] = upd
        refused = self.storage.store(points, sink, "bulk")
        if refused is None:
            return  # stopping with a full spool: leave unacknowledged, the broker re-sends
        if refused:
            # points the store refused for good (a field-type conflict): the message that carried
            # them is rejected as its sender's (dead-lettered, replayable), not lost unseen
            owner = {id(p): item for _, item, pts in fresh for p in pts}
            for topic, payload in dict.fromkeys(owner[id(p)][:2] for p in refused):
                self.decoder.reject("store_refused", "the series store refused this message's points for good "
                                    "(field type conflict or a value it cannot hold)", topic, payload)
        self.devices.add(devices)
        due = self.devices.due(flush=self.stop.is_set())
        self.state.commit_batch(new_ids, contract.now_ms(), due, digests)
        self.devices.written(due)
        done_ns = time.time_ns()
        hist = self.metrics.ingest_latency.labels("bulk")
        for _, item, _ in good:
            hist.observe((done_ns - item[3]) / 1e9)
        if self.latency_probe is not None:
            done_ms = done_ns / 1e6
            for msg, _, _ in good:
                self.latency_probe("bulk", done_ms - msg.sent_ms)
        self.counters.add(stored=len(new_ids), duplicates=dups, telemetry_points=tele, batches=1)
        self.inflight.finish(batch)
        if self.observer is not None:
            self.observer([m for m, _, _ in fresh if self.erased is None or not self.erased(m)])
