"""Seeded synthetic event streams: the demo's speech service and the benchmark's load.

The speech service has customers (tenants), accents (regional and non-native), devices and
noise conditions with realistic per-accent WER differences, overdispersed per utterance (a
noisy recording garbles many words at once). Feedback arrives minutes to hours later, out of
order, sometimes twice, sometimes never, and a few lines are malformed. Part-way through, one
customer starts recording on a hospital ward with new equipment (noise ``ward-b``), which
raises WER for some accents far more than for others: the last-mile incident.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from collections.abc import Iterator

import numpy as np
import msgspec

from monitor.alerts import rfc3339

ACCENT_WER = {
    "general-american": 0.085, "southern-us": 0.10, "philadelphia": 0.105, "scottish": 0.12,
    "irish": 0.10, "indian-english": 0.125, "nigerian-english": 0.13, "spanish-l1": 0.125,
    "mandarin-l1": 0.135, "arabic-l1": 0.13,
}
TENANTS = {"st-marys": 0.25, "northwind-bank": 0.25, "acme-callcenter": 0.2, "city-courts": 0.15, "radio-kilo": 0.15}
DEVICES = {"handset-a": 1.0, "handset-b": 1.08, "headset": 0.95}
NOISE = {"quiet": 1.0, "office": 1.06, "street": 1.12}
#: WER added under the new ward noise, by accent: the incident hits some accents far harder
INCIDENT_EXTRA = {"scottish": 0.22, "nigerian-english": 0.2, "indian-english": 0.12}
INCIDENT_EXTRA_DEFAULT = 0.03
INCIDENT_TENANT, INCIDENT_NOISE, INCIDENT_SHARE = "st-marys", "ward-b", 0.6

_VOCAB = ("the patient reports mild back pain since monday blood pressure is stable no known allergies "
          "continue current medication follow up in two weeks account balance transfer payment declined "
          "card number verify identity please hold your call is important the court will now hear "
          "the next case adjourned until tomorrow morning temperature normal chest clear heart sounds "
          "regular increase dose reduce swelling schedule scan order labs discharge home tonight").split()


@dataclass
class SpeechScenario:
    outcomes: int = 200_000
    seed: int = 7
    incident_at: float | None = 0.5  # fraction of the stream after which the incident starts (None: no incident)
    incident_until: float = 1.0  # fraction of the stream after which the ward is quiet again
    rate_per_second: float = 20.0  # predictions per second of event time
    feedback_missing: float = 0.05
    feedback_duplicate: float = 0.01
    malformed: float = 0.001
    overdispersion: float = 12.0  # Beta concentration of per-utterance error rates (lower: more correlated)
    start_ts: float = 1795514400.0  # 2026-11-24T10:00:00Z
    model: str = "asr-en"
    accents: dict[str, float] = field(default_factory=lambda: dict(ACCENT_WER))

    def true_wer(self, tenant: str, accent: str, device: str, noise: str) -> float:
        base = self.accents[accent] * DEVICES[device] * NOISE.get(noise, 1.0)
        if noise == INCIDENT_NOISE:
            base = self.accents[accent] + INCIDENT_EXTRA.get(accent, INCIDENT_EXTRA_DEFAULT)
        return min(base, 0.9)

    def events(self) -> Iterator[bytes]:
        """JSON lines in event-time order (predictions and their delayed feedback interleaved)."""
        rng = np.random.default_rng(self.seed)
        n = self.outcomes
        accents = list(self.accents)
        tenants, tenant_p = list(TENANTS), np.array(list(TENANTS.values()))
        devices, noises = list(DEVICES), list(NOISE)
        t_idx = rng.choice(len(tenants), n, p=tenant_p / tenant_p.sum())
        a_idx = rng.integers(0, len(accents), n)
        d_idx = rng.integers(0, len(devices), n)
        n_idx = rng.choice(len(noises), n, p=[0.6, 0.3, 0.1])
        ts = self.start_ts + np.cumsum(rng.exponential(1.0 / self.rate_per_second, n))
        delays = rng.lognormal(np.log(1200.0), 1.0, n)  # median 20 minutes
        words = rng.integers(4, 26, n)
        u_fb = rng.random(n)
        u_bad = rng.random(n)
        incident_from = int(n * self.incident_at) if self.incident_at is not None else n + 1
        incident_to = int(n * self.incident_until)
        ward = rng.random(n) < INCIDENT_SHARE
        # per-utterance true WER, then its own overdispersed rate, drawn for all utterances at once
        noise_of = [noises[j] for j in n_idx]
        for i in range(incident_from, min(incident_to, n)):
            if tenants[t_idx[i]] == INCIDENT_TENANT and ward[i]:
                noise_of[i] = INCIDENT_NOISE
        p = np.array([self.true_wer(tenants[t_idx[i]], accents[a_idx[i]], devices[d_idx[i]], noise_of[i])
                      for i in range(n)])
        k = self.overdispersion
        rates = rng.beta(p * k, (1 - p) * k)
        offsets = np.concatenate([[0], np.cumsum(words)])
        word_ids = rng.integers(0, len(_VOCAB), int(offsets[-1]))
        word_draws = rng.random(int(offsets[-1]))
        edit_kind = rng.random(int(offsets[-1]))
        heap: list[tuple[float, int, bytes]] = []
        seq = 0
        for i in range(n):
            lo, hi = offsets[i], offsets[i + 1]
            ref_words = [_VOCAB[j] for j in word_ids[lo:hi]]
            hyp = _corrupt(ref_words, float(rates[i]), word_draws[lo:hi], edit_kind[lo:hi])
            uid = f"utt-{self.seed}-{i:08d}"
            t = float(ts[i])
            pred = {"type": "prediction", "id": uid, "ts": rfc3339(t), "model": self.model, "tenant": tenants[t_idx[i]],
                    "attributes": {"accent": accents[a_idx[i]], "device": devices[d_idx[i]], "noise": noise_of[i]},
                    "output": " ".join(hyp), "score": round(float(1 - rates[i]), 3)}
            while heap and heap[0][0] <= t:
                yield heapq.heappop(heap)[2]
            yield msgspec.json.encode(pred)
            if u_bad[i] < self.malformed:
                yield _MALFORMED[i % len(_MALFORMED)]
            if u_fb[i] < self.feedback_missing:
                continue
            fb_ts = t + float(delays[i])
            fb = msgspec.json.encode({"type": "feedback", "id": uid, "ts": fb_ts, "label": " ".join(ref_words)})
            heapq.heappush(heap, (fb_ts, seq, fb))
            seq += 1
            if u_fb[i] > 1 - self.feedback_duplicate:
                heapq.heappush(heap, (fb_ts + 60.0, seq, fb))
                seq += 1
        while heap:
            yield heapq.heappop(heap)[2]


def _corrupt(words: list[str], rate: float, draws: np.ndarray, kinds: np.ndarray) -> list[str]:
    """Apply substitutions, deletions and insertions at ``rate`` per reference word."""
    out: list[str] = []
    for w, d, k in zip(words, draws, kinds):
        if d >= rate:
            out.append(w)
        elif k < 0.6:
            out.append(w[::-1])  # substitution
        elif k < 0.85:
            continue  # deletion
        else:
            out.extend((w, "uh"))  # insertion
    return out


_MALFORMED = (
    b'{"type": "prediction", "id": "x1", "ts": "yesterday", "model": "asr-en", "output": "hi"}',
    b'{"type": "prediction", "ts": "2026-11-24T10:00:00Z", "model": "asr-en", "output": "hi"}',
    b'{"type": "feedback", "id": "x2", "ts": 1795514400',
    b'["not", "an", "object"]',
    b'{"type": "telemetry", "id": "x3", "ts": 1795514400}',
    b'{"type": "prediction", "id": {"nested": 1}, "ts": 1795514400, "model": "asr-en", "output": "a"}',
    b'{"type": "prediction", "id": "x4", "ts": 1795514400, "model": "asr-en", "attributes": [1, 2], "output": "a"}',
    b'{"type": "feedback", "id": "x5", "ts": 1795514400}',
)
