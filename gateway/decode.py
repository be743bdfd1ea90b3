"""Decode: payload → contract message + series points; anything that fails is rejected.

Rejection never raises: the message is counted by reason, logged, and published as a dead
letter on ``fallwatch/v1/_dlq/{reason}`` (then acknowledged by the caller — a broken message
redelivered for ever would help nobody). :func:`device_update` is what an accepted
message tells the device registry.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
from collections.abc import Callable

from fallwatch.gateway.links import Item
from fallwatch.gateway.metrics import Counters
from fallwatch.gateway.points import SeriesPoint, to_points
from fallwatch.gateway.state import DeviceUpdate
from fallwatch.protocol import contract, topics

log = logging.getLogger("fallwatch.gateway")

#: An accepted message, the item it arrived as, and the points it becomes.
Decoded = tuple[contract.Message, Item, list[SeriesPoint]]

#: ``publish(topic, payload)``: sends a dead letter (raises if it cannot).
Publish = Callable[[str, bytes], None]


class SiteCheck:
    """A device id belongs to one site: the one the registry first saw it at (issue 11 item 9).

    The generated broker ACL already confines each hub to its provisioned site; this is the
    gateway's own check behind a broker whose ACL is wider (hand-written, ``%u`` patterns):
    a known device id speaking under another site is rejected, never raised for that
    site's resident. Bindings are cached (the registry only grows); an unknown device is
    looked up once, then bound to the site it first speaks for.
    """

    def __init__(self, site_of: Callable[[str], str | None],
                 sites_of: Callable[[list[str]], dict[str, str]] | None = None) -> None:
        """``sites_of``: the same lookup for many devices in one query (:meth:`prefetch`)."""
        self._site_of = site_of
        self._sites_of = sites_of
        self._sites: dict[str, str] = {}
        #: devices :meth:`prefetch` looked up and found unregistered: :meth:`check` binds them
        #: without asking again (a fresh gateway among 1,000 hubs made a query for each)
        self._absent: set[str] = set()
        self._lock = threading.Lock()

    def prefetch(self, device_ids: set[str]) -> None:
        """Look the batch's devices this process has not bound yet up in one query instead of
        one each (issue 16: a gateway that starts among 1,000 hubs made 1,000 lookups)."""
        if self._sites_of is None:
            return
        with self._lock:
            unknown = [d for d in device_ids if d not in self._sites]
        if len(unknown) < 2:
            return
        found = self._sites_of(unknown)
        with self._lock:
            for device, site in found.items():
                self._sites.setdefault(device, site)
            self._absent = {d for d in unknown if d not in found}  # for this batch only: bounded

    def check(self, site_id: str, device_id: str) -> str | None:
        """None if (site, device) is the registered pair (or a new device), else why not."""
        with self._lock:
            known = self._sites.get(device_id)
        if known is None:
            with self._lock:
                absent = device_id in self._absent
                self._absent.discard(device_id)
            known = site_id if absent else (self._site_of(device_id) or site_id)
            with self._lock:
                known = self._sites.setdefault(device_id, known)
        if known != site_id:
            return f"device {device_id!r} is registered at site {known!r}, not {site_id!r}"
        return None


class Decoder:
    """Strict decoding of received items, with counted and dead-lettered rejections."""

    def __init__(self, gateway_id: str, counters: Counters, publish: Publish, max_skew_ms: int = 300_000,
                 sites: SiteCheck | None = None) -> None:
        self.gateway_id = gateway_id
        self.counters = counters
        self.publish = publish
        #: device times later than receipt + this are clamped (``gateway.clock_skew_s``)
        self.max_skew_ms = max_skew_ms
        self.sites = sites

    def decode(self, items: list[Item]) -> list[Decoded]:
        """Strict decode + conversion to points; anything that fails is rejected, never raised."""
        good: list[Decoded] = []
        if self.sites is not None and len(items) > 1:
            devices = set()
            for item in items:
                with contextlib.suppress(topics.TopicError):
                    devices.add(topics.parse(item[0]).device)
            self.sites.prefetch(devices)  # the check below still decides, from the message itself
        for item in items:
            topic, payload = item[0], item[1]
            try:
                msg = contract.decode(topic, payload)
                why = self.sites.check(msg.site_id, msg.device_id) if self.sites is not None else None
                if why is not None:
                    self.reject("site_mismatch", why, topic, payload)
                    continue
                recv_ms = item[3] // 1_000_000
                good.append((msg, item, to_points(msg, recv_ms, self.max_skew_ms)))
                self.observe_clock(msg, recv_ms, item[4])
            except contract.ContractError as exc:
                self.reject(exc.reason, exc.detail, topic, payload)
            except Exception as exc:
                self.reject("internal", f"{type(exc).__name__}: {exc}", topic, payload)
        return good

    def observe_clock(self, msg: contract.Message, recv_ms: int, retained: bool) -> None:
        """Count a device time beyond receipt + skew (clamped) and keep each device's skew."""
        skew = clock_skew_ms(msg, recv_ms, retained)
        if skew is not None:
            with self.counters.lock:
                self.counters.clock_skew_ms[(msg.site_id, msg.device_id)] = skew
        if msg.ts_ms > recv_ms + self.max_skew_ms:
            self.counters.add(clock_clamped=1)
            log.warning("device %s/%s clock %.0f s ahead of the gateway: its time stamps are clamped",
                        msg.site_id, msg.device_id, (msg.ts_ms - recv_ms) / 1000)

    def reject(self, reason: str, detail: str, topic: str, payload: bytes) -> None:
        """Count, log and dead-letter one message the gateway will not store."""
        self.counters.reject(reason)
        log.warning("rejected message on %r: %s: %s", topic[:200], reason, detail[:300])
        cut = contract.DEAD_LETTER_TEXT_MAX
        body = contract.encode_gateway(contract.DeadLetter(
            reason=reason,
            detail=detail[:cut],
            topic=topic[:cut],
            gateway_id=self.gateway_id,
            received_ms=contract.now_ms(),
            payload_b64=base64.b64encode(payload[: contract.MAX_PAYLOAD_BYTES // 2]).decode(),  # fits max_packet_size
        ))
        try:
            self.publish(topics.dead_letter(reason), body)
            self.counters.add(dead_lettered=1)
        except Exception:
            log.exception("could not publish dead letter")


def clock_skew_ms(msg: contract.Message, recv_ms: int, retained: bool) -> int | None:
    """How far the device's clock looks ahead (+) or behind (-) of the gateway's.

    A live message says so by its send time (behind also includes transit and time in the
    hub's outbox); a retained one was sent who knows when, so it only tells a clock ahead.
    """
    ahead = max(msg.ts_ms, msg.sent_ms) - recv_ms
    if ahead > 0:
        return ahead
    return None if retained else msg.sent_ms - recv_ms


def device_update(msg: contract.Message, recv_ms: int, retained: bool = False) -> DeviceUpdate:
    """What one accepted message tells the device registry (None fields = unchanged).

    Last-seen is the gateway's receive time, never the device's clock: a hub whose clock
    runs ten years ahead would otherwise never be raised offline. A retained message (the
    broker's copy, delivered when the gateway subscribes) may be old, so its device time
    can make it *older* than receipt, never newer. The daily test alarm likewise.
    """
    seen_ms = min(msg.ts_ms, recv_ms) if retained else recv_ms
    u = DeviceUpdate(msg.site_id, msg.device_id, seen_ms)
    u.clock_skew_ms = clock_skew_ms(msg, recv_ms, retained)
    if isinstance(msg, contract.Health):
        d = msg.data
        u.outbox_depth, u.uptime_s = d.outbox_depth, d.uptime_s
        u.fw = d.fw or None
        u.model_version = d.model_version or None
        batteries = [s.battery_pct for s in d.sensors.values() if s.battery_pct is not None]
        u.min_battery_pct = min(batteries) if batteries else None
        u.sensors = {
            k: {
                "battery_pct": s.battery_pct,
                "rssi_dbm": s.rssi_dbm,
                "status": s.status,
                "last_seen_ms": s.last_seen_ms,
            }
            for k, s in d.sensors.items()
        }
    elif isinstance(msg, contract.State):
        d2 = msg.data
        u.state, u.heartbeat_s, u.boot_id = d2.state, d2.heartbeat_s, msg.boot_id
        u.fw = d2.fw or None
        u.model_version = d2.model_version or None
    elif isinstance(msg, contract.TestAlarm):
        u.last_test_ms = min(msg.ts_ms, recv_ms)
    return u
