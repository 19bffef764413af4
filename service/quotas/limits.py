"""Quota rules that need no store: who may call (the one validity rule of a token), what a
request reserves, and OpenAI's rate-limit headers."""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any

from service.store.backend import NO_BUDGET, NO_LIMITS, RateLimits, SpendBudget
from service.store.periods import BudgetPeriod
from service.types import Headers

# Without max_tokens a request reserves this many completion tokens; settlement corrects it.
DEFAULT_COMPLETION_ESTIMATE = 1024
# Rough prompt estimate: OpenAI-family tokenizers average about four bytes per token.
BYTES_PER_TOKEN = 4
LIMITS = ("rpm", "tpm", "max_concurrency")
# Budget periods as the quota script knows them (UTC calendar; "total" never resets).
PERIODS = {
    "total": BudgetPeriod.TOTAL,
    "day": BudgetPeriod.DAY,
    "week": BudgetPeriod.WEEK,
    "month": BudgetPeriod.MONTH,
}
MICRO = 1_000_000  # budgets are counted in micro-USD integers


def _int(value: str | None) -> int:
    try:
        return max(0, int(value or 0))
    except ValueError:
        return 0


def budget_micro(value: str | None) -> int | None:
    """A stored ``budget_usd`` in micro-USD; None when there is no budget."""
    if not value:
        return None
    try:
        return max(0, round(float(value) * MICRO))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Record:
    """A token's or a team's stored record, parsed once when it enters the local cache."""

    fields: dict[str, str] = field(repr=False)
    id: str = ""
    team: str | None = None
    limits: RateLimits = NO_LIMITS
    expires_ms: int = 0
    revoked: bool = False
    updated_ms: int = 0
    budget: SpendBudget = NO_BUDGET
    cache_ttl_s: int | None = (
        None  # response cache: None not set (the team's, or the default), 0 off
    )

    @classmethod
    def parse(cls, fields: dict[str, str]) -> Record:
        return cls(
            fields=fields,
            id=fields.get("id", ""),
            team=fields.get("team") or None,
            limits=RateLimits(
                rpm=_int(fields.get("rpm")),
                tpm=_int(fields.get("tpm")),
                max_concurrency=_int(fields.get("max_concurrency")),
            ),
            expires_ms=_int(fields.get("expires_ms")),
            # A deleted team keeps its record (so no replica's re-seed brings it back).
            revoked=fields.get("revoked") == "1" or fields.get("deleted") == "1",
            updated_ms=_int(fields.get("updated_ms")),
            budget=SpendBudget(
                micro=budget_micro(fields.get("budget_usd")),
                period=PERIODS.get(fields.get("budget_period") or "", BudgetPeriod.TOTAL),
            ),
            cache_ttl_s=_int(fields["cache_ttl_s"]) if fields.get("cache_ttl_s") else None,
        )

    @property
    def rpm(self) -> int:
        return self.limits.rpm

    @property
    def tpm(self) -> int:
        return self.limits.tpm

    @property
    def max_concurrency(self) -> int:
        return self.limits.max_concurrency

    @property
    def limited(self) -> bool:
        rpm, tpm, max_concurrency = self.limits  # asked on every request: no property calls
        return rpm > 0 or tpm > 0 or max_concurrency > 0 or self.budget.micro is not None

    @property
    def budgeted(self) -> bool:
        return self.budget.micro is not None


def refusal(record: Record | None, now_ms: int) -> str | None:
    """Why a token may not call (``unknown``, ``revoked``, ``expired``), or None."""
    if record is None:
        return "unknown"
    if record.revoked:
        return "revoked"
    if 0 < record.expires_ms <= now_ms:
        return "expired"
    return None


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a request may use, before it runs: its prompt estimate and completion cap."""

    prompt_tokens: int
    completion_cap: int | None  # max_tokens (max_completion_tokens, max_output_tokens)
    chat: bool = True

    @property
    def tokens(self) -> int:
        """Tokens ``tpm`` reserves."""
        if not self.chat:
            return self.prompt_tokens
        cap = self.completion_cap
        return self.prompt_tokens + (cap if cap is not None else DEFAULT_COMPLETION_ESTIMATE)

    @property
    def completion(self) -> int | None:
        """Completion tokens a budget reserves (None: the model's limit, see prices.py)."""
        return self.completion_cap if self.chat else 0


def estimate(body: dict[str, Any], body_size: int, chat: bool = True) -> Estimate:
    """A request's estimate (``chat``: anything that generates; else embeddings)."""
    # The Responses API names its cap max_output_tokens.
    cap = (
        body.get("max_completion_tokens", body.get("max_tokens", body.get("max_output_tokens")))
        if chat
        else None
    )
    valid = isinstance(cap, int) and not isinstance(cap, bool) and cap >= 0
    return Estimate(body_size // BYTES_PER_TOKEN + 1, cap if valid else None, chat)


def budget_headers(remaining_micro: int | None) -> Headers:
    """``x-best-budget-remaining-usd`` (the tighter of token and team), when known."""
    if remaining_micro is None:
        return []
    return [(b"x-best-budget-remaining-usd", f"{remaining_micro / MICRO:.6f}".encode())]


def _duration(ms: int) -> bytes:
    """``ms`` as OpenAI writes a reset: seconds, up to three decimals (``1.5s``, ``60s``)."""
    whole, part = divmod(max(0, ms), 1000)
    if not part:
        return b"%ds" % whole
    return (b"%d.%03d" % (whole, part)).rstrip(b"0") + b"s"


_MINUTE = _duration(60_000)


def rate_limit_headers(
    rpm: int, rpm_left: int | None, tpm: int, tpm_left: int | None, reset_ms: int = 60_000
) -> Headers:
    """``x-ratelimit-*`` headers (OpenAI's names) for the limits that apply (> 0); the
    remaining counts are those the store answered (None: that limit was not checked)."""
    reset = _MINUTE if reset_ms == 60_000 else _duration(reset_ms)
    headers: Headers = []
    if rpm > 0:
        headers += [
            (b"x-ratelimit-limit-requests", b"%d" % rpm),
            (b"x-ratelimit-remaining-requests", b"%d" % max(0, rpm_left or 0)),
            (b"x-ratelimit-reset-requests", reset),
        ]
    if tpm > 0:
        headers += [
            (b"x-ratelimit-limit-tokens", b"%d" % tpm),
            (b"x-ratelimit-remaining-tokens", b"%d" % max(0, tpm_left or 0)),
            (b"x-ratelimit-reset-tokens", reset),
        ]
    return headers


# OpenAI's rate-limit header -> Anthropic's name for the same figure, and whether it is a
# reset (a duration there, an RFC 3339 time here).
_ANTHROPIC_NAMES = {
    b"x-ratelimit-limit-requests": (b"anthropic-ratelimit-requests-limit", False),
    b"x-ratelimit-remaining-requests": (b"anthropic-ratelimit-requests-remaining", False),
    b"x-ratelimit-reset-requests": (b"anthropic-ratelimit-requests-reset", True),
    b"x-ratelimit-limit-tokens": (b"anthropic-ratelimit-tokens-limit", False),
    b"x-ratelimit-remaining-tokens": (b"anthropic-ratelimit-tokens-remaining", False),
    b"x-ratelimit-reset-tokens": (b"anthropic-ratelimit-tokens-reset", True),
}


def anthropic_rate_headers(headers: Headers, now: float) -> Headers:
    """The ``x-ratelimit-*`` among ``headers`` under Anthropic's names (``anthropic-ratelimit-
    requests-limit`` ...); a reset is an RFC 3339 time there, not a duration."""
    second = int(now)
    renamed: Headers = []
    for name, value in headers:
        named = _ANTHROPIC_NAMES.get(name)
        if named is not None:
            anthropic, reset = named
            renamed.append((anthropic, _reset_at(value, second) if reset else value))
    return renamed


@functools.lru_cache(maxsize=256)
def _reset_at(duration: bytes, second: int) -> bytes:
    """The time a reset ``duration`` (as ``_duration`` wrote it) after Unix ``second`` ends,
    rounded up to the second; the few resets of each second are formatted once."""
    return _rfc3339(second + math.ceil(float(duration.rstrip(b"s") or 0)))


def _rfc3339(second: int) -> bytes:
    """A Unix second as RFC 3339 in UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second)).encode()
