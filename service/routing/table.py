"""The routing table: every scored (provider, model) pair, and how a requested model id
resolves to an ordered list of candidates.  Built at config load, never per request."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from service.routing.scoring import Score
from service.store.keys import pair_field, provider_field

AUTO = "priority-auto"


@dataclass(frozen=True, slots=True, eq=False)
class Candidate:
    """One (provider, model) pair with everything an attempt needs, computed once."""

    provider: str
    model: str
    score: Score
    chat_url: str
    embeddings_url: str
    headers: Mapping[str, str]
    timeout_s: float
    provider_field: str
    pair_field: str
    served_headers: tuple[tuple[bytes, bytes], ...]  # x-best-provider, x-best-model

    @classmethod
    def build(
        cls,
        provider: str,
        model: str,
        score: Score,
        base_url: str,
        api_key: str,
        timeout_s: float,
    ) -> Candidate:
        return cls(
            provider=provider,
            model=model,
            score=score,
            chat_url=f"{base_url}/chat/completions",
            embeddings_url=f"{base_url}/embeddings",
            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
            timeout_s=timeout_s,
            provider_field=provider_field(provider),
            pair_field=pair_field(provider, model),
            served_headers=(
                (b"x-best-provider", provider.encode()),
                (b"x-best-model", model.encode()),
            ),
        )


@dataclass(frozen=True)
class ModelTable:
    """Immutable snapshot; a reload builds a new one and swaps it in."""

    pairs: tuple[Candidate, ...] = ()
    health: Mapping[tuple[str, str], float] = field(default_factory=dict)
    _by_model: dict[str, list[Candidate]] = field(default_factory=dict, repr=False)
    _by_provider: dict[str, dict[str, Candidate]] = field(default_factory=dict, repr=False)
    _auto: list[Candidate] = field(default_factory=list, repr=False)
    _resolved: dict[str, list[Candidate]] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls, pairs: Iterable[Candidate], health: Mapping[tuple[str, str], float], penalty: float
    ) -> ModelTable:
        def effective(c: Candidate) -> float:
            error_rate = health.get((c.provider, c.model), 0.0)
            factor = 1.0 - error_rate * penalty
            # A penalty shrinks a positive score and deepens a negative one.
            return (
                c.score.total * factor if c.score.total > 0 else c.score.total / max(factor, 0.01)
            )

        ordered = sorted(pairs, key=lambda c: (-effective(c), c.provider, c.model))
        by_model: dict[str, list[Candidate]] = {}
        by_provider: dict[str, dict[str, Candidate]] = {}
        for c in ordered:
            by_model.setdefault(c.model, []).append(c)
            by_provider.setdefault(c.provider, {})[c.model] = c
        auto = [c for c in ordered if c.score.total > 0]
        return cls(tuple(ordered), dict(health), by_model, by_provider, auto)

    @property
    def routable(self) -> int:
        return len(self._auto)

    @property
    def model_ids(self) -> list[str]:
        return sorted(self._by_model)

    def resolve(self, requested: str) -> list[Candidate]:
        """Candidates for a requested model, best first; empty when nothing serves it."""
        cached = self._resolved.get(requested)
        if cached is not None:
            return cached
        result = self._resolve(requested)
        if len(self._resolved) < 4096:  # bounded: clients choose these strings
            self._resolved[requested] = result
        return result

    def _resolve(self, requested: str) -> list[Candidate]:
        if not requested or requested == AUTO:
            return self._auto
        if "," in requested:
            seen: set[int] = set()
            merged: list[Candidate] = []
            for part in requested.split(","):
                for c in self._resolve(part.strip()) if part.strip() else []:
                    if id(c) not in seen:
                        seen.add(id(c))
                        merged.append(c)
            return merged
        prefix, sep, rest = requested.partition("/")
        if sep and prefix in self._by_provider:
            pinned = self._by_provider[prefix].get(rest)
            if pinned is not None:
                return [pinned]
        return self._by_model.get(requested, [])
