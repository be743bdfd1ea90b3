"""Issue 11 item 13: an id never ends in a newline, on the msgspec path and the pydantic path."""

from __future__ import annotations

import json

import pytest

from fallwatch.config import ConfigError, load_config
from fallwatch.protocol import contract, ids, topics
from fallwatch.testing import publisher as t


@pytest.mark.parametrize("bad", ["hub-1\n", "hub-1\r", "\nhub-1", "hub-1 ", "Hub-1", "", "-hub", "a" * 64])
def test_is_id_rejects(bad: str) -> None:
    assert not ids.is_id(bad)


def test_is_id_accepts() -> None:
    assert ids.is_id("hub-1") and ids.is_id("a" * 63) and ids.is_id("0")


def test_contract_rejects_an_id_with_a_trailing_newline() -> None:
    topic, payload = t.health("site-a", "hub-1", 1)
    doc = json.loads(payload)
    doc["resident_id"] = "r07\n"
    with pytest.raises(contract.ContractError):
        contract.decode(topic, json.dumps(doc).encode())
    doc = json.loads(payload)
    doc["site_id"] = "site-a\n"
    with pytest.raises(contract.ContractError):
        contract.decode(topic, json.dumps(doc).encode())


def test_topics_reject_an_id_with_a_trailing_newline() -> None:
    with pytest.raises(ValueError):
        topics.check_level("hub-1\n", "device id")


def test_config_rejects_an_id_with_a_trailing_newline() -> None:
    with pytest.raises(ConfigError, match="device_id"):
        load_config(overrides={"edge": {"device_id": "hub-1\n"}})
    with pytest.raises(ConfigError, match="gateway_id"):
        load_config(overrides={"gateway": {"gateway_id": "gw-1\n"}})
