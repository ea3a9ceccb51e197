"""Bias bounties: submitted groups tested prospectively on the model's outcomes, with verdicts.

Each distinct hypothesis (model, canonical group, claim: :func:`monitor.predicate.hypothesis_id`)
is one test; a duplicate submission joins it. When the hypothesis first arrives it is given
its e-LOND level ``α_t`` (:class:`monitor.bounty_stats.ELond`), fixed from the discoveries made
before it. Only outcomes whose *prediction* time is at or after the submission's time count,
so a group chosen by studying the public slice table is still tested honestly; outcomes after
the deadline or beyond the budget are not used. The claim's e-process and the interval for the
gap are updated with each batch of outcomes the engine runs, and the verdict is decided
(:func:`monitor.bounty_stats.decide`) after every 50th group outcome, at the budget and at the
deadline — points fixed by the data, not by batching, so replay and a restored checkpoint
reach the same verdicts. (The daemon registers a submission when it reads it: outcomes of the
group it already processed by then, e.g. under consumer lag, are not counted.) The first
verdict other than ``pending`` is final.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monitor.alerts import Alert, metric_title, rfc3339
from monitor.bounty_stats import DisparityClaim, DriftClaim, ELond, decide
from monitor.predicate import Predicate, compile_predicate, to_text
from monitor.submissions import Submission

log = logging.getLogger("lastmile")

#: a verdict record's ``status``: pending, then one final status
FINAL = ("confirmed", "not_confirmed", "refuted", "untestable")
DECIDE_EVERY = 50  # group outcomes between verdict decisions


@dataclass
class Hypothesis:
    sub: Submission  # the first submission of this hypothesis
    level: float  # its e-LOND α_t
    member: Predicate
    claim: DisparityClaim | DriftClaim | None  # drift: None until its baseline is known
    submissions: list[str] = field(default_factory=list)  # ids that joined it, the first included
    submitters: list[str] = field(default_factory=list)
    status: str = "pending"
    decided_at: float | None = None
    e_value: float = 1.0
    interval: tuple[float, float] | None = None
    since: float = -math.inf  # drift: outcomes count from when the baseline became known

    def record(self) -> dict[str, Any]:
        s = self.sub
        return {"type": "verdict", "hypothesis": s.hypothesis, "submissions": list(self.submissions),
                "submitters": list(self.submitters), "model": s.model, "group": s.group,
                "group_text": to_text(s.group), "claim": {"kind": s.kind, "metric": s.metric, "min_gap": s.min_gap},
                "status": self.status, "e_value": self.e_value, "threshold": 1.0 / self.level,
                "interval": list(self.interval) if self.interval is not None else None,
                "n": self.claim.n if self.claim is not None else 0,
                "submitted": rfc3339(s.ts), "deadline": rfc3339(s.deadline),
                "decided": rfc3339(self.decided_at) if self.decided_at is not None else None}


class BountyBook:
    def __init__(self, dimensions: tuple[str, ...], metrics: tuple[str, ...], alpha: float, min_outcomes: int,
                 cap: float, max_units: float, baseline: Callable[[str, str], tuple[float, float] | None]):
        """``baseline(model, metric)``: the model's baseline a drift claim is tested against
        (the population's, once its reference period closed) and the event time from which it
        holds, or None while unknown."""
        self.dimensions, self.metrics = dimensions, metrics
        self.baseline = baseline
        self.min_outcomes, self.cap, self.max_units = min_outcomes, cap, max_units
        self.fdr = ELond(alpha)
        self.hypotheses: dict[str, Hypothesis] = {}
        self.by_submission: dict[str, str] = {}  # submission id → hypothesis
        self.records: list[dict[str, Any]] = []  # verdict records not yet handed out
        self.confirmed: list[Hypothesis] = []  # confirmations not yet handed out (to the sinks)

    @property
    def pending(self) -> int:
        return sum(1 for h in self.hypotheses.values() if h.status == "pending")

    def counts(self) -> dict[str, int]:
        out = {status: 0 for status in ("pending", *FINAL)}
        for h in self.hypotheses.values():
            out[h.status] += 1
        return out

    def submit(self, sub: Submission) -> dict[str, Any]:
        """A valid submission. Returns its verdict record as it stands (a duplicate joins the
        existing test)."""
        if sub.id in self.by_submission:
            return self.hypotheses[self.by_submission[sub.id]].record()
        h = self.hypotheses.get(sub.hypothesis)
        if h is None:
            level = self.fdr.register(sub.hypothesis)
            claim = DisparityClaim(sub.min_gap, cap=self.cap, max_units=self.max_units) if sub.kind == "disparity" \
                else None
            h = Hypothesis(sub, level, compile_predicate(sub.group, self.dimensions), claim)
            self.hypotheses[sub.hypothesis] = h
        h.submissions.append(sub.id)
        if sub.submitter not in h.submitters:
            h.submitters.append(sub.submitter)
        self.by_submission[sub.id] = sub.hypothesis
        record = h.record()
        self.records.append(record)
        return record

    def observe(self, models: list[str], pred_ts: np.ndarray, ts: np.ndarray, values: list[dict[str, str]],
                eu: np.ndarray) -> None:
        """A batch of outcomes in event-time order: ``eu[i, metric] = (errors, units)``.

        Verdicts are decided after every ``DECIDE_EVERY``-th group outcome, at the budget and at
        the deadline (once an outcome of the model is later than it): points fixed by the data,
        so the verdicts do not depend on how outcomes were batched (or checkpointed)."""
        for h in self.hypotheses.values():
            if h.status != "pending":
                continue
            try:
                self._observe(h, models, pred_ts, ts, values, eu)
            except ValueError as exc:  # one hypothesis that cannot be tested never stops the others
                log.error("submission %s cannot be tested: %s", h.sub.id, exc)
                self._final(h, "untestable", float(ts[-1]) if len(ts) else h.sub.ts)

    def _observe(self, h: Hypothesis, models: list[str], pred_ts: np.ndarray, ts: np.ndarray,
                 values: list[dict[str, str]], eu: np.ndarray) -> None:
        s = h.sub
        model = np.array([mo == s.model for mo in models], dtype=bool)
        passed = bool((model & (ts > s.deadline)).any())
        if h.claim is None:  # drift: tested once the model's baseline is known
            known = self.baseline(s.model, s.metric)
            if known is None or not 0 <= known[0] < self.cap:
                if passed:
                    self._final(h, "untestable", s.deadline)
                return
            if not 0 < known[0] + s.min_gap < self.cap:  # no rate can be that far above the baseline
                self._final(h, "refuted" if known[0] + s.min_gap >= self.cap else "untestable",
                            float(ts[-1]) if len(ts) else s.ts)
                return
            h.claim = DriftClaim(known[0], s.min_gap, cap=self.cap, max_units=self.max_units)
            h.since = known[1]
        claim = h.claim
        m = self.metrics.index(s.metric)
        idx = np.flatnonzero(model & (pred_ts >= s.ts) & (ts >= h.since) & (ts <= s.deadline) & (eu[:, m, 1] > 0))
        member = np.array([h.member(values[i]) for i in idx], dtype=bool)
        count = claim.n + np.cumsum(member)
        keep = count <= s.max_outcomes  # the budget, in group outcomes, exactly
        idx, member, count = idx[keep], member[keep], count[keep]
        stops = np.flatnonzero(member & ((count % DECIDE_EVERY == 0) | (count == s.max_outcomes)))
        start = 0
        for stop in [*stops.tolist(), None]:
            part = slice(start, None if stop is None else stop + 1)
            e, u, g = eu[idx[part], m, 0], eu[idx[part], m, 1], member[part]
            if isinstance(claim, DisparityClaim):
                claim.observe(e, u, g)
            else:
                claim.observe(e[g], u[g])
            if stop is None:
                break
            self._decide(h, float(ts[idx[stop]]), deadline_passed=False)
            if h.status != "pending":
                break
            start = stop + 1
        if h.status == "pending" and passed:
            self._decide(h, s.deadline, deadline_passed=True)

    def expire(self, watermark: float) -> None:
        """End of input: deadlines the watermark has passed are decided (with every outcome in)."""
        for h in self.hypotheses.values():
            if h.status == "pending" and watermark > h.sub.deadline:
                if h.claim is None:
                    self._final(h, "untestable", h.sub.deadline)
                else:
                    self._decide(h, h.sub.deadline, deadline_passed=True)

    def _decide(self, h: Hypothesis, now: float, deadline_passed: bool) -> None:
        assert h.claim is not None
        s = h.sub
        v = decide(h.claim, h.level, h.claim.n, s.max_outcomes, deadline_passed, s.min_gap, self.min_outcomes)
        h.e_value, h.interval = v.e_value, v.interval
        if v.status != "pending":
            if v.status == "confirmed":
                self.fdr.confirm(s.hypothesis, h.claim.log_e_max)
            self._final(h, v.status, now)

    def _final(self, h: Hypothesis, status: str, at: float) -> None:
        h.status, h.decided_at = status, at
        self.records.append(h.record())
        if status == "confirmed":
            self.confirmed.append(h)

    def take_confirmations(self) -> list[Alert]:
        """Alert records (kind ``submission``) for the sinks, crediting the submitters."""
        out = []
        for h in self.confirmed:
            s, claim = h.sub, h.claim
            assert claim is not None and h.decided_at is not None
            against = "the rest of the model" if s.kind == "disparity" else f"its baseline {claim.baseline:.3f}" \
                if isinstance(claim, DriftClaim) else "its baseline"
            group = to_text(s.group)
            title = metric_title(s.metric)
            summary = (f"Bias bounty confirmed ({s.model}): {title} for {group} is worse than {against} by more than "
                       f"{s.min_gap:g} (e-value {h.e_value:.3g} >= {1 / h.level:.3g} after {claim.n:,} group "
                       f"outcomes); submitted by {', '.join(h.submitters)} ({', '.join(h.submissions)})")
            estimate = claim.cs.estimate if claim.cs is not None else s.min_gap
            out.append(Alert("submission", "firing", s.model, {"group": group}, s.metric, round(estimate, 6),
                             s.min_gap, claim.n, rfc3339(h.decided_at), s.hypothesis, s.min_gap, summary,
                             incident=s.hypothesis))
        self.confirmed = []
        return out

    # ---- checkpointing: plain data ------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"fdr": self.fdr.state(), "records": list(self.records),
                "hypotheses": [{"sub": h.sub.to_dict(), "level": h.level,
                                "claim": h.claim.state() if h.claim is not None else None,
                                "submissions": h.submissions, "submitters": h.submitters, "status": h.status,
                                "decided_at": h.decided_at, "e_value": h.e_value,
                                "interval": list(h.interval) if h.interval is not None else None,
                                "since": h.since}
                               for h in self.hypotheses.values()]}

    def restore(self, state: dict[str, Any]) -> None:
        self.fdr = ELond.restore(state["fdr"])
        self.records = list(state["records"])
        self.hypotheses, self.by_submission = {}, {}
        for d in state["hypotheses"]:
            sub = Submission.from_dict(d["sub"])
            c = d["claim"]
            claim = None if c is None else (DisparityClaim.restore(c) if c["kind"] == "disparity" else DriftClaim.restore(c))
            h = Hypothesis(sub, d["level"], compile_predicate(sub.group, self.dimensions), claim, list(d["submissions"]),
                           list(d["submitters"]), d["status"], d["decided_at"], d["e_value"],
                           tuple(d["interval"]) if d["interval"] is not None else None,  # type: ignore[arg-type]
                           d["since"])
            self.hypotheses[sub.hypothesis] = h
            for sid in h.submissions:
                self.by_submission[sid] = sub.hypothesis

    def take_records(self) -> list[dict[str, Any]]:
        out, self.records = self.records, []
        return out
