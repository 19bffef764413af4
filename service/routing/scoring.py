"""Scoring of (provider, model) pairs: pure functions, no I/O.

score = (leaderboard * w_lb + params_b * w_params + context * w_ctx + adjustment * w_adj)
        * base_priority
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from service.config import AdjustmentGroup, ProviderConfig, Weights

# "8x7b" (mixture of experts: 8 * 7 = 56), "70b", "1.5b", "500m" (millions, not billions).
# The lookbehind keeps "a22b" in "qwen3-235b-a22b" and "v2" style fragments from matching.
_MOE = re.compile(r"(?<![a-z0-9.])(\d+)x(\d+(?:\.\d+)?)b(?![a-z0-9])")
_SIZE = re.compile(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)([bm])(?![a-z0-9])")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model as a provider lists it."""

    id: str
    context: int = 0


@dataclass(frozen=True, slots=True)
class Score:
    leaderboard: float
    params_b: float
    context: int
    adjustment: float
    total: float


def parse_params_b(model_id: str) -> float:
    """Parameter count in billions read from a model name; 0 when the name does not say."""
    name = model_id.lower()
    sizes = [float(a) * float(b) for a, b in _MOE.findall(name)]
    for number, unit in _SIZE.findall(name):
        sizes.append(float(number) / 1000.0 if unit == "m" else float(number))
    return max(sizes, default=0.0)


def adjustment_for(model_id: str, groups: Iterable[AdjustmentGroup]) -> float:
    """Sum of the priorities of every group with a pattern matching the model id."""
    return sum(group.priority for group in groups if group.matches(model_id))


def leaderboard_key(name: str) -> str:
    """The exact-match key of a model name: lower case, without an organisation prefix."""
    return name.strip().lower().rsplit("/", 1)[-1]


def leaderboard_score(
    model_id: str, scores: Mapping[str, float], aliases: Mapping[str, str]
) -> float:
    key = leaderboard_key(model_id)
    alias = aliases.get(model_id.lower()) or aliases.get(key)
    if alias is not None:
        key = leaderboard_key(alias)
    return scores.get(key, 0.0)


def score_pair(
    provider: ProviderConfig,
    model: ModelInfo,
    weights: Weights,
    groups: Iterable[AdjustmentGroup],
    scores: Mapping[str, float],
    aliases: Mapping[str, str],
) -> Score:
    lb = leaderboard_score(model.id, scores, aliases)
    params = parse_params_b(model.id)
    adjustment = adjustment_for(model.id, groups)
    base = (
        lb * weights.leaderboard
        + params * weights.params_per_b
        + model.context * weights.context_per_token
        + adjustment * weights.adjustment
    )
    return Score(lb, params, model.context, adjustment, base * provider.base_priority)
