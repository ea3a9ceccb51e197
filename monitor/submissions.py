"""Bias-bounty submissions: the event an outside evaluator sends, validated into plain data.

A submission names a model, a group (a predicate over declared dimensions, :mod:`monitor.predicate`),
a claim and a budget::

    {"type": "submission", "id": "sub-17", "ts": "2026-11-24T10:00:00Z", "model": "asr-en",
     "submitter": "org-x",
     "group": {"all": [{"dim": "accent", "in": ["scottish", "nigerian-english"]},
                       {"dim": "noise", "eq": "ward-b"}]},
     "claim": {"kind": "disparity", "metric": "wer", "min_gap": 0.05},
     "budget": {"max_outcomes": 5000, "deadline": "30d"}}

``group`` may also be the text form (``"accent in {scottish, nigerian-english} and noise =
ward-b"``). Claims: ``disparity`` (the group is worse than the rest of the model by more than
``min_gap``) and ``drift`` (worse than its baseline by more than ``min_gap``). Every problem is a
:class:`SubmissionError` naming the JSON path of the bad value; nothing in a submission is
evaluated, compiled or unpickled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from monitor.config import parse_duration
from monitor.events import parse_ts
from monitor.predicate import PredicateError, hypothesis_id, parse_group

CLAIMS = ("disparity", "drift")
MAX_ID_CHARS = 128
DEFAULT_MAX_OUTCOMES = 5000
DEFAULT_DEADLINE = 30 * 86400.0
MAX_OUTCOMES_LIMIT = 10_000_000
MAX_DEADLINE = 366 * 86400.0
MIN_DEADLINE = 3600.0  # shorter tests could only spend the shared false-discovery budget
MIN_OUTCOMES = 100


class SubmissionError(ValueError):
    """A submission that cannot be tested; ``path`` is the JSON path of the problem."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


@dataclass(frozen=True)
class Submission:
    id: str
    ts: float  # only outcomes predicted at or after this count (the test is prospective)
    model: str
    submitter: str
    group: dict[str, Any]  # canonical predicate tree
    kind: str  # "disparity" | "drift"
    metric: str
    min_gap: float
    max_outcomes: int
    deadline: float  # event time after which no more outcomes count
    hypothesis: str  # hash of model, canonical group and claim: duplicates join one test

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Submission:
        """Back from :meth:`to_dict` (a checkpoint: already validated)."""
        c, b = d["claim"], d["budget"]
        return cls(d["id"], d["ts"], d["model"], d["submitter"], d["group"], c["kind"], c["metric"], c["min_gap"],
                   b["max_outcomes"], b["deadline"], d["hypothesis"])

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "ts": self.ts, "model": self.model, "submitter": self.submitter, "group": self.group,
                "claim": {"kind": self.kind, "metric": self.metric, "min_gap": self.min_gap},
                "budget": {"max_outcomes": self.max_outcomes, "deadline": self.deadline}, "hypothesis": self.hypothesis}


def _text(obj: dict[str, Any], key: str, path: str, limit: int = MAX_ID_CHARS) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        raise SubmissionError(f"{path}.{key}", f"a non-empty printable string of at most {limit} characters")
    return value


def parse_submission(obj: Any, *, dimensions: tuple[str, ...], metrics: tuple[str, ...],
                     models: frozenset[str] | None = None, submitter: str | None = None,
                     cap: float = 1.0) -> Submission:
    """Validate one submission object. ``submitter``: the authenticated submitter (the API sets
    it; a body naming another one is refused). ``models``: the models accepted, when restricted."""
    if not isinstance(obj, dict):
        raise SubmissionError("$", "a submission is a JSON object")
    known = {"type", "id", "ts", "model", "submitter", "group", "claim", "budget"}
    unknown = sorted(str(k) for k in obj if k not in known)
    if unknown:
        raise SubmissionError(f"$.{unknown[0][:40]}", f"unknown field (known: {', '.join(sorted(known))})")
    if obj.get("type", "submission") != "submission":
        raise SubmissionError("$.type", "must be \"submission\"")
    sid = _text(obj, "id", "$")
    try:
        ts = parse_ts(obj.get("ts"))
    except ValueError as exc:
        raise SubmissionError("$.ts", str(exc)[:120]) from None
    model = _text(obj, "model", "$", 200)
    if models is not None and model not in models:
        raise SubmissionError("$.model", "not a model this monitor accepts")
    who = obj.get("submitter", submitter)
    if not isinstance(who, str) or not who or len(who) > 64 or not who.isprintable():
        raise SubmissionError("$.submitter", "the submitter's name (printable, at most 64 characters)")
    if submitter is not None and who != submitter:
        raise SubmissionError("$.submitter", "must be the authenticated submitter (or left out)")
    if "group" not in obj:
        raise SubmissionError("$.group", "missing: a predicate tree or its text form")
    try:
        group = parse_group(obj["group"], dimensions, path="$.group")
    except PredicateError as exc:
        raise SubmissionError(exc.path, exc.message) from None

    claim = obj.get("claim")
    if not isinstance(claim, dict):
        raise SubmissionError("$.claim", "an object: {kind, metric, min_gap}")
    extra = sorted(str(k) for k in claim if k not in ("kind", "metric", "min_gap"))
    if extra:
        raise SubmissionError(f"$.claim.{extra[0][:40]}", "unknown field (known: kind, metric, min_gap)")
    kind = claim.get("kind")
    if kind not in CLAIMS:
        raise SubmissionError("$.claim.kind", f"one of {', '.join(CLAIMS)}")
    metric = claim.get("metric", metrics[0])
    if metric not in metrics:
        raise SubmissionError("$.claim.metric", f"one of the configured metrics: {', '.join(metrics)}")
    gap = claim.get("min_gap")
    if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not math.isfinite(gap) or not 0 <= gap < cap:
        raise SubmissionError("$.claim.min_gap", f"a number in [0, {cap:g}): the gap in metric units the claim asserts")

    budget = obj.get("budget", {})
    if not isinstance(budget, dict):
        raise SubmissionError("$.budget", "an object: {max_outcomes, deadline}")
    extra = sorted(str(k) for k in budget if k not in ("max_outcomes", "deadline"))
    if extra:
        raise SubmissionError(f"$.budget.{extra[0][:40]}", "unknown field (known: max_outcomes, deadline)")
    max_outcomes = budget.get("max_outcomes", DEFAULT_MAX_OUTCOMES)
    if (isinstance(max_outcomes, bool) or not isinstance(max_outcomes, int)
            or not MIN_OUTCOMES <= max_outcomes <= MAX_OUTCOMES_LIMIT):
        raise SubmissionError("$.budget.max_outcomes", f"an integer from {MIN_OUTCOMES} to {MAX_OUTCOMES_LIMIT:,}")
    try:
        deadline = parse_duration(budget.get("deadline", DEFAULT_DEADLINE))
    except ValueError as exc:
        raise SubmissionError("$.budget.deadline", str(exc)[:120]) from None
    if not MIN_DEADLINE <= deadline <= MAX_DEADLINE:
        raise SubmissionError("$.budget.deadline", "from 1 hour to 366 days")

    claim_canon = {"kind": kind, "metric": metric, "min_gap": float(gap)}
    return Submission(sid, ts, model, who, group, kind, metric, float(gap), max_outcomes, ts + deadline,
                      hypothesis_id(model, group, claim_canon))
