"""Who may submit: bearer tokens per submitter, and a rate limit per submitter.

Tokens are configured in a small YAML/JSON document, read from a file or an environment
variable (``submissions.tokens: {file: ...}`` or ``{env: ...}``)::

    submitters:
      - {name: org-x, sha256: 9f86d081884c7d65..., models: [asr-en]}   # the token's SHA-256, hex
      - {name: org-y, token: "a long random string", models: ["*"]}     # hashed at load

Only SHA-256 digests are kept in memory; a request's token is hashed and compared with every
digest in constant time (``hmac.compare_digest``, over all entries whatever matches), so
neither the token nor the position of a match leaks through timing. Tokens never appear in
logs, responses or metrics: callers see a :class:`Submitter`, never the token.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import yaml

_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}")
MIN_TOKEN_CHARS = 16


class TokenError(ValueError):
    """The tokens document is unusable; the message names the entry and key."""


@dataclass(frozen=True)
class Submitter:
    name: str
    models: frozenset[str]  # "*": every model

    def allowed(self, model: str) -> bool:
        return "*" in self.models or model in self.models


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class TokenStore:
    """Submitters by the SHA-256 of their bearer token."""

    def __init__(self, entries: list[tuple[bytes, Submitter]]):
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def parse(cls, text: str, where: str = "submissions.tokens") -> TokenStore:
        """From the tokens document (YAML or JSON); errors name ``where`` and the entry."""
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TokenError(f"{where}: not YAML/JSON ({str(exc).splitlines()[0]})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("submitters"), list):
            raise TokenError(f"{where}: expected a mapping with a `submitters` list")
        entries: list[tuple[bytes, Submitter]] = []
        names: set[str] = set()
        digests: set[bytes] = set()
        for i, item in enumerate(doc["submitters"]):
            at = f"{where}: submitters[{i}]"
            if not isinstance(item, dict):
                raise TokenError(f"{at}: expected a mapping")
            unknown = set(item) - {"name", "sha256", "token", "models"}
            if unknown:
                raise TokenError(f"{at}: unknown key(s) {sorted(map(str, unknown))}")
            name = item.get("name")
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise TokenError(f"{at}.name: 1-64 characters of letters, digits and _.:@- (starting with a "
                                 "letter or digit)")
            if name in names:
                raise TokenError(f"{at}.name: {name!r} is listed twice")
            names.add(name)
            if ("sha256" in item) == ("token" in item):
                raise TokenError(f"{at}: give exactly one of `sha256` (preferred) or `token`")
            if "sha256" in item:
                hexdigest = item["sha256"]
                if not isinstance(hexdigest, str) or not _HEX64.fullmatch(hexdigest.lower()):
                    raise TokenError(f"{at}.sha256: 64 hexadecimal characters (sha256sum of the token)")
                digest = bytes.fromhex(hexdigest)
            else:
                token = item["token"]
                if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS:
                    raise TokenError(f"{at}.token: at least {MIN_TOKEN_CHARS} characters")
                digest = token_digest(token)
            if digest in digests:
                raise TokenError(f"{at}: the same token as an earlier submitter")
            digests.add(digest)
            models = item.get("models", ["*"])
            if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
                raise TokenError(f"{at}.models: a non-empty list of model names, or [\"*\"]")
            entries.append((digest, Submitter(name, frozenset(models))))
        return cls(entries)

    def authenticate(self, authorization: str | None) -> Submitter | None:
        """The submitter whose token an ``Authorization: Bearer <token>`` header carries, or None."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        token = authorization[len("Bearer "):].strip()
        if not token or len(token) > 4096:
            return None
        digest = token_digest(token)
        found = None
        for stored, submitter in self._entries:  # every entry, whatever matches: no timing by position
            if hmac.compare_digest(stored, digest):
                found = submitter
        return found


class RateLimiter:
    """A token bucket per submitter: ``burst`` requests at once, refilled at ``per_minute``."""

    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float]):
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # submitter → (tokens, at)

    def allow(self, who: str) -> tuple[bool, float]:
        """(allowed, seconds until the next request would be allowed)."""
        now = self.clock()
        tokens, at = self._buckets.get(who, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[who] = (tokens - 1.0, now)
            return True, 0.0
        self._buckets[who] = (tokens, now)
        wait = (1.0 - tokens) / self.rate if self.rate > 0 else math.inf
        return False, wait

