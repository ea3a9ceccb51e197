from __future__ import annotations

import pytest

from monitor.config import EventsConfig, FieldMap
from monitor.events import REASONS, Decoder, InvalidEvent, parse_ts


def reason(decoder: Decoder, raw: bytes | str) -> str:
    with pytest.raises(InvalidEvent) as info:
        decoder.decode(raw)
    return info.value.reason


D = Decoder(EventsConfig(models=["asr-en", "m2"]))


def test_the_product_example_decodes() -> None:
    ev = D.decode(b'{"type": "prediction", "id": "utt-00042", "ts": "2026-11-24T10:00:00.250Z", "model": "asr-en",'
                  b' "tenant": "st-marys", "attributes": {"accent": "philadelphia", "device": "handset-a",'
                  b' "noise": "ward-b"}, "output": "the patient reports mild pain", "score": 0.91}')
    assert ev.kind == "prediction" and ev.id == "utt-00042" and ev.tenant == "st-marys"
    assert ev.ts == parse_ts("2026-11-24T10:00:00.250Z")
    assert ev.attributes == {"accent": "philadelphia", "device": "handset-a", "noise": "ward-b"}
    fb = D.decode('{"type": "feedback", "id": "utt-00042", "ts": "2026-11-24T13:12:09Z",'
                  ' "label": "the patient reports mild back pain", "attributes": {"self_reported_gender": "female"}}')
    assert fb.model is None and fb.label.endswith("back pain") and fb.ts - ev.ts == pytest.approx(11528.75)


@pytest.mark.parametrize("raw, expected", [
    (b'{"type": "prediction", "id": 1', "bad_json"),
    (b'[1, 2]', "not_an_object"),
    (b'{"type": "metrics", "id": "a", "ts": 1}', "bad_type"),
    (b'{"id": "a", "ts": 1}', "bad_type"),
    (b'{"type": "prediction", "ts": 1, "model": "asr-en", "output": "x"}', "missing_id"),
    (b'{"type": "prediction", "id": 1.5, "ts": 1, "model": "asr-en", "output": "x"}', "bad_id"),
    (b'{"type": "prediction", "id": "a", "model": "asr-en", "output": "x"}', "missing_timestamp"),
    (b'{"type": "prediction", "id": "a", "ts": "tuesday", "model": "asr-en", "output": "x"}', "bad_timestamp"),
    (b'{"type": "prediction", "id": "a", "ts": "2026-11-24T10:00:00", "model": "asr-en", "output": "x"}', "bad_timestamp"),
    (b'{"type": "prediction", "id": "a", "ts": -5, "model": "asr-en", "output": "x"}', "bad_timestamp"),
    (b'{"type": "prediction", "id": "a", "ts": 1, "output": "x"}', "missing_model"),
    (b'{"type": "prediction", "id": "a", "ts": 1, "model": 7, "output": "x"}', "bad_model"),
    (b'{"type": "prediction", "id": "a", "ts": 1, "model": "other", "output": "x"}', "unknown_model"),
    (b'{"type": "prediction", "id": "a", "ts": 1, "model": "asr-en", "tenant": [1], "output": "x"}', "bad_tenant"),
    (b'{"type": "prediction", "id": "a", "ts": 1, "model": "asr-en", "attributes": "x", "output": "x"}', "bad_attributes"),
    (b'{"type": "prediction", "id": "a", "ts": 1, "model": "asr-en", "attributes": {"k": {"n": 1}}, "output": "x"}',
     "bad_attributes"),
    (b'{"type": "prediction", "id": "a", "ts": 1, "model": "asr-en"}', "missing_output"),
    (b'{"type": "prediction", "id": "a", "ts": 1, "model": "asr-en", "output": {"x": 1}}', "bad_output"),
    (b'{"type": "feedback", "id": "a", "ts": 1}', "missing_label"),
    (b'{"type": "feedback", "id": "a", "ts": 1, "label": [1]}', "bad_label"),
    (b'{"type": "feedback", "id": "a", "ts": 1, "errors": -1, "units": 3}', "bad_errors_units"),
    (b'{"type": "outcome", "id": "a", "ts": 1, "model": "asr-en", "errors": "2", "units": 3}', "bad_errors_units"),
])
def test_each_reason(raw: bytes, expected: str) -> None:
    assert reason(D, raw) == expected


def test_oversized_and_model_limit() -> None:
    d = Decoder(EventsConfig(max_event_bytes=100, max_models=2))
    assert reason(d, b'{"type": "prediction", "id": "' + b"x" * 200 + b'"}') == "oversized"
    for m in ("a", "b"):
        d.decode(f'{{"type": "prediction", "id": "1", "ts": 1, "model": "{m}", "output": "x"}}')
    assert reason(d, b'{"type": "prediction", "id": "1", "ts": 1, "model": "c", "output": "x"}') == "model_limit"


def test_every_reason_is_exercised_somewhere() -> None:
    import pathlib
    here = pathlib.Path(__file__).parent
    text = "".join((here / name).read_text() for name in ("test_events.py", "test_engine.py", "test_bad_input.py",
                                                          "test_bounty.py"))
    missing = [r for r in REASONS if f'"{r}"' not in text]
    assert not missing


def test_field_mapping_and_coercions() -> None:
    d = Decoder(EventsConfig(fields=FieldMap(type="kind", id="request_id", ts="time", model="svc", attributes="meta",
                                             output="pred", label="truth"), default_model="fallback"))
    ev = d.decode(b'{"kind": "outcome", "request_id": 42, "time": 1700000000.5, "meta": {"age": 37, "vip": true,'
                  b' "ratio": 0.5, "gone": null}, "pred": 1, "truth": "1"}')
    assert ev.id == "42" and ev.model == "fallback" and ev.ts == 1700000000.5
    assert ev.attributes == {"age": "37", "vip": "true", "ratio": "0.5"}


def test_self_scored_events_need_no_text() -> None:
    ev = D.decode(b'{"type": "outcome", "id": "a", "ts": 1, "model": "asr-en", "errors": 3, "units": 12}')
    assert (ev.errors, ev.units, ev.output, ev.label) == (3.0, 12.0, None, None)
