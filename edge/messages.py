"""Every message the hub sends is built here: the envelope (ids, boot, seq, times) and the
topic of each kind, so the stages only say *what* they report.

The payload cannot be built before its ``seq`` is known (the envelope carries ``seq`` and
``msg_id``), so a stage gets a :class:`~fallwatch.edge.outbox.Pending` whose ``build(seq)``
the outbox calls inside the transaction that stores the row.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import msgspec

from fallwatch.edge.outbox import Pending
from fallwatch.protocol import contract as C
from fallwatch.protocol import topics

#: Envelope classes by body (the contract's tagged union members).
Envelope = Callable[..., C.Message]
StateName = Literal["ready", "offline", "lost"]


class WallClockWatch:
    """Notices the hub's wall clock stepping (an NTP step, a hub that booted with a dead RTC
    battery and was set right later, an operator's ``date -s``).

    Messages are stamped ``start_epoch_ms + hub seconds``, the hub seconds being monotonic:
    a step of the wall clock after start would otherwise never reach the stamps, so a hub
    that started with a wrong clock stamped everything wrong for as long as it ran, and the
    gateway could not tell (its ``sent_ms`` follows the system clock, the stamps did not).
    A step is a change of wall - monotonic by more than ``step_s``; slewing (NTP's gradual
    correction) stays below it and is picked up as it accumulates.
    """

    def __init__(self, step_s: float = 2.0, wall: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.step_ms = int(step_s * 1000)
        self._wall, self._mono = wall, mono
        self._offset_ms = self._now_offset_ms()

    def _now_offset_ms(self) -> int:
        return int((self._wall() - self._mono()) * 1000)

    def step(self) -> int:
        """The size of a step since the last call (ms; 0 = none)."""
        now = self._now_offset_ms()
        d = now - self._offset_ms
        if abs(d) < self.step_ms:
            return 0
        self._offset_ms = now
        return d


class Messages:
    """Envelopes and topics of one hub. ``boot_id`` and ``install_id`` are set once the outbox is open."""

    def __init__(self, site_id: str, device_id: str, start_epoch_ms: int) -> None:
        self.site_id = site_id
        self.device_id = device_id
        self.start_epoch_ms = start_epoch_ms
        self.boot_id = 0
        #: the outbox's installation id (part of ``msg_id``); None only before the outbox is open
        self.install_id: str | None = None
        # topics are checked and built once, not per message
        self.t_state = topics.state(site_id, device_id)
        self.t_health = topics.health(site_id, device_id)
        self.t_fall = topics.fall(site_id, device_id)
        self.t_risk = topics.risk(site_id, device_id)
        self.t_test = topics.test_alarm(site_id, device_id)
        self.t_ota_status = topics.ota_status(site_id, device_id)
        self._tele: dict[str, str] = {}

    def ts(self, t_s: float) -> int:
        """Wall time (epoch ms) of a hub-clock time."""
        return max(0, int(self.start_epoch_ms + t_s * 1000.0))

    def envelope(
        self, cls: Envelope, data: msgspec.Struct, seq: int, t_s: float, resident_id: str | None = None
    ) -> bytes:
        msg = cls(
            schema=C.SCHEMA_VERSION,
            site_id=self.site_id,
            device_id=self.device_id,
            resident_id=resident_id,
            boot_id=self.boot_id,
            seq=seq,
            msg_id=C.make_msg_id(self.device_id, seq, self.install_id),
            ts_ms=self.ts(t_s),
            sent_ms=C.now_ms(),
            data=data,
        )
        return C.encode(msg)

    def pending(
        self,
        kind: str,
        topic: str,
        cls: Envelope,
        data: msgspec.Struct,
        t_s: float,
        resident_id: str | None = None,
        retain: bool = False,
    ) -> Pending:
        return Pending(kind, topic, lambda seq: self.envelope(cls, data, seq, t_s, resident_id), retain=retain)

    # ------------------------------------------------------------------ one builder per kind

    @staticmethod
    def state_data(state: StateName, fw: str, model_version: str, heartbeat_s: float) -> C.StateData:
        return C.StateData(state=state, fw=fw, model_version=model_version[:40], heartbeat_s=heartbeat_s)

    def state(self, data: C.StateData, t_s: float) -> Pending:
        return self.pending("state", self.t_state, C.State, data, t_s, retain=True)

    def fall(self, data: C.FallData, t_s: float, resident_id: str | None) -> Pending:
        return self.pending("fall", self.t_fall, C.FallAlert, data, t_s, resident_id=resident_id)

    def risk(self, data: C.RiskData, t_s: float, resident_id: str | None) -> Pending:
        return self.pending("risk", self.t_risk, C.RiskScore, data, t_s, resident_id=resident_id)

    def health(self, data: C.HealthData, t_s: float) -> Pending:
        return self.pending("health", self.t_health, C.Health, data, t_s)

    def test_alarm(self, t_s: float) -> Pending:
        return self.pending("test", self.t_test, C.TestAlarm, C.TestData(), t_s)

    def tele(self, data: C.TeleData, t_s: float, resident_id: str | None = None) -> Pending:
        topic = self._tele.get(data.sensor)
        if topic is None:
            topic = self._tele[data.sensor] = topics.tele(self.site_id, self.device_id, data.sensor)
        return self.pending("tele", topic, C.Telemetry, data, t_s, resident_id=resident_id)

    def cmd_res(self, name: str, data: C.StatusData, t_s: float) -> Pending:
        return self.pending("cmd_res", topics.cmd_res(self.site_id, self.device_id, name), C.CommandResult, data, t_s)

    def ota_status(self, data: C.StatusData, t_s: float) -> Pending:
        return self.pending("ota_status", self.t_ota_status, C.OtaStatus, data, t_s)
