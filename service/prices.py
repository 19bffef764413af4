"""Prices of (provider, model) pairs, from ``config/prices.yaml``: what a request costs.

Prices are USD per million tokens.  A provider's entry for a model wins over the model's
entry, which wins over ``default``; a cost the provider reports in ``usage`` (``usage.cost``)
wins over all of them.  Costs are exact integers in pico-USD (10^-12): a price with up to six
decimals times a token count is exact, so the ledger adds up to the cent.  Budgets count in
micro-USD (``to_micro`` rounds up: a budget never under-counts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

PICO_PER_USD = 10**12
PICO_PER_MICRO = 10**6
DEFAULT_MAX_OUTPUT_TOKENS = 4096


class Pair(Protocol):
    @property
    def provider(self) -> str: ...

    @property
    def model(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Price:
    input: int  # pico-USD per token (= USD per million tokens x 10^6)
    output: int
    max_output_tokens: int | None = None  # the model's completion cap, when known

    @classmethod
    def per_million(cls, input_usd: float, output_usd: float, max_output: int | None) -> Price:
        return cls(round(input_usd * 10**6), round(output_usd * 10**6), max_output)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> int:
        """Pico-USD of a request."""
        return prompt_tokens * self.input + completion_tokens * self.output


@dataclass(frozen=True)
class Prices:
    models: Mapping[str, Price] = field(default_factory=dict)  # lower-cased model id
    providers: Mapping[str, Mapping[str, Price]] = field(default_factory=dict)
    default: Price | None = None
    default_max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS

    def of(self, provider: str, model: str) -> Price | None:
        """The price of a pair, or None when nothing prices it."""
        key = model.lower()
        per_provider = self.providers.get(provider)
        if per_provider is not None:
            found = per_provider.get(key)
            if found is not None:
                return found
        return self.models.get(key, self.default)

    def worst_case(
        self, pairs: Sequence[Pair], prompt_tokens: int, completion_cap: int | None
    ) -> int:
        """The most a request can cost on any of ``pairs`` (pico-USD): its prompt estimate
        at the input price plus its completion cap (without one: the model's known output
        limit, else ``default_max_output_tokens``) at the output price.  0 when none is
        priced."""
        worst = 0
        for pair in pairs:
            price = self.of(pair.provider, pair.model)
            if price is None:
                continue
            cap = completion_cap
            if cap is None:
                cap = price.max_output_tokens or self.default_max_output_tokens
            worst = max(worst, price.cost(prompt_tokens, cap))
        return worst


def to_micro(pico: int) -> int:
    """Pico-USD to micro-USD, rounded up."""
    return -(-pico // PICO_PER_MICRO)


def usd_to_pico(usd: float) -> int:
    return round(usd * PICO_PER_USD)
