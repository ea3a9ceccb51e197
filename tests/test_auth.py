"""Submitters' bearer tokens and rate limits (monitor/auth.py)."""

from __future__ import annotations

import hashlib

import pytest

from monitor.auth import RateLimiter, TokenError, TokenStore

TOKEN_X = "x-token-0123456789abcdef"
TOKEN_Y = "y-token-fedcba9876543210"
DOC = f"""
submitters:
  - {{name: org-x, sha256: {hashlib.sha256(TOKEN_X.encode()).hexdigest()}, models: [asr-en]}}
  - {{name: org-y, token: "{TOKEN_Y}"}}
"""


def test_a_token_authenticates_its_submitter_for_its_models_only() -> None:
    store = TokenStore.parse(DOC)
    x = store.authenticate(f"Bearer {TOKEN_X}")
    assert x is not None and x.name == "org-x" and x.allowed("asr-en") and not x.allowed("other")
    y = store.authenticate(f"Bearer {TOKEN_Y}")
    assert y is not None and y.name == "org-y" and y.allowed("anything")
    for header in (None, "", "Bearer", "Bearer ", f"Basic {TOKEN_X}", f"bearer {TOKEN_X}", f"Bearer {TOKEN_X}x",
                   "Bearer " + "a" * 10_000, f"Bearer {TOKEN_X[:-1]}"):
        assert store.authenticate(header) is None, header


def test_only_digests_are_kept() -> None:
    store = TokenStore.parse(DOC)
    assert TOKEN_Y not in repr(store.__dict__) and TOKEN_X not in repr(store.__dict__)


@pytest.mark.parametrize("doc, where", [
    ("submitters: 3", "a mapping with a `submitters` list"),
    ("[1, 2", "not YAML/JSON"),
    ("submitters: [{name: a, token: short}]", "submitters[0].token: at least 16"),
    ("submitters: [{name: a, sha256: abc}]", "submitters[0].sha256: 64 hexadecimal"),
    ("submitters: [{name: a}]", "submitters[0]: give exactly one"),
    (f"submitters: [{{name: a, token: {TOKEN_X}, sha256: {'0' * 64}}}]", "submitters[0]: give exactly one"),
    (f"submitters: [{{name: 'a b', token: {TOKEN_X}}}]", "submitters[0].name"),
    (f"submitters: [{{name: a, token: {TOKEN_X}}}, {{name: a, token: {TOKEN_Y}}}]", "submitters[1].name: 'a' is listed"),
    (f"submitters: [{{name: a, token: {TOKEN_X}}}, {{name: b, token: {TOKEN_X}}}]", "submitters[1]: the same token"),
    (f"submitters: [{{name: a, token: {TOKEN_X}, models: []}}]", "submitters[0].models"),
    (f"submitters: [{{name: a, token: {TOKEN_X}, role: admin}}]", "submitters[0]: unknown key(s) ['role']"),
])
def test_a_bad_tokens_document_names_the_entry_and_key(doc: str, where: str) -> None:
    with pytest.raises(TokenError, match=None) as err:
        TokenStore.parse(doc)
    assert where in str(err.value) and str(err.value).startswith("submissions.tokens")
    assert TOKEN_X not in str(err.value) and TOKEN_Y not in str(err.value)  # never echoed


def test_the_rate_limit_allows_a_burst_then_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=6, burst=3, clock=lambda: now[0])
    assert [limiter.allow("a")[0] for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")[0]  # per submitter
    ok, wait = limiter.allow("a")
    assert not ok and wait == pytest.approx(10.0)
    now[0] = 10.0
    assert limiter.allow("a")[0] and not limiter.allow("a")[0]
