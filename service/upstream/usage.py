"""What an upstream reported a request used: tokens, and the cost when the provider says it
(OpenRouter and others send ``usage.cost`` in USD)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    provider: str  # "" when no upstream served the request
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None = None  # reported by the provider; wins over any price
    also: tuple[Usage, ...] = ()  # other upstreams that answered too (hedges that lost)

    @property
    def tokens(self) -> int:
        """Every token the request used, hedges that lost included."""
        return self.prompt_tokens + self.completion_tokens + sum(u.tokens for u in self.also)


# A request no upstream served (every attempt failed, or the provider refused it as the
# client's fault): nothing to charge.
NOTHING_USED = Usage("", "", 0, 0, 0.0)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def read_usage(provider: str, model: str, usage: Any) -> Usage | None:
    """The ``usage`` object of an answer; None when the upstream did not send one."""
    if not isinstance(usage, dict) or not usage:
        return None
    cost = usage.get("cost")
    reported = (
        float(cost)
        if isinstance(cost, int | float) and not isinstance(cost, bool) and cost >= 0
        else None
    )
    if reported is not None and not math.isfinite(reported):
        reported = None
    # Chat and completions say prompt/completion tokens; the Responses API input/output.
    return Usage(
        provider,
        model,
        _count(usage.get("prompt_tokens", usage.get("input_tokens"))),
        _count(usage.get("completion_tokens", usage.get("output_tokens"))),
        reported,
    )
