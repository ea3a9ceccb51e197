"""Seeded simulation helpers: Bernoulli / overdispersed-WER streams over a grid of slices, fed as arrays."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from monitor.alerts import Alert
from monitor.engine import Engine

T0 = 1795514400.0


def grid_routes(engine: Engine, na: int, nb: int, model: str = "m") -> np.ndarray:
    """routes[a * nb + b] = slice ids of an outcome with attributes a=a{a}, b=b{b}."""
    return np.array([engine.slices.route(model, None, {"a": f"a{a}", "b": f"b{b}"})
                     for a in range(na) for b in range(nb)], dtype=np.int64)


def run_stream(engine: Engine, routes: np.ndarray, n: int, seed: int,
               rate: Callable[[np.ndarray, np.ndarray], np.ndarray], words: tuple[int, int] | None = None,
               kappa: float | None = None, chunk: int = 50_000) -> list[Alert]:
    """Feed ``n`` outcomes; ``rate(cell, t)`` gives each outcome's error rate.

    With ``words`` each outcome is an utterance of that many reference words whose own error
    rate is Beta(rate·κ, (1-rate)·κ) (κ small = strongly correlated words); else Bernoulli.
    """
    rng = np.random.default_rng(seed)
    alerts: list[Alert] = []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        t = np.arange(start, start + m)
        cell = rng.integers(0, routes.shape[0], m)
        p = rate(cell, t)
        if words is None:
            e = (rng.random(m) < p).astype(float)
            u = np.ones(m)
        else:
            u = rng.integers(words[0], words[1] + 1, m).astype(float)
            q = rng.beta(p * kappa, (1 - p) * kappa) if kappa else p
            e = rng.binomial(u.astype(np.int64), q).astype(float)
        eu = np.stack([e, u], axis=1).reshape(m, 1, 2)
        alerts += engine.process_scored(routes[cell], eu, T0 + t.astype(float))
    return alerts
