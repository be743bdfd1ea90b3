"""``zigbee2mqtt``: room sensors on the hub's local MQTT bus, as room-event frames."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Literal

import msgspec

from fallwatch.config import EdgeConfig, EdgeRoomSensor, MqttConfig
from fallwatch.edge.sources._base import SOURCES, LiveSource
from fallwatch.plugins import PluginConfig
from fallwatch.protocol.frames import STATE_KEYS, RoomEvent, encode_room

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt


class Zigbee2MqttConfig(PluginConfig):
    type: Literal["zigbee2mqtt"] = "zigbee2mqtt"
    bus_url: str = "mqtt://127.0.0.1:1883"  # the local bus broker
    base_topic: str = "zigbee2mqtt"


class Zigbee2MqttSource(LiveSource):
    """Room sensors published by zigbee2mqtt on the hub's local bus.

    zigbee2mqtt publishes ``<base_topic>/<friendly name>`` with flat JSON
    (``{"occupancy": true, "battery": 97, "linkquality": 120}``); each configured room
    sensor maps a friendly name to our id, kind and room. The JSON is wrapped into the
    room-event frame format (identity + ``t_ms`` added) and goes through the same strict
    decoder as simulated frames; unknown devices are counted, not guessed at.
    """

    def __init__(self, cfg: Zigbee2MqttConfig, edge: EdgeConfig, *, duration_s: float | None = None,
                 mqtt_cfg: MqttConfig | None = None, tick_s: float = 0.2) -> None:
        super().__init__(edge.device_id, tick_s)
        from fallwatch.mqtt import connect, make_client

        self.base = cfg.base_topic.rstrip("/")
        self.by_topic: dict[str, EdgeRoomSensor] = {f"{self.base}/{r.topic or r.id}": r for r in edge.room_sensors}
        bus = mqtt_cfg or MqttConfig(url=cfg.bus_url, protocol="3.1.1")
        self.unknown = 0
        self.bad = 0
        self.client = make_client(bus, f"fallwatch-{edge.device_id}-z2m", clean_start=True)
        self.client.on_connect = lambda c, *a: c.subscribe(f"{self.base}/+", qos=0)
        self.client.on_message = self._on_message
        connect(self.client, bus, clean_start=True)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        spec = self.by_topic.get(msg.topic)
        if spec is None:
            if not msg.topic.startswith(f"{self.base}/bridge"):
                self.unknown += 1
            return
        try:
            state = msgspec.json.decode(msg.payload, type=dict[str, object])
        except msgspec.DecodeError:
            self.bad += 1
            return
        # the room-event frame carries only the contract's state keys (illuminance etc. are dropped)
        kept = {k: v for k, v in state.items() if k in STATE_KEYS and isinstance(v, bool | int | float)}
        payload = encode_room(RoomEvent(spec.id, spec.kind, spec.room, int(time.time() * 1000), kept))
        self.put(spec.id, "zigbee", payload)

    def close(self) -> None:
        super().close()
        self.client.disconnect()
        self.client.loop_stop()


SOURCES.register(Zigbee2MqttConfig)(Zigbee2MqttSource)
