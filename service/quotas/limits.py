"""Quota rules that need no store: who may call (the one validity rule of a token), what a
request reserves, and OpenAI's rate-limit headers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from service.types import Headers

# Without max_tokens a request reserves this many completion tokens; settlement corrects it.
DEFAULT_COMPLETION_ESTIMATE = 1024
# Rough prompt estimate: OpenAI-family tokenizers average about four bytes per token.
BYTES_PER_TOKEN = 4
LIMITS = ("rpm", "tpm", "max_concurrency")
# Budget periods as the quota script knows them (UTC calendar; "total" never resets).
PERIODS = {"total": 0, "day": 1, "week": 2, "month": 3}
MICRO = 1_000_000  # budgets are counted in micro-USD integers


def _int(value: str | None) -> int:
    try:
        return max(0, int(value or 0))
    except ValueError:
        return 0


def budget_micro(value: str | None) -> int:
    """A stored ``budget_usd`` in micro-USD; -1 when there is no budget."""
    if not value:
        return -1
    try:
        return max(0, round(float(value) * MICRO))
    except ValueError:
        return -1


@dataclass(frozen=True, slots=True)
class Record:
    """A token's or a team's stored record, parsed once when it enters the local cache."""

    fields: dict[str, str] = field(repr=False)
    id: str = ""
    team: str | None = None
    rpm: int = 0
    tpm: int = 0
    max_concurrency: int = 0
    expires_ms: int = 0
    revoked: bool = False
    updated_ms: int = 0
    budget_micro: int = -1  # -1: no budget
    budget_period: int = 0  # a PERIODS value
    cache_ttl_s: int = -1  # response cache: -1 not set (the team's, or the default), 0 off

    @classmethod
    def parse(cls, fields: dict[str, str]) -> Record:
        return cls(
            fields=fields,
            id=fields.get("id", ""),
            team=fields.get("team") or None,
            rpm=_int(fields.get("rpm")),
            tpm=_int(fields.get("tpm")),
            max_concurrency=_int(fields.get("max_concurrency")),
            expires_ms=_int(fields.get("expires_ms")),
            # A deleted team keeps its record (so no replica's re-seed brings it back).
            revoked=fields.get("revoked") == "1" or fields.get("deleted") == "1",
            updated_ms=_int(fields.get("updated_ms")),
            budget_micro=budget_micro(fields.get("budget_usd")),
            budget_period=PERIODS.get(fields.get("budget_period") or "", 0),
            cache_ttl_s=_int(fields["cache_ttl_s"]) if fields.get("cache_ttl_s") else -1,
        )

    @property
    def limited(self) -> bool:
        return self.rpm > 0 or self.tpm > 0 or self.max_concurrency > 0 or self.budgeted

    @property
    def budgeted(self) -> bool:
        return self.budget_micro >= 0

    def limits(self) -> tuple[int, int, int]:
        return self.rpm, self.tpm, self.max_concurrency


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


def budget_headers(remaining_micro: int) -> Headers:
    """``x-best-budget-remaining-usd`` (the tighter of token and team), when known."""
    if remaining_micro < 0:
        return []
    return [(b"x-best-budget-remaining-usd", f"{remaining_micro / MICRO:.6f}".encode())]


def _duration(ms: int) -> bytes:
    seconds = max(0, ms) / 1000.0
    return (f"{seconds:.3f}".rstrip("0").rstrip(".") + "s").encode()


def rate_limit_headers(
    rpm: int, rpm_left: int, tpm: int, tpm_left: int, reset_ms: int = 60_000
) -> Headers:
    """``x-ratelimit-*`` headers (OpenAI's names) for the limits that apply (> 0)."""
    headers: Headers = []
    if rpm > 0:
        headers += [
            (b"x-ratelimit-limit-requests", str(rpm).encode()),
            (b"x-ratelimit-remaining-requests", str(max(0, rpm_left)).encode()),
            (b"x-ratelimit-reset-requests", _duration(reset_ms)),
        ]
    if tpm > 0:
        headers += [
            (b"x-ratelimit-limit-tokens", str(tpm).encode()),
            (b"x-ratelimit-remaining-tokens", str(max(0, tpm_left)).encode()),
            (b"x-ratelimit-reset-tokens", _duration(reset_ms)),
        ]
    return headers


# OpenAI's rate-limit header -> Anthropic's name for the same figure.
_ANTHROPIC_NAMES = {
    b"x-ratelimit-limit-requests": b"anthropic-ratelimit-requests-limit",
    b"x-ratelimit-remaining-requests": b"anthropic-ratelimit-requests-remaining",
    b"x-ratelimit-reset-requests": b"anthropic-ratelimit-requests-reset",
    b"x-ratelimit-limit-tokens": b"anthropic-ratelimit-tokens-limit",
    b"x-ratelimit-remaining-tokens": b"anthropic-ratelimit-tokens-remaining",
    b"x-ratelimit-reset-tokens": b"anthropic-ratelimit-tokens-reset",
}


def anthropic_rate_headers(headers: Headers, now: float) -> Headers:
    """The ``x-ratelimit-*`` among ``headers`` under Anthropic's names (``anthropic-ratelimit-
    requests-limit`` ...); a reset is an RFC 3339 time there, not a duration."""
    renamed: Headers = []
    for name, value in headers:
        anthropic = _ANTHROPIC_NAMES.get(name)
        if anthropic is None:
            continue
        if anthropic.endswith(b"-reset"):
            seconds = float(value.rstrip(b"s") or 0)  # as _duration wrote it
            value = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + seconds)).encode()
        renamed.append((anthropic, value))
    return renamed
