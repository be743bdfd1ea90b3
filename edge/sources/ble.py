"""``ble``: the place for a real wearable radio (not implemented on this build)."""

from __future__ import annotations

from typing import Literal

from fallwatch.config import EdgeConfig
from fallwatch.edge.sources._base import SOURCES, LiveSource
from fallwatch.plugins import PluginConfig


class BleConfig(PluginConfig):
    type: Literal["ble"] = "ble"


class BleSource(LiveSource):
    """The place for a real wearable radio (BLE GATT notifications, or a serial dongle).

    An implementation connects to each configured wearable, subscribes to its IMU
    characteristic and calls ``self.put(sensor_id, "ble", payload)`` with each
    notification's bytes (the frame format of :func:`fallwatch.protocol.frames.decode_imu`).
    Everything after that — reordering, clock, faults, detection — is shared. A BLE
    stack (e.g. ``bleak``) is not a dependency yet, so this refuses to start.
    """

    def __init__(self, cfg: BleConfig, edge: EdgeConfig, *, duration_s: float | None = None,
                 tick_s: float = 0.2) -> None:
        raise NotImplementedError("BLE source not implemented on this build: use sim, replay or zigbee2mqtt")


SOURCES.register(BleConfig)(BleSource)
