from __future__ import annotations

import random

import jiwer
import pytest

from monitor.config import MetricsConfig, TextConfig
from monitor.scoring import Scorer, ScoreError


def test_wer_is_corpus_wer_like_jiwer() -> None:
    rng = random.Random(3)
    vocab = "alpha beta gamma delta epsilon zeta eta theta".split()
    refs, hyps = [], []
    for _ in range(300):
        ref = [rng.choice(vocab) for _ in range(rng.randint(1, 15))]
        hyp = [w if rng.random() > 0.3 else rng.choice(vocab + ["uh"]) for w in ref if rng.random() > 0.1]
        if rng.random() < 0.2:
            hyp += ["extra", "words"]
        refs.append(" ".join(ref))
        hyps.append(" ".join(hyp))
    s = Scorer(MetricsConfig(names=["wer"]))
    scores = [s.score(h, r, None, None)[0] for h, r in zip(hyps, refs)]
    edits = sum(e for e, _ in scores)
    words = sum(u for _, u in scores)
    assert edits / words == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)
    for (e, u), h, r in zip(scores[:50], hyps, refs):
        assert e / u == pytest.approx(jiwer.wer(r, h))


def test_text_normalisation_is_configurable() -> None:
    on = Scorer(MetricsConfig(names=["wer"]))
    off = Scorer(MetricsConfig(names=["wer"], text=TextConfig(lowercase=False, strip_punctuation=False)))
    assert on.score("Hello, World!", "hello world", None, None) == [(0.0, 2.0)]
    assert off.score("Hello, World!", "hello world", None, None) == [(2.0, 2.0)]


def test_cer() -> None:
    s = Scorer(MetricsConfig(names=["cer"]))
    assert s.score("kitten", "sitting", None, None) == [(3.0, 7.0)]


def test_classifier_metrics_with_mixed_label_types() -> None:
    s = Scorer(MetricsConfig(names=["error_rate", "fpr", "fnr"], positive_class=1))
    assert s.score("1", 1, None, None) == [(0.0, 1.0), (0.0, 0.0), (0.0, 1.0)]  # true positive
    assert s.score(1, "0", None, None) == [(1.0, 1.0), (1.0, 1.0), (0.0, 0.0)]  # false positive
    assert s.score(0.0, True, None, None) == [(1.0, 1.0), (0.0, 0.0), (1.0, 1.0)]  # false negative
    assert s.score("0", 0, None, None) == [(0.0, 1.0), (0.0, 1.0), (0.0, 0.0)]  # true negative


def test_regression_metrics() -> None:
    s = Scorer(MetricsConfig(names=["abs_error", "squared_error"], error_cap=10))
    assert s.score(3.5, 1, None, None) == [(2.5, 1.0), (6.25, 1.0)]
    with pytest.raises(ScoreError):
        s.score("n/a", 1, None, None)


def test_self_scored_outcome_replaces_primary_metric() -> None:
    s = Scorer(MetricsConfig(names=["wer"]))
    assert s.score(None, None, 3.0, 10.0) == [(3.0, 10.0)]
    c = Scorer(MetricsConfig(names=["error_rate", "fpr"], positive_class="fraud"))
    assert c.score(None, None, 1.0, 1.0) == [(1.0, 1.0), (0.0, 0.0)]


def test_wer_on_non_text_is_unscorable() -> None:
    with pytest.raises(ScoreError):
        Scorer(MetricsConfig(names=["wer"])).score(5, "five", None, None)


def _texts(rng: random.Random) -> str:
    words = ["Alpha", "beta,", "GAMMA", "it's", "d.e", "ünïcode", "x\x00y", "tab\tsep", "ΣΊΣΥΦΟΣ", "", "  "]
    return " ".join(rng.choice(words) for _ in range(rng.randint(0, 8)))


@pytest.mark.parametrize("names", [["wer"], ["cer"], ["wer", "cer"], ["error_rate", "fpr", "fnr"],
                                   ["abs_error", "squared_error"]])
@pytest.mark.parametrize("text", [TextConfig(), TextConfig(strip_punctuation=False),
                                  TextConfig(lowercase=False, keep_apostrophes=False)])
def test_score_many_is_score_one_by_one(names: list[str], text: TextConfig) -> None:
    """Runs scored by columns equal :meth:`Scorer.score` of each outcome (flattened), None where it
    raises: ASCII and non-ASCII runs, text with NUL, a service's own errors (alone and mixed in),
    values the metrics cannot take."""
    from monitor.join import Outcome

    rng = random.Random(len(names) * 7 + len(repr(text)))
    s = Scorer(MetricsConfig(names=names, text=text, positive_class=1 if "fpr" in names else None))

    def outcome(ascii_only: bool, own: bool) -> Outcome:
        if own:
            return Outcome("i", "m", 0.0, None, {}, None, None, float(rng.randint(0, 5)),
                           rng.choice([None, float(rng.randint(1, 9))]))
        pick = rng.choice([0, 1, 2.5, True, "1", "0"]) if names[0] not in ("wer", "cer") else None
        out, lab = (pick, rng.choice([0, 1, "1"])) if pick is not None else (_texts(rng), _texts(rng))
        if ascii_only and isinstance(out, str) and isinstance(lab, str):
            out, lab = out.encode("ascii", "ignore").decode(), lab.encode("ascii", "ignore").decode()
        if rng.random() < 0.05:
            out = rng.choice([None, 3, "n/a", float("nan")])
        return Outcome("i", "m", 0.0, None, {}, out, lab, None, None)

    def one_by_one(o: Outcome) -> tuple[float, ...] | None:
        try:
            return tuple(x for pair in s.score(o.output, o.label, o.errors, o.units) for x in pair)
        except ScoreError:
            return None

    for trial in range(60):
        mode = trial % 4
        run = [outcome(ascii_only=mode == 0, own=mode == 2 or (mode == 3 and rng.random() < 0.3))
               for _ in range(rng.randint(1, 40))]
        assert s.score_many(run) == [one_by_one(o) for o in run]
