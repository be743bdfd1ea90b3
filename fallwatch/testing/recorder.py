"""A subscriber that records what a hub really put on the broker (tests, benchmark, demo checks).

It decodes with the strict contract, so a test that counts alerts through it also checks
that every message the agent sends is valid, and it keeps the arrival time so the
benchmark can measure decision latency at the broker rather than inside the agent.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from fallwatch.config import MqttConfig
from fallwatch.mqtt import connect, make_client
from fallwatch.protocol import contract as C
from fallwatch.protocol import topics


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    msg: C.Message
    at: float  # time.monotonic() on arrival
    retain: bool
    dup: bool


class UplinkRecorder:
    """Subscribes to one site's (or every) uplink and keeps the decoded messages in order."""

    def __init__(self, cfg: MqttConfig, client_id: str, site: str = "+", device: str = "+",
                 persistent: bool = False) -> None:
        """``persistent``: keep the session at the broker (QoS 1 messages published while the
        recorder is disconnected, e.g. across a broker restart, are queued for it)."""
        self.cfg = cfg
        self.filters = [f.replace(f"{topics.PREFIX}/+/+", f"{topics.PREFIX}/{site}/{device}", 1)
                        for f in topics.UPLINK_FILTERS]
        self._clean = not persistent
        self.client = make_client(cfg, client_id, clean_start=self._clean)
        self.client.reconnect_delay_set(min_delay=0.2, max_delay=2)  # type: ignore[arg-type]  # an observer: come back fast
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.messages: list[Received] = []
        self.errors: list[tuple[str, str]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        client.subscribe([(f, 1) for f in self.filters])

    def _on_message(self, client: mqtt.Client, userdata: Any, m: mqtt.MQTTMessage) -> None:
        at = time.monotonic()
        try:
            msg = C.decode(m.topic, m.payload)
        except C.ContractError as exc:
            with self._cond:
                self.errors.append((m.topic, str(exc)))
            return
        with self._cond:
            self.messages.append(Received(m.topic, msg, at, bool(m.retain), bool(m.dup)))
            self._cond.notify_all()

    def start(self) -> UplinkRecorder:
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        connect(self.client, self.cfg, clean_start=self._clean)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("recorder did not subscribe within 10 s")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> UplinkRecorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def of_kind(self, kind: str, *, live_only: bool = False) -> list[Received]:
        with self._cond:
            return [r for r in self.messages if C.kind_of(r.msg) == kind and not (live_only and r.retain)]

    def falls(self, status: str | None = None) -> list[Received]:
        return [r for r in self.of_kind("fall")
                if isinstance(r.msg.data, C.FallData) and (status is None or r.msg.data.status == status)]

    def wait_for(self, pred: Any, timeout_s: float = 10.0) -> bool:
        """Wait until ``pred(self)`` is true."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not pred(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True
