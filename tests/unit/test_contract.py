"""The edge↔gateway contract: what is accepted, and the exact reason for what is not."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fallwatch.protocol import contract as c
from fallwatch.protocol import topics


def _alert(**over: object) -> c.FallAlert:
    base: dict[str, object] = dict(
        schema=1, site_id="home-1", device_id="hub-1", resident_id="r01", boot_id=2, seq=41,
        msg_id="hub-1:41", ts_ms=1_795_000_000_000, sent_ms=1_795_000_000_010,
        data=c.FallData(event_id="e1", status="alert", impact_ms=1_794_999_990_000, confidence=0.9,
                        peak_g=3.1, reasons=[c.Reason("impact", "3.1 g", 0.4)]),
    )
    base.update(over)
    return c.FallAlert(**base)  # type: ignore[arg-type]  # fields assembled from a dict on purpose


TOPIC = topics.fall("home-1", "hub-1")


def test_round_trip_keeps_every_field() -> None:
    msg = _alert()
    assert c.decode(TOPIC, c.encode(msg)) == msg
    assert c.kind_of(msg) == "fall"


def _reason(topic: str, payload: bytes) -> str:
    with pytest.raises(c.ContractError) as exc:
        c.decode(topic, payload)
    assert exc.value.detail  # every rejection says why
    return exc.value.reason


def test_rejections_carry_precise_reasons() -> None:
    good = msgspec.json.decode(c.encode(_alert()))
    enc = msgspec.json.encode
    assert _reason(TOPIC, b"{not json") == "bad_json"
    assert _reason(TOPIC, b"[1,2]") == "invalid_payload"
    assert _reason(TOPIC, enc({**good, "schema": 2})) == "unsupported_version"
    assert _reason(TOPIC, enc({**good, "surprise": 1})) == "invalid_payload"
    assert _reason(TOPIC, enc({**good, "seq": "41"})) == "invalid_payload"
    assert _reason(TOPIC, enc({**good, "msg_id": "hub-1:40"})) == "invalid_payload"
    assert _reason(TOPIC, enc({**good, "data": {**good["data"], "confidence": 1.5}})) == "invalid_payload"
    assert _reason(topics.fall("home-1", "hub-2"), enc(good)) == "topic_mismatch"
    assert _reason(topics.health("home-1", "hub-1"), enc(good)) == "topic_mismatch"
    assert _reason("fallwatch/v9/home-1/hub-1/evt/fall", enc(good)) == "bad_topic"
    assert _reason("something/else", enc(good)) == "bad_topic"
    assert _reason(topics.cmd_req("home-1", "hub-1", "ping"), enc(good)) == "bad_topic"
    assert _reason(TOPIC, b" " * (c.MAX_PAYLOAD_BYTES + 1)) == "too_large"


def test_telemetry_sensor_must_match_topic() -> None:
    tele = c.Telemetry(schema=1, site_id="s", device_id="d", boot_id=0, seq=1, msg_id="d:1", ts_ms=1,
                       sent_ms=1, data=c.TeleData(sensor="wear-1", window_s=10, fields={"acc_mean": 1.0}))
    assert c.decode(topics.tele("s", "d", "wear-1"), c.encode(tele)) == tele
    assert _reason(topics.tele("s", "d", "wear-2"), c.encode(tele)) == "topic_mismatch"


def test_topic_levels_are_validated() -> None:
    with pytest.raises(topics.TopicError):
        topics.fall("Home 1", "hub-1")
    with pytest.raises(topics.TopicError):
        topics.tele("s", "d", "a/b")
    p = topics.parse(topics.tele("s", "d", "pir-kitchen"))
    assert (p.site, p.device, p.kind, p.sub) == ("s", "d", "tele", "pir-kitchen")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_escape_as_anything_but_contract_error(blob: bytes) -> None:
    try:
        c.decode(TOPIC, blob)
    except c.ContractError as exc:
        assert exc.reason in {"bad_json", "invalid_payload", "unsupported_version", "too_large",
                              "topic_mismatch"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["kind", "schema", "seq", "data", "device_id", "x"]), json_values))
def test_structured_garbage_is_rejected_cleanly(obj: dict[str, object]) -> None:
    with pytest.raises(c.ContractError):
        c.decode(TOPIC, msgspec.json.encode(obj))


def test_model_update_is_a_contract_document_and_only_for_the_fall_model() -> None:
    manifest = c.ModelManifest(model="fall", version="1.2.0", sha256="ab" * 32, size=10, expires_ms=1)
    doc = c.encode_downlink(c.ModelUpdate(manifest=manifest, signature="c2ln", model_b64="AAAA"))
    assert c.decode_model_update(doc).manifest == manifest
    # the signed bytes do not depend on field order or spacing in the document
    assert c.manifest_bytes(manifest) == (b'{"expires_ms":1,"model":"fall","sha256":"' + b"ab" * 32
                                          + b'","size":10,"version":"1.2.0"}')
    risk = doc.replace(b'"model":"fall"', b'"model":"risk"')
    with pytest.raises(c.ContractError, match=r"model"):
        c.decode_model_update(risk)
    with pytest.raises(c.ContractError):
        c.decode_model_update(doc.replace(b'"signature"', b'"extra":1,"signature"'))
