r"""The one id pattern: sites, devices, sensors, residents, rooms, gateways.

Lower-case letters, digits and ``-``, starting with a letter or digit, at most 63
characters (the Homie convention): safe as an MQTT topic level, in broker ACL patterns,
as an InfluxDB tag value and in a file name. Every layer checks ids with this pattern
(the contract, topics, frames, config, scenarios) so they cannot disagree.

The end anchor is ``\Z``, not ``$``: Python's ``$`` also matches before a trailing
newline, so ``"hub-1\n"`` passed msgspec (which searches with Python ``re``) and
``ID_RE.match`` and could inject a line into a log or a config file. Rust's regex (the
pydantic default) has no ``\Z``, so every pydantic model that uses this pattern sets
``regex_engine="python-re"``: one pattern, one meaning, everywhere (a model that forgets
fails at import with a SchemaError, never silently).
"""

from __future__ import annotations

import re

__all__ = ["ID_PATTERN", "ID_RE", "is_id"]

ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}\Z"
ID_RE = re.compile(ID_PATTERN)


def is_id(value: str) -> bool:
    return ID_RE.fullmatch(value) is not None
