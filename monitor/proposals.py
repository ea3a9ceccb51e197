"""Groups lastmile proposes itself: selected on the past, tested on the future.

Every ``slices.proposals.every`` outcomes, the tracked slices are ranked (:mod:`monitor.ranking`)
and the best-ranked groups that are *not* tracked slices become internal bias-bounty
submissions (submitter ``lastmile``, claim: disparity by more than ``min_gap``):

* **deeper intersections**: two well-ranked slices of the same model and metric whose
  conditions do not contradict each other, joined (``accent = scottish and noise = ward-b``
  with ``noise = ward-b and tenant = st-marys``), when the result is not a tracked combination;
* **unions of values**: the values of one dimension whose own slices rank well, together
  (``accent in {scottish, nigerian-english}``).

A proposal is tested like any submission: only outcomes predicted after it count, under the
same e-LOND false discovery budget. Selecting on the past and testing on the future is what
keeps "the worst of many" honest: the ranking picks where to look, the e-process decides.
"""

from __future__ import annotations

from typing import Any

from monitor.ranking import top_slices

SUBMITTER = "lastmile"


def candidates(table: dict[str, Any], tracked: set[frozenset[str]], k: int,
               top: int = 20) -> list[tuple[str, str, dict[str, Any]]]:
    """Up to ``k`` proposals ``(model, metric, group tree)`` from a slice table, best first.

    ``tracked``: the tracked combinations, as sets of dimension names (their slices are already
    tested by the detectors). Candidates are scored by the weaker of the two slices they come
    from, and only slices with a positive score (worse than their model) are used.
    """
    ranked = [e for e in top_slices(table, top) if e["score"] > 0 and "group" not in e["slice"]]
    found: dict[str, tuple[float, str, str, dict[str, Any]]] = {}

    def add(score: float, model: str, metric: str, pairs: dict[str, Any]) -> None:
        leaves = []
        for dim in sorted(pairs):
            values = pairs[dim]
            leaves.append({"dim": dim, "eq": values} if isinstance(values, str) else {"dim": dim, "in": sorted(values)})
        tree = leaves[0] if len(leaves) == 1 else {"all": leaves}
        key = f"{model}\x00{metric}\x00{tree}"
        if key not in found or found[key][0] < score:
            found[key] = (score, model, metric, tree)

    for i, a in enumerate(ranked):
        for b in ranked[i + 1:]:
            if (a["model"], a["metric"]) != (b["model"], b["metric"]):
                continue
            sa, sb = a["slice"], b["slice"]
            score = min(a["score"], b["score"])
            if len(sa) == len(sb) == 1 and sa.keys() == sb.keys():  # one dimension, two values: their union
                (dim,) = sa
                add(score, a["model"], a["metric"], {dim: {sa[dim], sb[dim]}})
                continue
            if any(sa[d] != sb[d] for d in sa.keys() & sb.keys()):
                continue  # contradicting conditions: no outcome in both
            joined = {**sa, **sb}
            if len(joined) > max(len(sa), len(sb)) and frozenset(joined) not in tracked:
                add(score, a["model"], a["metric"], joined)
    best = sorted(found.values(), key=lambda x: (-x[0], x[1], x[2], str(x[3])))
    return [(model, metric, tree) for _, model, metric, tree in best[:k]]
