"""Per-outcome scoring: (output, label) → (errors, units) for each configured metric.

A slice's value is always ``sum(errors) / sum(units)``: for WER that is total word edits
over total reference words (jiwer's corpus WER), for error rate errors over outcomes.
``units == 0`` means the outcome does not count for that metric (FPR on a positive label).
"""

from __future__ import annotations

import math
import string
from typing import Any
from collections.abc import Callable, Iterable

from rapidfuzz.distance import Levenshtein

from monitor.config import MetricsConfig, TextConfig


_BOOL_TEXT = {"true": "1", "false": "0"}
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


def make_tokenizer(cfg: TextConfig) -> Callable[[str], list[str]]:
    """Normalised words of a text; ASCII text (the common case) is translated as bytes, in C."""
    punct = string.punctuation.replace("'", "") if cfg.keep_apostrophes else string.punctuation
    lower = cfg.lowercase
    if not cfg.strip_punctuation:
        return (lambda text: text.lower().split()) if lower else (lambda text: text.split())
    table = str.maketrans({c: " " for c in punct})
    byte_table = bytes.maketrans(punct.encode(), b" " * len(punct))

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

    def score_many(self, outcomes: Iterable[Any]) -> list[list[tuple[float, float]] | None]:
        """:meth:`score` for each joined outcome (anything with ``output``, ``label``, ``errors``
        and ``units``); None where it cannot be scored."""
        out: list[list[tuple[float, float]] | None] = []
        for o in outcomes:
            try:
                out.append(self.score(o.output, o.label, o.errors, o.units))
            except ScoreError:
                out.append(None)
        return out

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
