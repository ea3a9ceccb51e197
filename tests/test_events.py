from __future__ import annotations

import random

import msgspec
import pytest

from monitor.config import EventsConfig, FieldMap
from monitor.events import REASONS, Decoder, InvalidEvent, parse_ts
from monitor.simulate import SpeechScenario
from tests.poison import MALFORMED


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


def _one_by_one(decoder: Decoder, raws: list[bytes]) -> list[object]:
    out: list[object] = []
    for raw in raws:
        try:
            out.append(decoder.decode(raw))
        except InvalidEvent as exc:
            out.append(("invalid", exc.reason))
    return out


def _as_compared(results: list[object]) -> list[object]:
    return [("invalid", r.reason) if isinstance(r, InvalidEvent) else r for r in results]


#: one field of a valid event changed to something unusual, valid or not
_UNUSUAL = [
    ("id", 12345), ("id", ""), ("id", None), ("id", "x" * 600), ("ts", 1795514400.5), ("ts", -1.0),
    ("ts", "2026-11-24T10:00:00Z"), ("ts", "2026-11-24T10:00:00.123456Z"), ("ts", "2026-11-24T10:00:00.1Z"),
    ("ts", "2026-02-30T10:00:00.000Z"),
    ("ts", "2026-11-24T10:00:00+01:00"), ("ts", "2026-11-24T10:00:61.000Z"), ("ts", "2026-11-24T1à:00:00.000Z"),
    ("model", None), ("model", "m-new"), ("model", ""), ("tenant", None), ("tenant", 7), ("tenant", True),
    ("attributes", None), ("attributes", {}), ("attributes", {"accent": 3, "noise": None, "x": 1.5}),
    ("attributes", {"k": [1]}), ("attributes", "text"), ("output", None), ("output", 5), ("output", "é" * 20),
    ("label", None), ("label", False), ("errors", 2.0), ("units", 3.0), ("errors", -1.0), ("units", None),
    ("errors", None), ("output", "some text"), ("label", "some text"), ("type", "submission"),
    ("type", ["prediction"]), ("type", "outcome"),
]


def _changed(line: bytes, field: str, value: object) -> bytes:
    return msgspec.json.encode({**msgspec.json.decode(line), field: value})


def _outcome_lines(seed: int, n: int) -> list[bytes]:
    """Pre-scored outcome events (a service's own errors and units, no text), epoch-second times."""
    rng = random.Random(seed)
    return [msgspec.json.encode({"type": "outcome", "id": f"o{i}", "ts": 1795514400.0 + i / 2, "model": "asr-en",
                                 "tenant": f"t{rng.randrange(3)}", "attributes": {"accent": f"a{rng.randrange(4)}"},
                                 "errors": float(rng.randrange(5)), "units": float(rng.randrange(1, 20))})
            for i in range(n)]


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("default_model", [None, "asr-en"])
@pytest.mark.parametrize("stream", ["pairs", "outcomes"])
def test_decode_many_is_decode_one_by_one(seed: int, default_model: str | None, stream: str) -> None:
    """Batches decoded by columns equal the events decoded one at a time (reasons included), on
    clean batches, batches with one unusual event (valid or not), and the malformed corpus; the
    two decoders are fed the same batches in order, so model admission is compared too."""
    rng = random.Random(seed)
    lines = (list(SpeechScenario(outcomes=1500, seed=seed, malformed=0.0).events()) if stream == "pairs"
             else _outcome_lines(seed, 3000))
    cfg = EventsConfig(default_model=default_model, max_models=3, max_text_chars=400)
    columns, single = Decoder(cfg), Decoder(cfg)
    taken = []
    by_columns = columns._columns

    def spy(raws: list[bytes]) -> object:
        result = None
        try:
            result = by_columns(raws)
            return result
        finally:
            taken.append(result is not None)

    columns._columns = spy  # type: ignore[method-assign]
    for k, start in enumerate(range(0, len(lines), 40)):
        batch = list(lines[start:start + 40])
        for field, value in [_UNUSUAL[k]] if k < len(_UNUSUAL) else rng.sample(_UNUSUAL, rng.randrange(3)):
            i = rng.randrange(len(batch))
            batch[i] = _changed(batch[i], field, value)
        if rng.random() < 0.1:
            batch.insert(rng.randrange(len(batch)), rng.choice(MALFORMED))
        assert _as_compared(columns.decode_many(batch)) == _one_by_one(single, batch)
    assert columns.seen_models() == single.seen_models()
    assert sum(taken) >= 5  # the column path was taken (and compared), not only the fallback
