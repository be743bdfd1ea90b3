"""Tell a running hub who wears its wearables now (``fallwatch device assign --push``,
``fallwatch device push-config``).

The registry's assignment goes into the hub's retained desired config (``…/config``,
:class:`~fallwatch.protocol.contract.RemoteConfig` ``wearers``), merged into whatever
config document is retained there already (an operator's cancel window stays), so the hub
applies it now if it is on line and again after every restart, and its next fall carries
the new resident. The tools connect as the gateway's ``{id}-config`` user: connecting as the
gateway's own user would take over the running gateway's session.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

from fallwatch.config import MqttConfig
from fallwatch.mqtt import make_client
from fallwatch.protocol import contract as C
from fallwatch.protocol import topics


class PushError(RuntimeError):
    pass


def push_wearers(cfg: MqttConfig, site_id: str, hub_id: str, wearers: dict[str, str | None], *,
                 timeout: float = 10.0) -> dict[str, Any]:
    """Merge ``wearers`` into the hub's retained desired config and publish it (retained,
    QoS 1); returns the document. Raises PushError if the broker did not take it."""
    topic = topics.config(site_id, hub_id)
    got: list[bytes] = []
    subscribed = threading.Event()
    connected = threading.Event()
    echoed = threading.Event()
    sent: dict[str, bytes] = {}

    answer: dict[str, Any] = {}

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        answer.setdefault("rc", rc)
        connected.set()

    def on_message(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        if "doc" in sent and m.payload == sent["doc"]:
            echoed.set()  # our own retained publish came back: the broker accepted it
        elif not subscribed.is_set() or m.retain:
            got.append(bytes(m.payload))

    client = make_client(cfg, f"push-{hub_id}", clean_start=True)
    client.on_connect = on_connect
    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    u = urlparse(cfg.url)
    try:
        client.connect(u.hostname or "localhost", u.port or (8883 if cfg.use_tls else 1883), 30)
    except OSError as exc:
        raise PushError(f"broker {cfg.url} unreachable: {exc}") from exc
    client.loop_start()
    try:
        if not connected.wait(timeout) or answer["rc"].is_failure:
            raise PushError(f"broker {cfg.url} refused user {cfg.username!r} ({answer.get('rc', 'no CONNACK')}; "
                            "FALLWATCH_MQTT_CONFIG_PASSWORD?)")
        client.subscribe(topic, qos=1)
        if not subscribed.wait(timeout):
            raise PushError("no SUBACK from the broker")
        time.sleep(0.5)  # the retained document, if any, follows the SUBACK
        current: dict[str, Any] = {}
        if got and got[-1]:
            try:
                current = json.loads(got[-1])
                C.decode_remote_config(got[-1])
            except (ValueError, C.ContractError) as exc:
                raise PushError(f"the retained config of {hub_id} is invalid ({exc}): fix or clear it first") from exc
        doc = {**current, "wearers": {**(current.get("wearers") or {}), **wearers},
               "version": f"registry-{C.now_ms()}"}
        payload = C.encode_downlink(msgspec_convert(doc))
        sent["doc"] = payload
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(timeout)
        if not echoed.wait(timeout):
            raise PushError(f"the broker did not accept the config for {hub_id} (ACL for user {cfg.username}?)")
        return doc
    finally:
        client.loop_stop()
        client.disconnect()


def msgspec_convert(doc: dict[str, Any]) -> C.RemoteConfig:
    import msgspec

    try:
        return msgspec.convert(doc, C.RemoteConfig)
    except msgspec.ValidationError as exc:
        raise PushError(f"invalid config document: {exc}") from exc
