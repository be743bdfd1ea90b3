"""The one id pattern: sites, devices, sensors, residents, rooms, gateways.

Lower-case letters, digits and ``-``, starting with a letter or digit, at most 63
characters (the Homie convention): safe as an MQTT topic level, in broker ACL patterns,
as an InfluxDB tag value and in a file name. Every layer checks ids with this pattern
(the contract, topics, frames, config, scenarios) so they cannot disagree.
"""

from __future__ import annotations

import re

__all__ = ["ID_PATTERN", "ID_RE", "is_id"]

ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
ID_RE = re.compile(ID_PATTERN)


def is_id(value: str) -> bool:
    return ID_RE.match(value) is not None
