"""The routing table: every scored (provider, model) pair, and how a requested model id
resolves to an ordered list of candidates.  Built at config load, never per request."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from service.apis import Api
from service.routing.scoring import Score
from service.store.keys import pair_field, provider_field

AUTO = "priority-auto"
CHAT = Api.CHAT
# Every API a provider may serve (``apis:`` in meta-providers.yaml); each has a table of its own.
APIS = tuple(Api)
# A provider that serves chat also answers the Messages API, translated (routing/messages.py).
TRANSLATED_FROM = {Api.MESSAGES: Api.CHAT}


@dataclass(frozen=True, slots=True, eq=False)
class Candidate:
    """One (provider, model) pair with everything an attempt needs, computed once."""

    provider: str
    model: str
    score: Score
    chat_url: str
    embeddings_url: str
    base_url: str
    apis: frozenset[str]
    urls: Mapping[str, str]  # api -> the endpoint an attempt posts to
    headers: Mapping[str, str]
    timeout_s: float
    provider_field: str
    pair_field: str
    served_headers: tuple[tuple[bytes, bytes], ...]  # x-best-provider, x-best-model
    # Anthropic's auth for a provider serving the Messages API natively (empty otherwise).
    messages_headers: Mapping[str, str] = field(default_factory=dict)
    first_token_timeout_s: float | None = None  # no first byte by then: fail over
    live: float = 1.0  # the live factor the table was ordered with (1: no adjustment)
    effective: float = 0.0  # the score the table was ordered by (static x live)

    @classmethod
    def build(
        cls,
        provider: str,
        model: str,
        score: Score,
        base_url: str,
        api_key: str,
        timeout_s: float,
        apis: frozenset[str] = frozenset((Api.CHAT, Api.EMBEDDINGS)),
        first_token_timeout_s: float | None = None,
    ) -> Candidate:
        urls: dict[str, str] = {
            Api.CHAT: f"{base_url}/chat/completions",
            Api.EMBEDDINGS: f"{base_url}/embeddings",
            Api.RESPONSES: f"{base_url}/responses",
            Api.COMPLETIONS: f"{base_url}/completions",
            Api.MESSAGES: f"{base_url}/messages",
        }
        return cls(
            provider=provider,
            model=model,
            score=score,
            chat_url=urls[Api.CHAT],
            embeddings_url=urls[Api.EMBEDDINGS],
            base_url=base_url,
            apis=apis,
            urls=urls,
            headers=(
                {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
                if api_key  # "": a provider that needs no key (a local server)
                else {"Content-Type": "application/json"}
            ),
            timeout_s=timeout_s,
            provider_field=provider_field(provider),
            pair_field=pair_field(provider, model),
            served_headers=(
                (b"x-best-provider", provider.encode()),
                (b"x-best-model", model.encode()),
            ),
            messages_headers=(
                {"x-api-key": api_key, "content-type": "application/json"}
                if Api.MESSAGES in apis
                else {}
            ),
            first_token_timeout_s=first_token_timeout_s,
            effective=score.total,
        )


@dataclass(frozen=True)
class ModelTable:
    """Immutable snapshot; a reload builds a new one and swaps it in."""

    pairs: tuple[Candidate, ...] = ()
    live: Mapping[tuple[str, str], float] = field(default_factory=dict)
    _by_model: dict[str, list[Candidate]] = field(default_factory=dict, repr=False)
    _by_provider: dict[str, dict[str, Candidate]] = field(default_factory=dict, repr=False)
    _auto: list[Candidate] = field(default_factory=list, repr=False)
    _resolved: dict[str, list[Candidate]] = field(default_factory=dict, repr=False)
    _effective: dict[int, float] = field(default_factory=dict, repr=False)
    _by_api: dict[str, ModelTable] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, pairs: Iterable[Candidate], live: Mapping[tuple[str, str], float]) -> ModelTable:
        """``live``: the live factor of each pair (absent: 1, no adjustment)."""

        def adjusted(c: Candidate) -> Candidate:
            factor = live.get((c.provider, c.model), 1.0)
            if factor == 1.0:
                return c if c.live == 1.0 else replace(c, live=1.0, effective=c.score.total)
            total = c.score.total
            # A penalty shrinks a positive score and deepens a negative one.
            effective = total * factor if total > 0 else total / max(factor, 0.01)
            return replace(c, live=factor, effective=effective)

        ordered = sorted(
            (adjusted(c) for c in pairs), key=lambda c: (-c.effective, c.provider, c.model)
        )
        scores = {id(c): c.effective for c in ordered}
        table = cls._from_ordered(ordered, live, scores)
        # One sub-table per API, holding the pairs whose provider serves it.
        for api in APIS:
            also = TRANSLATED_FROM.get(api)
            serving = [c for c in ordered if api in c.apis or also in c.apis]
            whole = len(serving) == len(ordered)
            table._by_api[api] = table if whole else cls._from_ordered(serving, live, scores)
        return table

    @classmethod
    def _from_ordered(
        cls,
        ordered: list[Candidate],
        live: Mapping[tuple[str, str], float],
        scores: dict[int, float],
    ) -> ModelTable:
        by_model: dict[str, list[Candidate]] = {}
        by_provider: dict[str, dict[str, Candidate]] = {}
        for c in ordered:
            by_model.setdefault(c.model, []).append(c)
            by_provider.setdefault(c.provider, {})[c.model] = c
        auto = [c for c in ordered if c.score.total > 0]
        return cls(tuple(ordered), dict(live), by_model, by_provider, auto, {}, scores)

    @property
    def routable(self) -> int:
        return len(self._auto)

    @property
    def model_ids(self) -> list[str]:
        return sorted(self._by_model)

    def for_api(self, api: str) -> ModelTable:
        """The pairs whose provider serves ``api`` (the whole table for an unknown name)."""
        return self._by_api.get(api, self)

    def effective_score(self, candidate: Candidate) -> float:
        """The score ordering uses: static, adjusted by the pair's live health."""
        return self._effective.get(id(candidate), candidate.score.total)

    def pair(self, provider: str, model: str) -> Candidate | None:
        return self._by_provider.get(provider, {}).get(model)

    def exact(self, model_id: str) -> list[Candidate]:
        """Every pair serving exactly ``model_id`` (no virtual model, pin or list), best first."""
        return self._by_model.get(model_id, [])

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
