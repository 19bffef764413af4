"""Quota rules that need no store: the token cost of a request, and OpenAI's rate-limit
headers from an admission."""

from __future__ import annotations

from typing import Any

from service.store.client import Admission
from service.types import Headers

# Without max_tokens a request reserves this many completion tokens; settlement corrects it.
DEFAULT_COMPLETION_ESTIMATE = 1024
# Rough prompt estimate: OpenAI-family tokenizers average about four bytes per token.
BYTES_PER_TOKEN = 4


def estimate_cost(body: dict[str, Any], body_size: int, chat: bool = True) -> int:
    """Tokens a request reserves: prompt estimate + (for chat) its completion cap."""
    prompt = body_size // BYTES_PER_TOKEN + 1
    if not chat:
        return prompt
    cap = body.get("max_completion_tokens", body.get("max_tokens"))
    completion = (
        cap
        if isinstance(cap, int) and not isinstance(cap, bool) and cap >= 0
        else DEFAULT_COMPLETION_ESTIMATE
    )
    return prompt + completion


def _duration(ms: int) -> bytes:
    seconds = max(0, ms) / 1000.0
    return (f"{seconds:.3f}".rstrip("0").rstrip(".") + "s").encode()


def rate_limit_headers(admission: Admission) -> Headers:
    """``x-ratelimit-*`` headers (OpenAI's names) for the limits the token has."""
    headers: Headers = []
    if admission.rpm_limit >= 0:
        headers += [
            (b"x-ratelimit-limit-requests", str(admission.rpm_limit).encode()),
            (b"x-ratelimit-remaining-requests", str(admission.rpm_remaining).encode()),
            (b"x-ratelimit-reset-requests", _duration(admission.rpm_reset_ms)),
        ]
    if admission.tpm_limit >= 0:
        headers += [
            (b"x-ratelimit-limit-tokens", str(admission.tpm_limit).encode()),
            (b"x-ratelimit-remaining-tokens", str(admission.tpm_remaining).encode()),
            (b"x-ratelimit-reset-tokens", _duration(admission.tpm_reset_ms)),
        ]
    return headers
