"""A publish the broker refuses: telemetry is given up (counted), an alert never."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from fallwatch.config import MqttConfig
from fallwatch.edge.outbox import Outbox, Pending
from fallwatch.edge.publisher import Publisher

NOT_AUTHORIZED = ReasonCode(PacketTypes.PUBACK, identifier=0x87)


def test_refused_alert_is_kept_and_reported_refused_telemetry_given_up(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    fall, tele = ob.append_many([Pending("fall", "t/evt/fall", lambda s: b"f"),
                                 Pending("tele", "t/tele/w", lambda s: b"t")])
    pub = Publisher(MqttConfig(url="mqtt://127.0.0.1:1"), ob, "c-1")
    pub._settle(fall, NOT_AUTHORIZED)
    pub._settle(tele, NOT_AUTHORIZED)
    assert ob.depth_by_kind() == {"fall": 1}  # the alert stays for the next attempt
    assert (pub.rejected, pub.refused, pub.refused_pending) == (1, 1, 1)
    assert pub.refusals() == [f"fall seq {fall} refused by the broker (Not authorized), retrying (attempt 1)"]
    pub._settle(fall, NOT_AUTHORIZED)  # refused again: backoff grows, still kept
    assert pub.refused == 2 and "attempt 2" in pub.refusals()[0]
    pub._settle(fall, ReasonCode(PacketTypes.PUBACK, identifier=0))  # taken at last
    assert pub.refused_pending == 0 and pub.refusals() == []
    ob.close()


def _publisher_with_a_fall(tmp_path: Path) -> tuple[Publisher, int]:
    ob = Outbox(tmp_path / "o.sqlite")
    (fall,) = ob.append_many([Pending("fall", "t/evt/fall", lambda s: b"f")])
    pub = Publisher(MqttConfig(url="mqtt://127.0.0.1:1"), ob, "c-1")
    pub._send(ob.peek(0, 10, lane="prio"), "prio", None)  # handed to paho (not connected: it holds it)
    return pub, fall


def test_an_alert_waiting_long_for_its_puback_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refusal can close the socket before its PUBACK leaves: the alert then sits in flight
    with no answer at all, and that delay must show in health too."""
    pub, fall = _publisher_with_a_fall(tmp_path)
    assert pub.refusals() == []
    real = time.monotonic
    monkeypatch.setattr(time, "monotonic", lambda: real() + 11.0)
    (line,) = pub.refusals()
    assert line.startswith(f"fall seq {fall} not acknowledged by the broker for ")
