"""An MQTT topic for staff apps: the event as JSON, published at QoS 1.

The channel has its own broker connection (it may be another broker than the devices'),
and its topic must lie outside the device tree ``fallwatch/v1/<site>/…`` so no device ACL
can reach it: the default is ``fallwatch/v1/_staff/alerts`` (``_staff`` can never be a
site id).

::

    [[gateway.channels]]
    type = "mqtt"
    url = "mqtts://staff-broker.example.org:8883"
    username = "fallwatch-staff"
    password_env = "FALLWATCH_STAFF_MQTT_PASSWORD"   # or password_file (chmod 600)
    topic = "fallwatch/v1/_staff/alerts"
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Literal

import paho.mqtt.client as paho
from pydantic import Field, field_validator, model_validator

from fallwatch.config import MqttConfig
from fallwatch.gateway.channels import CHANNELS, AlertEvent, Channel, ChannelContext
from fallwatch.gateway.channels._common import event_json, read_secret
from fallwatch.gateway.channels._queue import QueuedChannel, QueuedChannelConfig
from fallwatch.mqtt import connect, make_client, publish_properties
from fallwatch.protocol import ids, topics

DEFAULT_TOPIC = f"{topics.PREFIX}/_staff/alerts"


def check_staff_topic(topic: str) -> str:
    levels = topic.split("/")
    if not topic or topic.startswith("$") or any(c in topic for c in "+#\x00") or "" in levels:
        raise ValueError("must be a plain topic: no wildcards, no empty levels, not starting with $")
    if topic.startswith(f"{topics.PREFIX}/") and len(levels) > 2 and ids.is_id(levels[2]):
        raise ValueError(f"must not be under the device tree {topics.PREFIX}/<site>/… "
                         f"(use e.g. {DEFAULT_TOPIC})")
    return topic


class MqttChannelConfig(QueuedChannelConfig):
    type: Literal["mqtt"] = "mqtt"
    url: str = Field(min_length=1)
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    client_id: str | None = None
    protocol: Literal["5", "3.1.1"] = "5"
    topic: str = DEFAULT_TOPIC
    publish_timeout_s: float = Field(default=10.0, gt=0, le=300)

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        return check_staff_topic(v)

    @model_validator(mode="after")
    def _check(self) -> MqttChannelConfig:
        MqttConfig(url=self.url, username=self.username)  # the same URL rules as the device link
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give password_env or password_file, not both")
        if (self.password_env or self.password_file) and not self.username:
            raise ValueError("a password needs a username")
        return self


class MqttChannel(QueuedChannel):
    def __init__(self, cfg: MqttChannelConfig, ctx: ChannelContext) -> None:
        self.cfg = cfg
        password = read_secret("mqtt channel password", cfg.password_env, cfg.password_file)
        self.mqtt_cfg = MqttConfig(url=cfg.url, username=cfg.username, password=password, client_id=cfg.client_id,
                                   protocol=cfg.protocol)
        self.connected = threading.Event()
        self.client = make_client(self.mqtt_cfg, f"{ctx.gateway_id}-staff"[:64], clean_start=False)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        connect(self.client, self.mqtt_cfg)
        self.client.loop_start()
        super().__init__(cfg, cfg.topic)

    def _on_connect(self, client: paho.Client, userdata: object, flags: object, rc: object,
                    props: object = None) -> None:
        if not getattr(rc, "is_failure", False):
            self.connected.set()

    def _on_disconnect(self, *args: object) -> None:
        self.connected.clear()

    def send_to(self, event: AlertEvent, address: str) -> str:
        topic = check_staff_topic(f"{self.cfg.topic}/{address}") if address else self.cfg.topic
        if not self.connected.wait(self.cfg.publish_timeout_s):
            raise ConnectionError(f"not connected to {self.mqtt_cfg.host}:{self.mqtt_cfg.port}")
        info = self.client.publish(topic, event_json(event), qos=1,
                                   properties=publish_properties(self.mqtt_cfg))
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish failed: {paho.error_string(info.rc)}")
        info.wait_for_publish(self.cfg.publish_timeout_s)
        if not info.is_published():
            raise TimeoutError("no PUBACK in time")
        return "PUBACK"

    def close(self) -> None:
        super().close()
        self.client.disconnect()
        self.client.loop_stop()


@CHANNELS.register(MqttChannelConfig)
def _make(cfg: MqttChannelConfig, ctx: ChannelContext) -> Channel:
    return MqttChannel(cfg, ctx)
