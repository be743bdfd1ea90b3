"""Sensor sources: where a hub's frames come from, behind one small interface.

A source yields ``(frames, now_s)`` batches: the :class:`~fallwatch.protocol.frames.SensorFrame`
objects received since the previous batch and the hub clock at the end of it. Live
sources yield at least every ``tick_s`` even when nothing arrived, so the agent's timers
(cancel window, heartbeat, telemetry) run on quiet nights too.

``edge.source.type`` in the config picks one from :data:`SOURCES` (a
:class:`fallwatch.plugins.Registry`). Adding a source (a real BLE central, a serial
dongle, another bus) is one new module in this package: a :class:`~fallwatch.plugins.PluginConfig`
subclass with ``type: Literal["name"]`` and its own keys, a class with ``batches()`` and
``close()``, and ``SOURCES.register(TheConfig)(TheSource)``. Nothing else changes: the
config validation, ``fallwatch edge run --source`` and the docs' list come from the registry.

* ``replay``: a recorded frame log (``fallwatch sim record`` writes one).
* ``zigbee2mqtt``: room sensors on the hub's local MQTT bus, converted to the same
  room-event frames the simulator produces, so one decoder serves both.
* ``ble``: the place for the wearable radio (refuses to start on this build).
* ``sim``: the simulated fleet. The edge must not import the simulator, so this one lives
  in the composition layer (:mod:`fallwatch.app.sim_source`) and the ``fallwatch``
  command registers it.
"""

from fallwatch.edge.sources._base import (
    SOURCES,
    LiveSource,
    SensorSpec,
    Source,
    configured_sensors,
    make_source,
    source_config,
)
from fallwatch.edge.sources.ble import BleConfig, BleSource
from fallwatch.edge.sources.replay import FrameReplaySource, ReplayConfig
from fallwatch.edge.sources.zigbee2mqtt import Zigbee2MqttConfig, Zigbee2MqttSource

__all__ = [
    "SOURCES",
    "BleConfig",
    "BleSource",
    "FrameReplaySource",
    "LiveSource",
    "ReplayConfig",
    "SensorSpec",
    "Source",
    "Zigbee2MqttConfig",
    "Zigbee2MqttSource",
    "configured_sensors",
    "make_source",
    "source_config",
]
