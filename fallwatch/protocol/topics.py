"""The MQTT topic tree shared by edge, gateway and simulator.

Every topic is built and parsed here so that the three cannot disagree. Levels are
restricted to ``[a-z0-9-]`` (Homie convention) so they are safe in ACL patterns and
as InfluxDB tag values; the version level (``v1``) lets a v2 tree run side by side
during a migration.

    fallwatch/v1/{site}/{device}/state            retained, QoS 1 (birth / last will)
    fallwatch/v1/{site}/{device}/health           QoS 1, heartbeat
    fallwatch/v1/{site}/{device}/tele/{sensor}    QoS 1, telemetry summaries
    fallwatch/v1/{site}/{device}/evt/fall         QoS 1, fall alerts (never expire)
    fallwatch/v1/{site}/{device}/evt/risk         QoS 1, daily fall-risk scores
    fallwatch/v1/{site}/{device}/evt/test         QoS 1, daily silent end-to-end test alarm
    fallwatch/v1/{site}/{device}/cmd/req/{name}   downlink commands (QoS 1, expiring)
    fallwatch/v1/{site}/{device}/cmd/res/{name}   command replies
    fallwatch/v1/{site}/{device}/config           retained desired config (downlink)
    fallwatch/v1/{site}/{device}/ota/model        retained signed model manifest (downlink)
    fallwatch/v1/{site}/{device}/ota/status       model update status (uplink)
    fallwatch/v1/_dlq/{reason}                    dead letters published by the gateway
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from fallwatch.protocol.ids import ID_RE

ROOT = "fallwatch"
VERSION = "v1"
PREFIX = f"{ROOT}/{VERSION}"


class TopicError(ValueError):
    """A topic that is not part of the fallwatch tree."""


def check_level(value: str, what: str = "topic level") -> str:
    if not ID_RE.fullmatch(value):
        raise TopicError(f"invalid {what} {value!r}: must match [a-z0-9][a-z0-9-]* (max 63 chars)")
    return value


def device_base(site: str, device: str) -> str:
    return f"{PREFIX}/{check_level(site, 'site id')}/{check_level(device, 'device id')}"


def state(site: str, device: str) -> str:
    return f"{device_base(site, device)}/state"


def health(site: str, device: str) -> str:
    return f"{device_base(site, device)}/health"


def tele(site: str, device: str, sensor: str) -> str:
    return f"{device_base(site, device)}/tele/{check_level(sensor, 'sensor')}"


def fall(site: str, device: str) -> str:
    return f"{device_base(site, device)}/evt/fall"


def risk(site: str, device: str) -> str:
    return f"{device_base(site, device)}/evt/risk"


def test_alarm(site: str, device: str) -> str:
    return f"{device_base(site, device)}/evt/test"


def cmd_req(site: str, device: str, name: str) -> str:
    return f"{device_base(site, device)}/cmd/req/{check_level(name, 'command')}"


def cmd_res(site: str, device: str, name: str) -> str:
    return f"{device_base(site, device)}/cmd/res/{check_level(name, 'command')}"


def config(site: str, device: str) -> str:
    return f"{device_base(site, device)}/config"


def ota_model(site: str, device: str) -> str:
    return f"{device_base(site, device)}/ota/model"


def ota_status(site: str, device: str) -> str:
    return f"{device_base(site, device)}/ota/status"


#: Everything below it is a dead letter published by a gateway (never by a device).
DLQ_PREFIX = f"{PREFIX}/_dlq/"


def dead_letter(reason: str) -> str:
    return f"{DLQ_PREFIX}{reason}"


#: What a gateway subscribes to: every uplink of every device of every site.
UPLINK_FILTERS = (
    f"{PREFIX}/+/+/state",
    f"{PREFIX}/+/+/health",
    f"{PREFIX}/+/+/tele/+",
    f"{PREFIX}/+/+/evt/+",
    f"{PREFIX}/+/+/cmd/res/+",
    f"{PREFIX}/+/+/ota/status",
)


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    site: str
    device: str
    kind: str  # "state", "health", "tele", "evt/fall", ...
    sub: str | None  # sensor for tele, command name for cmd/*


#: topics longer than this are parsed every time, never cached (a hub may send 64 KB topics)
_CACHE_TOPIC_LEN = 256


def parse(topic: str) -> ParsedTopic:
    """Split an uplink topic; raises TopicError for anything outside the tree.

    Cached (the answer is immutable, errors are not cached): a gateway sees the same few
    topics per hub over and over and parsed each message's topic twice (issue 16). Only
    topics of up to 256 characters, 16,384 of them: ~10 MB at most, and a hub inventing
    topics only evicts older ones.
    """
    return _parse_cached(topic) if len(topic) <= _CACHE_TOPIC_LEN else _parse(topic)


@functools.lru_cache(maxsize=16_384)
def _parse_cached(topic: str) -> ParsedTopic:
    return _parse(topic)


def _parse(topic: str) -> ParsedTopic:
    parts = topic.split("/")
    if len(parts) < 5 or parts[0] != ROOT:
        raise TopicError(f"not a fallwatch topic: {topic!r}")
    if parts[1] != VERSION:
        raise TopicError(f"unsupported topic version {parts[1]!r} in {topic!r}")
    site, device, rest = parts[2], parts[3], parts[4:]
    if not (ID_RE.match(site) and ID_RE.match(device)):
        raise TopicError(f"invalid site/device level in {topic!r}")
    head = rest[0]
    if head in ("state", "health") and len(rest) == 1:
        return ParsedTopic(site, device, head, None)
    if head == "tele" and len(rest) == 2:
        return ParsedTopic(site, device, "tele", rest[1])
    if head == "evt" and len(rest) == 2 and rest[1] in ("fall", "risk", "test"):
        return ParsedTopic(site, device, f"evt/{rest[1]}", None)
    if head == "cmd" and len(rest) == 3 and rest[1] in ("req", "res"):
        return ParsedTopic(site, device, f"cmd/{rest[1]}", rest[2])
    if head == "ota" and len(rest) == 2 and rest[1] in ("model", "status"):
        return ParsedTopic(site, device, f"ota/{rest[1]}", None)
    if head == "config" and len(rest) == 1:
        return ParsedTopic(site, device, "config", None)
    raise TopicError(f"unknown topic kind in {topic!r}")


# ---------------------------------------------------------------- downlinks (to one hub)


def cmd_req_filter(site: str, device: str) -> str:
    """Every command request to one hub (what the hub subscribes to)."""
    return f"{device_base(site, device)}/cmd/req/+"


def downlink_filters(site: str, device: str) -> tuple[str, ...]:
    """What a hub subscribes to: its desired config, its model updates, its commands."""
    return (config(site, device), ota_model(site, device), cmd_req_filter(site, device))


# ---------------------------------------------------------------- gateway-published topics
# (the gateway's own presence; dead letters are ``dead_letter(reason)`` above)

#: Everything below it is published by gateways, never by devices.
GATEWAY_PREFIX = f"{PREFIX}/_gw/"


def gateway_state(gateway_id: str) -> str:
    """``fallwatch/v1/_gw/{gateway_id}/state``: retained presence, payload ``contract.GatewayPresence``."""
    return f"{GATEWAY_PREFIX}{check_level(gateway_id, 'gateway id')}/state"
