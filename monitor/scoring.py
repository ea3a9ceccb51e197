"""Per-outcome scoring: (output, label) → (errors, units) for each configured metric.

A slice's value is always ``sum(errors) / sum(units)``: for WER that is total word edits
over total reference words (jiwer's corpus WER), for error rate errors over outcomes.
``units == 0`` means the outcome does not count for that metric (FPR on a positive label).
"""

from __future__ import annotations

import math
import string
from operator import attrgetter
from typing import Any
from collections.abc import Callable, Sequence

from rapidfuzz.distance import Levenshtein

from monitor.config import MetricsConfig, TextConfig


_BOOL_TEXT = {"true": "1", "false": "0"}
_OUTPUT, _LABEL, _ERRORS, _UNITS = attrgetter("output"), attrgetter("label"), attrgetter("errors"), attrgetter("units")
_STR = {str}
_RUN = 128  # outcomes scored together (their words stay in cache)
#: what each metric needs of an output and of a label; metrics not listed take any scalar
_NEEDS = {"wer": "text", "cer": "text", "abs_error": "number", "squared_error": "number"}


class ScoreError(ValueError):
    """Output and label cannot be scored with the configured metric (counted, skipped)."""


def make_normalizer(cfg: TextConfig) -> Callable[[str], str]:
    """Text normalisation applied to both hypothesis and reference before WER/CER.

    >>> make_normalizer(TextConfig())("  The patient's  PAIN, mild. ")
    "the patient's pain mild"
    """
    words = make_tokenizer(cfg)
    return lambda text: " ".join(words(text))


def _punctuation(cfg: TextConfig) -> str:
    return string.punctuation.replace("'", "") if cfg.keep_apostrophes else string.punctuation


def _byte_table(cfg: TextConfig) -> bytes:
    """ASCII punctuation to blanks, as a :meth:`bytes.translate` table."""
    punct = _punctuation(cfg)
    return bytes.maketrans(punct.encode(), b" " * len(punct))


def make_tokenizer(cfg: TextConfig) -> Callable[[str], list[str]]:
    """Normalised words of a text; ASCII text (the common case) is translated as bytes, in C."""
    lower = cfg.lowercase
    if not cfg.strip_punctuation:
        return (lambda text: text.lower().split()) if lower else (lambda text: text.split())
    table = str.maketrans({c: " " for c in _punctuation(cfg)})
    byte_table = _byte_table(cfg)

    def words(text: str) -> list[str]:
        if lower:
            text = text.lower()
        if text.isascii():
            return text.encode().translate(byte_table).decode().split()
        return text.translate(table).split()

    return words


def canonical_class(value: Any) -> str:
    """Class labels compare as text: ``1``, ``1.0``, ``"1"``, ``true`` and ``"True"`` are one class.

    >>> canonical_class(1.0), canonical_class(" Fraud "), canonical_class(True), canonical_class("false")
    ('1', 'fraud', '1', '0')
    """
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip().lower()
    return _BOOL_TEXT.get(text, text)


class Scorer:
    """Scores one joined outcome for every configured metric."""

    def __init__(self, cfg: MetricsConfig):
        self.names = tuple(cfg.names)
        self._norm = make_normalizer(cfg.text)
        self._words = make_tokenizer(cfg.text)
        self._pos = canonical_class(cfg.positive_class) if cfg.positive_class is not None else None
        self._fns = tuple(getattr(self, f"_{name}") for name in self.names)
        #: metrics scored by columns (the others, one outcome at a time)
        self._many = {"wer": self._wer_many, "cer": self._cer_many}
        text = cfg.text
        self._lower = text.lowercase
        self._table = _byte_table(text) if text.strip_punctuation else bytes(range(256))
        self._needs = frozenset(_NEEDS[n] for n in self.names if n in _NEEDS)

    @property
    def text_scorable(self) -> bool:
        """Does :meth:`unscorable` accept every text? (No metric needs numbers.)"""
        return "number" not in self._needs

    def unscorable(self, value: Any) -> str | None:
        """Why an output or label can never be scored by the configured metrics, or None.

        Each side is checked on its own when its event is decoded, so an event the metrics cannot
        use is rejected before it reaches the join and never takes the place of a valid one.

        >>> Scorer(MetricsConfig(names=["wer"])).unscorable(3)
        'wer/cer need text, got int'
        """
        if "text" in self._needs and not isinstance(value, str):
            return f"wer/cer need text, got {type(value).__name__}"
        if "number" in self._needs:
            try:
                self._number(value)
            except ScoreError as exc:
                return str(exc)
        return None

    def score(self, output: Any, label: Any, errors: float | None, units: float | None) -> list[tuple[float, float]]:
        """``[(errors, units)]`` per metric, in ``names`` order.

        A service's own ``errors``/``units`` replace the primary metric; metrics that need
        output and label are then not applicable (units 0).
        """
        if errors is not None:
            return [(errors, units if units is not None else 0.0)] + [(0.0, 0.0)] * (len(self.names) - 1)
        return [fn(output, label) for fn in self._fns]

    def score_many(self, outcomes: Sequence[Any]) -> list[tuple[float, ...] | None]:
        """:meth:`score` of each joined outcome (anything with ``output``, ``label``, ``errors`` and
        ``units``) as one flat tuple ``(errors, units, errors, units, …)`` in ``names`` order; None
        where it cannot be scored.

        By columns: text is tokenized a run at a time and compared pair by pair in C. A run
        that is not all text a metric takes (or mixes a service's own errors with outcomes to
        score) is scored one by one instead, with the same results.
        """
        if len(outcomes) > _RUN:
            return [x for i in range(0, len(outcomes), _RUN) for x in self.score_many(outcomes[i:i + _RUN])]
        if not outcomes:
            return []
        own = list(map(_ERRORS, outcomes))
        if None not in own:  # a service's own errors/units replace the primary metric
            units = [u if u is not None else 0.0 for u in map(_UNITS, outcomes)]
            rest = [[0.0] * len(own)] * (2 * len(self.names) - 2)
            return list(zip(own, units, *rest))
        if set(own) == {None}:
            outputs, labels = list(map(_OUTPUT, outcomes)), list(map(_LABEL, outcomes))
            columns: list[list[float]] = []
            for name in self.names:
                scored = self._many[name](outputs, labels) if name in self._many else None
                if scored is None:
                    break
                columns += scored
            else:
                return list(zip(*columns))
        out: list[tuple[float, ...] | None] = []
        for o in outcomes:
            try:
                out.append(tuple(x for pair in self.score(o.output, o.label, o.errors, o.units) for x in pair))
            except ScoreError:
                out.append(None)
        return out

    def _text_many(self, outputs: list[Any], labels: list[Any],
                   tokens: Callable[[list[str]], list[Any]]) -> tuple[list[float], list[float]] | None:
        """(errors, units) of WER or CER for each pair: edits between the tokens over the reference's
        length; None unless every output and label is text."""
        if set(map(type, outputs)) != _STR or set(map(type, labels)) != _STR:
            return None
        ref = tokens(labels)
        return list(map(float, map(Levenshtein.distance, tokens(outputs), ref))), list(map(float, map(len, ref)))

    def _words_many(self, texts: list[str]) -> list[list[str]]:
        """:meth:`_words` of each text; ASCII texts all at once (lowercased, punctuation blanked,
        as one string in C, then split apart: the same words as one at a time)."""
        joined = "\x00".join(texts)
        if not joined.isascii() or joined.count("\x00") != len(texts) - 1:
            return list(map(self._words, texts))
        if self._lower:
            joined = joined.lower()
        return list(map(str.split, joined.encode().translate(self._table).decode().split("\x00")))

    def _wer_many(self, outputs: list[Any], labels: list[Any]) -> tuple[list[float], list[float]] | None:
        return self._text_many(outputs, labels, self._words_many)

    def _cer_many(self, outputs: list[Any], labels: list[Any]) -> tuple[list[float], list[float]] | None:
        return self._text_many(outputs, labels, lambda texts: list(map(" ".join, self._words_many(texts))))

    # ---- metrics ----------------------------------------------------------------------
    def _error_rate(self, output: Any, label: Any) -> tuple[float, float]:
        return (0.0 if canonical_class(output) == canonical_class(label) else 1.0), 1.0

    def _fpr(self, output: Any, label: Any) -> tuple[float, float]:
        if canonical_class(label) == self._pos:
            return 0.0, 0.0
        return (1.0 if canonical_class(output) == self._pos else 0.0), 1.0

    def _fnr(self, output: Any, label: Any) -> tuple[float, float]:
        if canonical_class(label) != self._pos:
            return 0.0, 0.0
        return (0.0 if canonical_class(output) == self._pos else 1.0), 1.0

    @staticmethod
    def _check_texts(output: Any, label: Any) -> None:
        if not isinstance(output, str) or not isinstance(label, str):
            raise ScoreError("wer/cer need text output and label")

    def _wer(self, output: Any, label: Any) -> tuple[float, float]:
        self._check_texts(output, label)
        ref = self._words(label)
        return float(Levenshtein.distance(self._words(output), ref)), float(len(ref))

    def _cer(self, output: Any, label: Any) -> tuple[float, float]:
        self._check_texts(output, label)
        ref = self._norm(label)
        return float(Levenshtein.distance(self._norm(output), ref)), float(len(ref))

    @staticmethod
    def _number(value: Any) -> float:
        if isinstance(value, bool):
            raise ScoreError("regression metrics need numbers, got a boolean")
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise ScoreError("regression metrics need numeric output and label") from None
        if not math.isfinite(x):
            raise ScoreError("regression metrics need finite numbers")
        return x

    def _numbers(self, output: Any, label: Any) -> tuple[float, float]:
        return self._number(output), self._number(label)

    def _abs_error(self, output: Any, label: Any) -> tuple[float, float]:
        o, y = self._numbers(output, label)
        return abs(o - y), 1.0

    def _squared_error(self, output: Any, label: Any) -> tuple[float, float]:
        o, y = self._numbers(output, label)
        return (o - y) ** 2, 1.0
