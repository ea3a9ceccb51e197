"""The worst slices, ranked: shown to people, never alerted on.

The score is SliceLine's (Sagadeeva & Boehm, SIGMOD 2021), computed on the sums the engine
already keeps for every tracked slice::

    score(S) = α · (ē_S / ē − 1) − (1 − α) · (n / |S| − 1)

where ``ē_S`` is the slice's error rate (errors / units), ``ē`` its model's, ``|S|`` its
outcomes and ``n`` the model's. The first term is the effect size, the second penalises small
slices, so a slice ranks high when it is both much worse than its model and not tiny;
``α`` (0.95 as in SliceLine) weighs the two. Slices below ``min_samples`` (insufficient data)
and ``__other__`` overflow slices are left out.

Ranking is exploration: many slices are compared and the best-looking is selected, so a high
rank is not evidence of a real gap (alerts and bias-bounty verdicts are). Each entry carries
the slice's windowed estimate with its 95% interval for a sense of the uncertainty.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from monitor.slices import OTHER

ALPHA = 0.95
MAX_TOP = 1000


def sliceline_score(rate: float, model_rate: float, n: float, model_n: float, alpha: float = ALPHA) -> float:
    """SliceLine's score of a slice (``rate`` over ``n`` outcomes) in a model (``model_rate``, ``model_n``).

    >>> round(sliceline_score(0.2, 0.1, 100, 1000), 3)  # twice as bad, a tenth of the traffic
    0.5
    >>> sliceline_score(0.1, 0.1, 1000, 1000)  # the model itself
    0.0
    """
    if model_rate <= 0 or n <= 0:
        return float("-inf")
    return alpha * (rate / model_rate - 1.0) - (1.0 - alpha) * (model_n / n - 1.0)


def top_slices(table: dict[str, Any], k: int = 10, alpha: float = ALPHA,
               metrics: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The ``k`` best-scoring slices of a slice table (:func:`monitor.table.slice_table`), worst first."""
    rows = table.get("slices", [])
    models = {(r["model"], r["metric"]): r for r in rows if r["slice"] == {}}
    wanted = set(metrics) if metrics is not None else None
    ranked = []
    for r in rows:
        pop = models.get((r["model"], r["metric"]))
        if (r["slice"] == {} or pop is None or r["status"] == "insufficient_data" or OTHER in r["slice"].values()
                or (wanted is not None and r["metric"] not in wanted) or not r["units"] or not pop["units"]):
            continue
        rate, model_rate = r["errors"] / r["units"], pop["errors"] / pop["units"]
        rest_units = pop["units"] - r["units"]
        rest = (pop["errors"] - r["errors"]) / rest_units if rest_units > 0 else None
        ranked.append({
            "model": r["model"], "slice": r["slice"], "metric": r["metric"],
            "score": round(sliceline_score(rate, model_rate, r["n"], pop["n"], alpha), 6),
            "value": round(rate, 6), "model_value": round(model_rate, 6),
            "rest": round(rest, 6) if rest is not None else None,
            "gap": round(rate - rest, 6) if rest is not None else None,
            "n": r["n"], "share": round(r["n"] / pop["n"], 6), "window": r["window"], "status": r["status"],
        })
    ranked.sort(key=lambda e: (-e["score"], e["model"], e["metric"], sorted(e["slice"].items())))
    return ranked[:k]
