"""Storage schema and line-protocol serialisation (unit level, no services)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fallwatch.gateway.points import influx_point, to_line, to_points
from fallwatch.protocol import contract
from fallwatch.testing import publisher as t


def _points(topic_payload: tuple[str, bytes]) -> list[tuple]:
    topic, payload = topic_payload
    return to_points(contract.decode(topic, payload), contract.now_ms())


def test_schema_tags_are_bounded_and_ids_are_fields() -> None:
    ((m, tags, fields, ts),) = _points(t.fall("site-a", "hub-1", 5, ts_ms=1_700_000_000_123))
    assert m == "fall_alert" and ts == 1_700_000_000_123
    assert set(tags) == {"site_id", "device_id", "sensor", "status"}
    assert {"event_id", "msg_id", "resident_id", "seq", "confidence", "peak_g", "lying_s", "reasons", "model"} <= set(
        fields
    )
    ((m, tags, fields, _),) = _points(t.tele("site-a", "hub-1", 6))
    assert m == "telemetry" and set(tags) == {"site_id", "device_id", "sensor", "room"}
    assert fields["steps"] == 12.0 and isinstance(fields["steps"], float)  # ints stored as floats
    assert fields["active"] is True
    hp = _points(t.health("site-a", "hub-1", 7))
    assert [p[0] for p in hp] == ["health", "sensor_health"] and hp[1][1]["sensor"] == "wear-r01"


def test_non_finite_values_are_rejected_not_dropped() -> None:
    env = {
        "schema": 1,
        "site_id": "s",
        "device_id": "d",
        "boot_id": 1,
        "seq": 1,
        "msg_id": "d:1",
        "ts_ms": 1,
        "sent_ms": 1,
    }
    msg = contract.Telemetry(**env, data=contract.TeleData(sensor="x", window_s=1.0, fields={"a": math.inf}))
    with pytest.raises(contract.ContractError) as err:
        to_points(msg, 0)
    assert err.value.reason == "invalid_payload"


tag_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
field_value = st.one_of(
    st.floats(), st.booleans(), tag_text, st.integers(-(2**62), 2**62), st.none()
)


@settings(deadline=None)  # no timing in tests (the first example imports influxdb-client)
@given(
    # the gateway's own line protocol (issue 16: influxdb-client is no longer imported to write
    # to 1.x) against the client's Point, on awkward names and values too (non-finite floats
    # and None are left out of a line, as the client does)
    measurement=st.sampled_from(["telemetry", "risk", "a b,c", "t\\x"]),
    tags=st.dictionaries(st.sampled_from(["site_id", "device_id", "room", "a b", "c,d", "e=f"]), tag_text, max_size=4),
    fields=st.dictionaries(tag_text, field_value, min_size=1, max_size=5),
    ts=st.integers(0, 2**42),
)
def test_cached_serialisation_equals_influxdb_client_point(
    measurement: str, tags: dict[str, str], fields: dict[str, object], ts: int
) -> None:
    p = (measurement, tags, fields, ts)
    assert to_line(p) == influx_point(p).to_line_protocol()
    assert "\n" not in to_line(p)
