"""ModelTable.resolve: how a requested model id becomes an ordered list of candidates."""

from __future__ import annotations

from collections.abc import Mapping

from service.routing.scoring import Score
from service.routing.table import AUTO, Candidate, ModelTable


def pair(provider: str, model: str, total: float) -> Candidate:
    return Candidate.build(
        provider,
        model,
        Score(0.0, 0.0, 0, 0.0, total),
        f"https://{provider}.example/v1",
        f"key-{provider}",
        60.0,
    )


def table(*pairs: Candidate, health: Mapping[tuple[str, str], float] | None = None) -> ModelTable:
    """``health``: error rates, weighted 0.5 into live factors (see routing/live.py)."""
    factors = {pair: 1.0 - rate * 0.5 for pair, rate in (health or {}).items()}
    return ModelTable.build(pairs, factors)


def names(candidates: list[Candidate]) -> list[str]:
    return [f"{c.provider}/{c.model}" for c in candidates]


PAIRS = (
    pair("groq", "llama-3.3-70b", 50),
    pair("cerebras", "llama-3.3-70b", 60),
    pair("groq", "gemma2-9b-it", 10),
    pair("together", "meta-llama/Llama-3-8b", 5),
    pair("openai", "text-embedding-3-small", -2000),
    pair("disabled", "llama-3.3-70b", 0),
)


def test_priority_auto_is_every_positive_pair_best_first() -> None:
    t = table(*PAIRS)
    expected = [
        "cerebras/llama-3.3-70b",
        "groq/llama-3.3-70b",
        "groq/gemma2-9b-it",
        "together/meta-llama/Llama-3-8b",
    ]
    assert names(t.resolve(AUTO)) == expected
    assert names(t.resolve("")) == expected
    assert t.routable == 4


def test_exact_id_lists_every_provider_serving_it_best_first() -> None:
    t = table(*PAIRS)
    assert names(t.resolve("llama-3.3-70b")) == [
        "cerebras/llama-3.3-70b",
        "groq/llama-3.3-70b",
        "disabled/llama-3.3-70b",
    ]


def test_exact_id_reaches_models_priority_auto_never_picks() -> None:
    t = table(*PAIRS)
    assert names(t.resolve("text-embedding-3-small")) == ["openai/text-embedding-3-small"]
    assert "text-embedding-3-small" in t.model_ids


def test_provider_slash_model_pins_one_provider() -> None:
    t = table(*PAIRS)
    assert names(t.resolve("groq/llama-3.3-70b")) == ["groq/llama-3.3-70b"]
    assert names(t.resolve("together/meta-llama/Llama-3-8b")) == ["together/meta-llama/Llama-3-8b"]


def test_model_id_with_a_slash_whose_prefix_is_not_a_provider() -> None:
    t = table(*PAIRS)
    assert names(t.resolve("meta-llama/Llama-3-8b")) == ["together/meta-llama/Llama-3-8b"]


def test_pin_to_a_provider_that_does_not_serve_the_model_is_empty() -> None:
    t = table(*PAIRS)
    assert t.resolve("groq/text-embedding-3-small") == []


def test_comma_list_keeps_order_without_duplicates() -> None:
    t = table(*PAIRS)
    assert names(t.resolve("gemma2-9b-it, groq/llama-3.3-70b ,llama-3.3-70b,,unknown")) == [
        "groq/gemma2-9b-it",
        "groq/llama-3.3-70b",
        "cerebras/llama-3.3-70b",
        "disabled/llama-3.3-70b",
    ]


def test_comma_list_may_end_with_priority_auto_as_a_fallback() -> None:
    t = table(*PAIRS)
    assert names(t.resolve("groq/gemma2-9b-it,priority-auto")) == [
        "groq/gemma2-9b-it",
        "cerebras/llama-3.3-70b",
        "groq/llama-3.3-70b",
        "together/meta-llama/Llama-3-8b",
    ]


def test_unknown_model_resolves_to_nothing() -> None:
    t = table(*PAIRS)
    assert t.resolve("gpt-5-ultra") == []
    assert t.resolve("nobody/llama-3.3-70b") == []
    assert t.resolve(",") == []
    assert table().resolve(AUTO) == []


def test_resolution_is_cached_and_stable() -> None:
    t = table(*PAIRS)
    first = names(t.resolve("llama-3.3-70b"))
    assert names(t.resolve("llama-3.3-70b")) == first


def test_health_penalty_reorders_pairs() -> None:
    healthy = table(*PAIRS)
    assert names(healthy.resolve("llama-3.3-70b"))[:2] == [
        "cerebras/llama-3.3-70b",
        "groq/llama-3.3-70b",
    ]
    # cerebras fails half of its attempts: 60 * (1 - 0.5 * 0.5) = 45 < 50.
    sick = table(*PAIRS, health={("cerebras", "llama-3.3-70b"): 0.5})
    assert names(sick.resolve("llama-3.3-70b"))[:2] == [
        "groq/llama-3.3-70b",
        "cerebras/llama-3.3-70b",
    ]
    assert names(sick.resolve(AUTO))[:2] == ["groq/llama-3.3-70b", "cerebras/llama-3.3-70b"]


def test_health_penalty_never_makes_a_negative_score_positive() -> None:
    t = table(*PAIRS, health={("openai", "text-embedding-3-small"): 1.0})
    assert "openai/text-embedding-3-small" not in names(t.resolve(AUTO))


def test_candidate_carries_the_provider_key_not_the_client_token() -> None:
    c = pair("groq", "llama-3.3-70b", 1)
    assert c.chat_url == "https://groq.example/v1/chat/completions"
    assert c.embeddings_url == "https://groq.example/v1/embeddings"
    assert c.headers["Authorization"] == "Bearer key-groq"


def test_each_api_resolves_among_the_providers_that_serve_it() -> None:
    def serving(provider: str, total: float, apis: tuple[str, ...]) -> Candidate:
        return Candidate.build(
            provider,
            "m",
            Score(0.0, 0.0, 0, 0.0, total),
            f"https://{provider}.example/v1",
            "k",
            60.0,
            frozenset(apis),
        )

    built = table(
        serving("chatty", 90, ("chat", "embeddings")),
        serving("both", 50, ("chat", "responses")),
        serving("legacy", 40, ("completions",)),
    )
    assert names(built.for_api("chat").resolve("m")) == ["chatty/m", "both/m"]
    assert names(built.for_api("responses").resolve(AUTO)) == ["both/m"]
    assert names(built.for_api("completions").resolve("m")) == ["legacy/m"]
    assert built.for_api("responses").resolve("chatty/m") == []
    assert built.for_api("responses").resolve("m")[0].urls["responses"] == (
        "https://both.example/v1/responses"
    )
    # The whole table still knows every pair (for /v1/models and scores).
    assert names(built.resolve("m")) == ["chatty/m", "both/m", "legacy/m"]
