"""Poisoned streams: valid events with hostile ones mixed in, each of which must cost nothing valid.

:func:`poison` takes the JSON lines of a clean stream and inserts, at seeded positions:

* feedback for real ids whose label the metric cannot score (a number where WER needs text),
  placed *before* the genuine feedback, so a join that took it would drop the genuine one;
* copies of real predictions and feedback stamped decades ahead (a producer's clock bug);
* every line of the malformed corpus of ``tests/test_engine.py`` (with distinct ids).
"""

from __future__ import annotations

import random
from collections import Counter

import msgspec

from monitor.events import parse_ts

FAR = 50 * 365.25 * 86400.0  # fifty years ahead

#: one line for each way an event can be malformed (ids beginning ``bad-`` are made distinct)
MALFORMED = [
    b'{"type": "prediction", "id": "bad-1", "ts": "not a time", "model": "asr", "output": "x"}',
    b'{"type": "feedback", "id": "u1"',
    b"\xff\xfe\x00garbage",
    b"[]",
    b"null",
    b'"just a string"',
    b"{}",
    b'{"type": "prediction", "ts": 1795514500, "model": "asr", "output": "no id"}',
    b'{"type": "prediction", "id": ["u2"], "ts": 1795514500, "model": "asr", "output": "x"}',
    b'{"type": "prediction", "id": "bad-2", "ts": 1795514500, "model": 3, "output": "x"}',
    b'{"type": "prediction", "id": "bad-3", "ts": 1795514500, "model": "asr", "attributes": {"accent": [1]}, "output": "x"}',
    b'{"type": "prediction", "id": "bad-4", "ts": 1795514500, "model": "asr", "tenant": {"x": 1}, "output": "x"}',
    b'{"type": "feedback", "id": "bad-5", "ts": 1795514500, "label": {"text": "x"}}',
    b'{"type": "feedback", "id": "u3", "ts": 1795514500}',
    b'{"type": "outcome", "id": "bad-6", "ts": 1795514500, "model": "asr", "errors": -2, "units": 3}',
    b'{"type": "prediction", "id": "bad-7", "ts": 1795514500, "model": "asr", "output": "' + b"w " * 40000 + b'"}',
    b'{"type": "prediction", "id": "bad-8", "ts": 1e30, "model": "asr", "output": "x"}',
    b'{"type": "delete", "id": "u4", "ts": 1795514500}',
    b'{"type": "prediction", "id": "bad-9", "ts": true, "model": "asr", "output": "x"}',
    b'{"type": "outcome", "id": "bad-10", "ts": 1795514500, "model": "asr", "output": 5, "label": "five"}',
]


def poison(lines: list[bytes], seed: int, rate: float = 0.03) -> tuple[list[bytes], Counter[str]]:
    """The poisoned stream and how many events of each reason were inserted."""
    rng = random.Random(seed)
    out: list[bytes] = []
    added: Counter[str] = Counter()
    for line in lines:
        try:
            ev = msgspec.json.decode(line)
        except msgspec.DecodeError:
            ev = None
        if isinstance(ev, dict) and isinstance(ev.get("ts"), (int, float, str)) and "id" in ev:
            if ev.get("type") == "feedback" and rng.random() < rate:
                out.append(msgspec.json.encode({**ev, "label": rng.choice([7, 0.5, True])}))
                added["unscorable"] += 1
            if rng.random() < rate / 3:
                out.append(msgspec.json.encode({**ev, "ts": parse_ts(ev["ts"]) + FAR}))
                added["future_timestamp"] += 1
        out.append(line)
        if rng.random() < rate / 3:
            bad = MALFORMED[rng.randrange(len(MALFORMED))].replace(b'"bad-', f'"bad-{len(out)}-'.encode())
            out.append(bad)
            added["corpus"] += 1
    return out, added
