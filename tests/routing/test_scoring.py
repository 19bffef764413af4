"""Scoring of (provider, model) pairs: parameter sizes, adjustments, leaderboard matching and
the weighted formula of the scoring configuration."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.config import AdjustmentGroup, ProviderConfig, Weights, load_config
from service.routing.scoring import (
    ModelInfo,
    adjustment_for,
    leaderboard_key,
    leaderboard_score,
    parse_params_b,
    score_pair,
)


@pytest.mark.parametrize(
    ("model_id", "expected"),
    [
        ("mixtral-8x7b-32768", 56.0),
        ("Mixtral-8x22B-Instruct-v0.1", 176.0),
        ("llama-3.3-70b-versatile", 70.0),
        ("meta-llama/Llama-3.3-70B-Instruct", 70.0),
        ("qwen2.5-1.5b-instruct", 1.5),
        ("qwen2.5-0.5b", 0.5),
        ("smollm-500m", 0.5),
        ("SmolLM2-360M-Instruct", 0.36),
        ("qwen3-235b-a22b", 235.0),
        ("llama-3.1-8b-instant", 8.0),
        ("gemma2-9b-it", 9.0),
        ("llama3-70b-8192", 70.0),
        ("mistral-7b-instruct-v0.2", 7.0),
    ],
)
def test_parse_params_b_reads_sizes(model_id: str, expected: float) -> None:
    assert parse_params_b(model_id) == pytest.approx(expected)


@pytest.mark.parametrize(
    "model_id",
    [
        "gpt-4o",
        "gpt-4o-mini",
        "o3-mini",
        "claude-3-opus",
        "text-embedding-3-small",
        "gpt-4o-2024-05-13",
        "phi-3-mini-128k-instruct",
        "deepseek-v3",
        "",
    ],
)
def test_parse_params_b_is_zero_without_a_size(model_id: str) -> None:
    assert parse_params_b(model_id) == 0.0


def _group(name: str, priority: float, *patterns: str) -> AdjustmentGroup:
    return AdjustmentGroup(name, priority, tuple(re.compile(p, re.IGNORECASE) for p in patterns))


def test_adjustment_adds_each_group_once_even_when_several_patterns_match() -> None:
    groups = [
        _group("strong", 10, "llama", "70b", "versatile"),
        _group("frontier", 20, "gpt-oss"),
        _group("penalty", -3, "versatile"),
    ]
    assert adjustment_for("llama-3.3-70b-versatile", groups) == 7.0
    assert adjustment_for("gpt-oss-120b", groups) == 20.0
    assert adjustment_for("gemma2-9b-it", groups) == 0.0


def test_adjustment_patterns_from_config_are_case_insensitive_searches(tmp_path: Path) -> None:
    (tmp_path / "meta-providers.yaml").write_text("providers: []\n")
    (tmp_path / "model-adjustments.yaml").write_text(
        "adjustments:\n  not_chat:\n    priority: -1000\n    regex: [embed, '^whisper']\n"
    )
    groups = load_config(tmp_path).adjustments
    assert adjustment_for("Text-EMBEDDING-3-small", groups) == -1000.0
    assert adjustment_for("WHISPER-large-v3", groups) == -1000.0
    # "^whisper" is anchored: a search, not a match anywhere after the start.
    assert adjustment_for("distil-whisper", groups) == 0.0


def test_leaderboard_key_strips_organisation_and_case() -> None:
    assert leaderboard_key("meta-llama/Llama-3.3-70B-Instruct") == "llama-3.3-70b-instruct"
    assert leaderboard_key("  GPT-4o ") == "gpt-4o"


def test_leaderboard_matching_is_exact_not_substring() -> None:
    scores = {"gpt-4o": 0.9, "llama-3.3-70b-instruct": 0.6}
    assert leaderboard_score("gpt-4o", scores, {}) == 0.9
    assert leaderboard_score("openai/GPT-4o", scores, {}) == 0.9
    # The substring matching of the original BEST gave these the score of "gpt-4o".
    assert leaderboard_score("gpt-4o-mini", scores, {}) == 0.0
    assert leaderboard_score("gpt-4", scores, {}) == 0.0
    assert leaderboard_score("llama-3.3-70b", scores, {}) == 0.0


def test_leaderboard_aliases_map_provider_ids_to_leaderboard_names() -> None:
    scores = {"llama-3.3-70b-instruct": 0.6}
    aliases = {"llama-3.3-70b-versatile": "meta-llama/llama-3.3-70b-instruct"}
    assert leaderboard_score("llama-3.3-70b-versatile", scores, aliases) == 0.6
    assert leaderboard_score("Llama-3.3-70B-Versatile", scores, aliases) == 0.6
    # An alias is looked up by the id without its organisation prefix too.
    assert leaderboard_score("groq/llama-3.3-70b-versatile", scores, aliases) == 0.6


def _provider(priority: float) -> ProviderConfig:
    return ProviderConfig("p", "P_API_KEY", "https://p.example/v1", priority)


def test_score_formula_uses_the_original_weights() -> None:
    groups = [_group("strong", 10, "70b")]
    scores = {"llama-3.3-70b-versatile": 0.5}
    model = ModelInfo("llama-3.3-70b-versatile", context=128_000)
    score = score_pair(_provider(0.8), model, Weights(), groups, scores, {})
    expected = (0.5 * 100 + 70 * 100 / 405 + 128_000 * 100 / 2_000_000 + 10 * 2) * 0.8
    assert score.total == pytest.approx(expected)
    assert (score.leaderboard, score.params_b, score.context, score.adjustment) == (
        0.5,
        70.0,
        128_000,
        10.0,
    )


def test_score_weights_are_tunable() -> None:
    weights = Weights(leaderboard=0, params_per_b=1, context_per_token=0, adjustment=0)
    score = score_pair(_provider(2), ModelInfo("x-8x7b", 32_000), weights, [], {}, {})
    assert score.total == pytest.approx(112.0)


def test_negative_adjustment_pushes_a_model_below_zero() -> None:
    groups = [_group("not_chat", -1000, "embed")]
    model = ModelInfo("text-embedding-3-large", context=8192)
    assert score_pair(_provider(1), model, Weights(), groups, {}, {}).total < 0


def test_base_priority_zero_zeroes_the_score() -> None:
    score = score_pair(_provider(0), ModelInfo("llama-3.3-70b", 128_000), Weights(), [], {}, {})
    assert score.total == 0.0
