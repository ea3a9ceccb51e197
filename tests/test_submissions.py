"""Bias-bounty submission events: validated into plain data, every problem with its JSON path."""

from __future__ import annotations

import pytest

from monitor.submissions import Submission, SubmissionError, parse_submission

DIMS = ("tenant", "accent", "device", "noise")
GOOD = {"type": "submission", "id": "sub-17", "ts": "2026-11-24T10:00:00Z", "model": "asr-en", "submitter": "org-x",
        "group": {"all": [{"dim": "accent", "in": ["scottish", "nigerian-english"]}, {"dim": "noise", "eq": "ward-b"}]},
        "claim": {"kind": "disparity", "metric": "wer", "min_gap": 0.05},
        "budget": {"max_outcomes": 5000, "deadline": "30d"}}


def parse(obj: dict, **kw) -> Submission:
    return parse_submission(obj, dimensions=DIMS, metrics=("wer",), **kw)


def test_a_submission_is_plain_data_and_its_hypothesis_ignores_spelling() -> None:
    sub = parse(GOOD)
    assert (sub.model, sub.kind, sub.metric, sub.min_gap, sub.max_outcomes) == ("asr-en", "disparity", "wer", 0.05, 5000)
    assert sub.deadline - sub.ts == 30 * 86400
    text = parse({**GOOD, "id": "sub-18", "group": "noise = ward-b and accent in {nigerian-english, scottish}"})
    assert text.hypothesis == sub.hypothesis and text.group == sub.group
    other = parse({**GOOD, "claim": {**GOOD["claim"], "min_gap": 0.06}})
    assert other.hypothesis != sub.hypothesis


@pytest.mark.parametrize("change, path", [
    ({"id": ""}, "$.id"),
    ({"id": "x" * 500}, "$.id"),
    ({"ts": "yesterday"}, "$.ts"),
    ({"model": 3}, "$.model"),
    ({"colour": "red"}, "$.colour"),
    ({"type": "prediction"}, "$.type"),
    ({"claim": {"kind": "better", "min_gap": 0.05}}, "$.claim.kind"),
    ({"claim": {"kind": "drift", "metric": "bleu", "min_gap": 0.05}}, "$.claim.metric"),
    ({"claim": {"kind": "drift", "min_gap": "0.05"}}, "$.claim.min_gap"),
    ({"claim": {"kind": "drift", "min_gap": float("nan")}}, "$.claim.min_gap"),
    ({"claim": {"kind": "drift", "min_gap": 0.05, "eval": "x"}}, "$.claim.eval"),
    ({"budget": {"max_outcomes": 0}}, "$.budget.max_outcomes"),
    ({"budget": {"max_outcomes": True}}, "$.budget.max_outcomes"),
    ({"budget": {"deadline": "400d"}}, "$.budget.deadline"),
    ({"budget": {"deadline": "soon"}}, "$.budget.deadline"),
    ({"group": {"all": [{"dim": "colour", "eq": "red"}]}}, "$.group.all[0]"),
])
def test_each_problem_is_named_by_its_json_path(change: dict, path: str) -> None:
    with pytest.raises(SubmissionError) as err:
        parse({**GOOD, **change})
    assert err.value.path.startswith(path), (err.value.path, str(err.value))


def test_the_authenticated_submitter_and_accepted_models_bind() -> None:
    assert parse(GOOD, submitter="org-x").submitter == "org-x"
    assert parse({k: v for k, v in GOOD.items() if k != "submitter"}, submitter="org-x").submitter == "org-x"
    with pytest.raises(SubmissionError, match=r"\$\.submitter"):
        parse(GOOD, submitter="org-y")
    with pytest.raises(SubmissionError, match=r"\$\.model"):
        parse(GOOD, models=frozenset({"other"}))
