"""The sequential test behind every alert: a mixture CUSUM e-detector.

Shin, Ramdas & Rinaldo (2023), "E-detectors: a nonparametric framework for sequential change
detection". For increments ``z_t ≥ -1`` whose conditional mean is ``≤ 0`` while nothing is
wrong, each ``1 + λ z_t`` (``0 ≤ λ < 1``) is a non-negative factor with mean ``≤ 1``, so

    S_t(λ) = max(0, S_{t-1}(λ) + log(1 + λ z_t))                 (a CUSUM over start times)

is the log of an e-detector. Averaging ``exp(S(λ))`` over a grid of λ (one λ is best for each
change size; the grid covers sizes we do not know in advance) is still an e-detector, and
alarming when ``log mean_λ exp(S_t(λ)) ≥ h`` gives, under "no change",

    E[number of alarms in any N increments] ≤ N · e^(-h)

with the detector restarted after each alarm (the Shiryaev–Roberts statistic bounds the
CUSUM one, and ``SR_t - t`` is a supermartingale). No distribution is assumed beyond the
lower bound and the mean: overdispersion (noisy recordings garbling many words at once) is
covered because the utterance, not the word, is the increment.

:mod:`monitor.kernel` runs exactly this recursion over every slice at once; this class is
the one-stream reference it is tested against, and the yardstick helpers live beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: λ grid: 0.97 covers huge jumps (and short utterances against a long bound U), 2^-7 changes of about 1%
LAMBDAS: tuple[float, ...] = (0.97, 0.88, 0.7, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125)


def log_mean_exp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values) / len(values))


class EDetector:
    """One stream of bounded increments; ``update`` returns True when the alarm is raised.

    >>> import random
    >>> rng = random.Random(7)
    >>> det = EDetector(threshold=math.log(1000))
    >>> p0 = 0.1                               # the rate nothing-is-wrong allows
    >>> first = None
    >>> for t in range(5000):
    ...     p = 0.1 if t < 2000 else 0.3       # the error rate triples at t = 2000
    ...     x = 1.0 if rng.random() < p else 0.0
    ...     if det.update((x - p0) / p0) and first is None:
    ...         first = t
    >>> 2000 < first < 2100
    True
    """

    def __init__(self, threshold: float, lambdas: Sequence[float] = LAMBDAS):
        if threshold <= 0:
            raise ValueError("threshold must be positive (it is the log of the average run length)")
        if not lambdas or any(not 0 < lam < 1 for lam in lambdas):
            raise ValueError(f"lambdas must lie in (0, 1), got {list(lambdas)}")
        self.threshold = threshold
        self.lambdas = tuple(lambdas)
        self._reset()

    def _reset(self) -> None:
        self._s = [0.0] * len(self.lambdas)

    @property
    def statistic(self) -> float:
        return log_mean_exp(self._s)

    def update(self, z: float) -> bool:
        if z < -1.0:
            raise ValueError(f"increment {z} is below -1: the bound the guarantee rests on")
        self._s = [max(0.0, s + math.log1p(lam * z)) for s, lam in zip(self._s, self.lambdas)]
        if max(self._s) >= self.threshold and self.statistic >= self.threshold:
            self._reset()
            return True
        return False


def bernoulli_kl(p1: float, p0: float) -> float:
    """KL(Bernoulli(p1) ‖ Bernoulli(p0)) in nats."""
    return p1 * math.log(p1 / p0) + (1 - p1) * math.log((1 - p1) / (1 - p0))


class OracleCusum:
    """The yardstick: Bernoulli CUSUM with the true pre/post-change rates, threshold ln(arl)."""

    def __init__(self, p0: float, p1: float, arl: float):
        self.up = math.log(p1 / p0)
        self.down = math.log((1 - p1) / (1 - p0))
        self.h = math.log(arl)
        self.s = 0.0

    def update(self, x: float) -> bool:
        self.s = max(0.0, self.s + (self.up if x else self.down))
        if self.s >= self.h:
            self.s = 0.0
            return True
        return False
