"""One way to build a paho-mqtt client from :class:`~fallwatch.config.MqttConfig`.

Edge and gateway both need the same things from a connection (MQTT 5 or 3.1.1,
persistent session, credentials, TLS, reconnect with backoff, a last will), so it
is set up here once. paho does the protocol; this module only applies our policy.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fallwatch.config import MqttConfig


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True
    delay_s: int = 0


#: The paho boundary: every fallwatch MQTT client is built by this callable (paho's
#: ``Client`` signature). Broker-free unit tests swap in
#: :class:`fallwatch.testing.fake_mqtt.FakeBroker`'s factory; nothing else should.
client_factory: Callable[..., mqtt.Client] = mqtt.Client


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho's Properties.__init__ has no annotations


def is_v5(cfg: MqttConfig) -> bool:
    return cfg.protocol == "5"


def make_client(cfg: MqttConfig, client_id: str, *, will: Will | None = None,
                clean_start: bool = False, manual_ack: bool = False) -> mqtt.Client:
    """A paho client with fallwatch's connection policy applied (not yet connected).

    ``clean_start=False`` + a long session expiry keep QoS 1 messages queued at the
    broker while we are away; paho's own retry of unacknowledged publishes lives in
    memory only, which is why the edge keeps a durable outbox on top of it.
    """
    v5 = is_v5(cfg)
    client = client_factory(
        CallbackAPIVersion.VERSION2,
        client_id=cfg.client_id or client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else clean_start,
        manual_ack=manual_ack,
    )
    if cfg.username is not None:
        client.username_pw_set(cfg.username, cfg.password)
    if cfg.use_tls:
        tls = cfg.tls
        client.tls_set(
            ca_certs=str(tls.ca_file) if tls else None,
            certfile=str(tls.cert_file) if tls and tls.cert_file else None,
            keyfile=str(tls.key_file) if tls and tls.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        if tls and tls.insecure_skip_verify:
            client.tls_insecure_set(True)
    if will is not None:
        props = None
        if v5 and will.delay_s:
            props = _properties(PacketTypes.WILLMESSAGE)
            props.WillDelayInterval = will.delay_s
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain, properties=props)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    client.max_queued_messages_set(0)
    return client


def connect(client: mqtt.Client, cfg: MqttConfig, *, clean_start: bool = False) -> None:
    """Start connecting (asynchronously); paho's loop reconnects with backoff afterwards."""
    if is_v5(cfg):
        props = _properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = cfg.session_expiry_s
        client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s, clean_start=clean_start,
                             properties=props)
    else:
        client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)


def publish_properties(cfg: MqttConfig, *, expiry_s: int | None = None,
                       schema: str = "fallwatch/1") -> Properties | None:
    """MQTT 5 properties every fallwatch message carries (None on 3.1.1)."""
    if not is_v5(cfg):
        return None
    props = _properties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
    props.UserProperty = [("schema", schema)]
    if expiry_s is not None:
        props.MessageExpiryInterval = expiry_s
    return props
