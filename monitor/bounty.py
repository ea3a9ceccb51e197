"""Bias bounties: submitted groups tested prospectively on the model's outcomes, with verdicts.

Each distinct hypothesis (model, canonical group, claim: :func:`monitor.predicate.hypothesis_id`)
is one test; a duplicate submission joins it (the first submitter keeps the credit). When the
hypothesis first arrives it is given its e-LOND level ``α_t`` (:class:`monitor.bounty_stats.ELond`),
fixed from the discoveries made before it. Only outcomes whose *prediction* time is at or after
the submission's time count, so a group chosen by studying the public slice table is still
tested honestly; outcomes after the deadline or beyond the budget are not used.

A drift claim is tested against the group's baseline: the largest own baseline among the
nearest tracked slices that contain the group (:meth:`monitor.slices.SliceIndex.group_ancestors`),
looked up when the submission arrives if its model's reference period is over, else when it
closes; outcomes count from then on.

The engine hands each batch of outcomes over (:class:`Batch`) and :meth:`BountyBook.advance`
feeds the claims; the verdict is decided (:func:`monitor.bounty_stats.decide`) after every 50th
group outcome, at the budget and at the deadline — points fixed by the data, not by batching,
so replay and a restored checkpoint reach the same verdicts. A confirmation reports the
position in the batch from which the group is *pinned* as a tracked slice (the engine's side).
(The engine registers submissions in event-time order among the outcomes, so the daemon and a
replay of its topics count the same outcomes and give the same levels.) The first verdict other than ``pending``
is final, and a final hypothesis keeps only its numbers, not its e-process.
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
from monitor.predicate import Tree, to_text
from monitor.submissions import Submission

log = logging.getLogger("lastmile")

#: a verdict record's ``status``: pending, then one final status
FINAL = ("confirmed", "not_confirmed", "refuted", "untestable")
DECIDE_EVERY = 50  # group outcomes between verdict decisions
_NONE = np.zeros(0, dtype=np.int64)


@dataclass
class Batch:
    """A batch of outcomes in the order the detectors see them."""

    pop: np.ndarray  # the population slice id of each outcome's model
    pred_ts: np.ndarray  # prediction time (event time for outcome events)
    ts: np.ndarray
    eu: np.ndarray  # eu[i, metric] = (errors, units)
    members: dict[int, np.ndarray]  # watch id → positions of the outcomes holding that group

    @classmethod
    def build(cls, pop: np.ndarray, pred_ts: np.ndarray, ts: np.ndarray, eu: np.ndarray,
              watched: list[tuple[int, ...]]) -> Batch:
        members: dict[int, list[int]] = {}
        for i, groups in enumerate(watched):
            for w in groups:
                members.setdefault(w, []).append(i)
        return cls(pop, pred_ts, ts, eu, {w: np.array(v, dtype=np.int64) for w, v in members.items()})


@dataclass
class Hypothesis:
    sub: Submission  # the first submission of this hypothesis: its submitter has the credit
    level: float  # its e-LOND α_t
    claim: DisparityClaim | DriftClaim | None  # drift: None until its baseline is known; None once final
    status: str = "pending"
    decided_at: float | None = None
    e_value: float = 1.0
    interval: tuple[float, float] | None = None
    watch: int = -1  # the routing watch telling which outcomes hold the group (while pending)
    n: int = 0  # group outcomes counted
    estimate: float | None = None  # of the gap
    baseline: float | None = None  # drift: what the group is compared with
    joined: list[tuple[str, str]] = field(default_factory=list)  # (submitter, submission id), in order

    @property
    def submissions(self) -> list[str]:
        """Ids that joined it, the first included."""
        return [sid for _, sid in self.joined]

    @property
    def submitters(self) -> list[str]:
        """Who submitted it, in order, each once (the first has the credit)."""
        return list(dict.fromkeys(who for who, _ in self.joined))

    def record(self) -> dict[str, Any]:
        s = self.sub
        return {"type": "verdict", "hypothesis": s.hypothesis, "submissions": list(self.submissions),
                "submitters": list(self.submitters), "credited": s.submitter,
                "joined": [{"submitter": who, "id": sid} for who, sid in self.joined], "model": s.model, "group": s.group,
                "group_text": to_text(s.group), "claim": {"kind": s.kind, "metric": s.metric, "min_gap": s.min_gap},
                "status": self.status, "e_value": self.e_value, "threshold": 1.0 / self.level,
                "interval": list(self.interval) if self.interval is not None else None,
                "estimate": self.estimate, "baseline": self.baseline, "n": self.n,
                "submitted": rfc3339(s.ts), "deadline": rfc3339(s.deadline),
                "decided": rfc3339(self.decided_at) if self.decided_at is not None else None}


class BountyBook:
    def __init__(self, dimensions: tuple[str, ...], metrics: tuple[str, ...], alpha: float, min_outcomes: int,
                 cap: float, max_units: float, baseline: Callable[[str, Tree, str], float | None],
                 reference_closed: Callable[[str], bool], population: Callable[[str], int]):
        """``baseline(model, group, metric)``: the group's baseline for a drift claim, or None;
        ``reference_closed(model)``: whether baselines are settled for the model;
        ``population(model)``: its population slice id (-1: not seen yet)."""
        self.dimensions, self.metrics = dimensions, metrics
        self.baseline, self.reference_closed, self.population = baseline, reference_closed, population
        self.min_outcomes, self.cap, self.max_units = min_outcomes, cap, max_units
        self.fdr = ELond(alpha)
        self.hypotheses: dict[str, Hypothesis] = {}
        self.by_submission: dict[tuple[str, str], str] = {}  # (submitter, submission id) → hypothesis
        self.records: list[dict[str, Any]] = []  # verdict records not yet handed out
        self.confirmed: list[Hypothesis] = []  # confirmations not yet handed out (to the sinks)
        self.finished: list[Hypothesis] = []  # final since the engine last looked (it stops watching them)
        self.next_deadline = math.inf  # the earliest deadline of a pending hypothesis

    @property
    def pending(self) -> int:
        return sum(1 for h in self.hypotheses.values() if h.status == "pending")

    def counts(self) -> dict[str, int]:
        out = {status: 0 for status in ("pending", *FINAL)}
        for h in self.hypotheses.values():
            out[h.status] += 1
        return out

    def submit(self, sub: Submission) -> Hypothesis:
        """A valid submission: its hypothesis (a duplicate joins the existing test; a submitter
        re-sending an id it used gets what it had)."""
        known = self.by_submission.get((sub.submitter, sub.id))
        if known is not None:
            return self.hypotheses[known]
        h = self.hypotheses.get(sub.hypothesis)
        if h is None:
            level = self.fdr.register(sub.hypothesis)
            claim = DisparityClaim(sub.min_gap, cap=self.cap, max_units=self.max_units) if sub.kind == "disparity" \
                else None
            h = Hypothesis(sub, level, claim)
            self.hypotheses[sub.hypothesis] = h
            if sub.kind == "drift" and self.reference_closed(sub.model):
                self._start_drift(h, sub.ts)
        h.joined.append((sub.submitter, sub.id))
        self.by_submission[(sub.submitter, sub.id)] = sub.hypothesis
        self.records.append(h.record())
        if h.status == "pending":
            self.next_deadline = min(self.next_deadline, h.sub.deadline)
        return h

    def _start_drift(self, h: Hypothesis, at: float) -> bool:
        """Look up the group's baseline; without a usable one the claim cannot be tested."""
        s = h.sub
        base = self.baseline(s.model, s.group, s.metric)
        if base is None or not 0 <= base < self.cap:
            self._final(h, "untestable", at)
            return False
        h.baseline = base
        if base + s.min_gap >= self.cap:  # no rate can be that far above the baseline
            self._final(h, "refuted", at)
            return False
        h.claim = DriftClaim(base, s.min_gap, cap=self.cap, max_units=self.max_units)
        return True

    def advance(self, batch: Batch, start: int = 0,
                only: list[Hypothesis] | None = None) -> list[tuple[int, Hypothesis]]:
        """Feed outcomes ``start..`` of the batch to the pending claims (or to ``only`` these).

        Verdicts are decided after every ``DECIDE_EVERY``-th group outcome, at the budget and at
        the deadline (once an outcome of the model is later than it): points fixed by the data,
        so the verdicts do not depend on how outcomes were batched (or checkpointed). Returns the
        confirmations with the position from which their group is to be tracked (the outcome
        after the deciding one)."""
        out = []
        models: dict[int, np.ndarray] = {}
        mark = len(self.records)
        for h in (only if only is not None else list(self.hypotheses.values())):
            if h.status != "pending" or h.claim is None:
                continue
            pop = self.population(h.sub.model)
            if pop < 0:
                continue
            if pop not in models:
                models[pop] = mask = batch.pop == pop
                mask[:start] = False
            try:
                at = self._advance(h, batch, models[pop])
            except ValueError as exc:  # one hypothesis that cannot be tested never stops the others
                log.error("submission %s cannot be tested: %s", h.sub.id, exc)
                self._final(h, "untestable", float(batch.ts[-1]) if len(batch.ts) else h.sub.ts)
                continue
            if at is not None:
                out.append((at, h))
        # verdict records in the order they were reached, not the order of the book
        self.records[mark:] = sorted(self.records[mark:], key=lambda r: (r["decided"] or "", r["hypothesis"]))
        return sorted(out, key=lambda x: (x[0], x[1].sub.hypothesis))

    def _advance(self, h: Hypothesis, b: Batch, model: np.ndarray) -> int | None:
        s, claim = h.sub, h.claim
        assert claim is not None
        m = self.metrics.index(s.metric)
        late = np.flatnonzero(model & (b.ts > s.deadline))
        member = np.zeros(len(b.ts), dtype=bool)
        member[b.members.get(h.watch, _NONE)] = True
        usable = model & (b.pred_ts >= s.ts) & (b.ts <= s.deadline) & (b.eu[:, m, 1] > 0)
        idx = np.flatnonzero(usable & member if isinstance(claim, DriftClaim) else usable)
        g = member[idx]
        count = claim.n + np.cumsum(g)
        keep = count <= s.max_outcomes  # the budget, in group outcomes, exactly
        idx, g, count = idx[keep], g[keep], count[keep]
        stops = np.flatnonzero(g & ((count % DECIDE_EVERY == 0) | (count == s.max_outcomes)))
        begin = 0
        for stop in [*stops.tolist(), None]:
            part = slice(begin, None if stop is None else stop + 1)
            e, u = b.eu[idx[part], m, 0], b.eu[idx[part], m, 1]
            if isinstance(claim, DisparityClaim):
                claim.observe(e, u, g[part])
            else:
                claim.observe(e, u)
            if stop is None:
                break
            self._decide(h, claim, float(b.ts[idx[stop]]), deadline_passed=False)
            if h.status != "pending":
                return int(idx[stop]) + 1 if h.status == "confirmed" else None
            begin = stop + 1
        if late.size:
            self._decide(h, claim, s.deadline, deadline_passed=True)
            if h.status == "confirmed":
                return max(int(late[0]), int(idx[-1]) + 1 if idx.size else 0)
        return None

    def reference_closed_for(self, model: str, at: float, batch: Batch, start: int) -> list[tuple[int, Hypothesis]]:
        """``model``'s reference period closed at event time ``at``, before outcome ``start`` of the
        batch: drift claims waiting for their baseline get it and count from there."""
        ready = []
        for h in self.hypotheses.values():
            if h.status == "pending" and h.claim is None and h.sub.model == model and self._start_drift(h, at):
                ready.append(h)
        return self.advance(batch, start, ready) if ready else []

    def expire(self, watermark: float) -> list[Hypothesis]:
        """Deadlines the watermark has passed are decided (with every outcome before it in).
        Returns the confirmations."""
        out = []
        due = [h for h in self.hypotheses.values() if h.status == "pending" and watermark > h.sub.deadline]
        for h in sorted(due, key=lambda h: (h.sub.deadline, h.sub.hypothesis)):
            if h.claim is None:
                self._final(h, "untestable", h.sub.deadline)
            else:
                self._decide(h, h.claim, h.sub.deadline, deadline_passed=True)
                if h.status == "confirmed":
                    out.append(h)
        return out

    def _decide(self, h: Hypothesis, claim: DisparityClaim | DriftClaim, now: float, deadline_passed: bool) -> None:
        s = h.sub
        v = decide(claim, h.level, claim.n, s.max_outcomes, deadline_passed, s.min_gap, self.min_outcomes)
        # (sums of floats: rounded so that where batches ended, which changes the last bits, never shows)
        h.e_value, h.interval, h.n = float(f"{v.e_value:.10g}"), v.interval, claim.n
        h.estimate = round(claim.cs.estimate, 9) if claim.cs is not None and claim.cs.sum_w > 0 else None
        if v.status != "pending":
            if v.status == "confirmed":
                self.fdr.confirm(s.hypothesis, claim.log_e_max)
            self._final(h, v.status, now)

    def _final(self, h: Hypothesis, status: str, at: float) -> None:
        h.status, h.decided_at = status, at
        if h.sub.deadline <= self.next_deadline:
            self.next_deadline = min((x.sub.deadline for x in self.hypotheses.values() if x.status == "pending"),
                                     default=math.inf)
        h.claim = None  # its numbers are kept; the e-process and interval state are not needed any more
        self.records.append(h.record())
        self.finished.append(h)
        if status == "confirmed":
            self.confirmed.append(h)

    def take_finished(self) -> list[Hypothesis]:
        out, self.finished = self.finished, []
        return out

    def take_confirmations(self) -> list[Alert]:
        """Alert records (kind ``submission``) for the sinks, crediting the first submitter."""
        out = [self.confirmation(h) for h in self.confirmed]
        self.confirmed = []
        return out

    def confirmation(self, h: Hypothesis) -> Alert:
        """The alert record of a confirmation (it is then no longer among those to take)."""
        self.confirmed = [x for x in self.confirmed if x is not h]
        s = h.sub
        assert h.decided_at is not None
        against = "the rest of the model" if s.kind == "disparity" else f"its baseline {h.baseline:.3f}"
        group = to_text(s.group)
        title = metric_title(s.metric)
        others = [x for x in h.submitters if x != s.submitter]
        credit = f"submitted by {s.submitter} ({s.id}, {rfc3339(s.ts)})" + (
            f"; later also by {', '.join(others)}" if others else "")
        summary = (f"Bias bounty confirmed ({s.model}): {title} for {group} is worse than {against} by more than "
                   f"{s.min_gap:g} (e-value {h.e_value:.3g} >= {1 / h.level:.3g} after {h.n:,} group "
                   f"outcomes); {credit}")
        estimate = h.estimate if h.estimate is not None else s.min_gap
        return Alert("submission", "firing", s.model, {"group": group}, s.metric, round(estimate, 6),
                     s.min_gap, h.n, rfc3339(h.decided_at), s.hypothesis, s.min_gap, summary,
                     incident=s.hypothesis)

    # ---- checkpointing: plain data ------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"fdr": self.fdr.state(), "records": list(self.records),
                "finished": [h.sub.hypothesis for h in self.finished],
                "hypotheses": [{"sub": h.sub.to_dict(), "level": h.level,
                                "claim": h.claim.state() if h.claim is not None else None,
                                "status": h.status,
                                "decided_at": h.decided_at, "e_value": h.e_value,
                                "interval": list(h.interval) if h.interval is not None else None,
                                "watch": h.watch, "n": h.n, "estimate": h.estimate, "baseline": h.baseline,
                                "joined": [list(j) for j in h.joined]}
                               for h in self.hypotheses.values()]}

    def restore(self, state: dict[str, Any]) -> None:
        self.fdr = ELond.restore(state["fdr"])
        self.records = list(state["records"])
        self.hypotheses = {}
        for d in state["hypotheses"]:
            sub = Submission.from_dict(d["sub"])
            c = d["claim"]
            claim = None if c is None else (DisparityClaim.restore(c) if c["kind"] == "disparity" else DriftClaim.restore(c))
            interval = (float(d["interval"][0]), float(d["interval"][1])) if d["interval"] is not None else None
            self.hypotheses[sub.hypothesis] = Hypothesis(
                sub, d["level"], claim, d["status"], d["decided_at"],
                d["e_value"], interval, d.get("watch", -1), d.get("n", claim.n if claim is not None else 0),
                d.get("estimate"), d.get("baseline"), [(who, sid) for who, sid in d.get("joined", [])])
        self.by_submission = {joined: key for key, h in self.hypotheses.items() for joined in h.joined}
        self.finished = [self.hypotheses[k] for k in state.get("finished", [])]
        self.confirmed = []
        self.next_deadline = min((h.sub.deadline for h in self.hypotheses.values() if h.status == "pending"),
                                 default=math.inf)

    def take_records(self) -> list[dict[str, Any]]:
        out, self.records = self.records, []
        return out
