"""The YAML configuration in ``CONFIG_DIR``: providers, model adjustments, scoring.

Loading validates every file against its schema (``service.config_schema``) and raises
``ConfigError`` listing every problem, each naming file, line and key; unknown keys are
problems too.  Recoverable problems (a bad regex, a provider without its key) are collected as
warnings instead: they are logged, never fatal.  What loading returns is plain frozen
dataclasses: nothing of pydantic is left on the request path.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from service.aliases import Aliases
from service.config_schema import (
    DEFAULT_APIS,
    AdjustmentsFile,
    AliasesFile,
    LeaderboardEntry,
    PriceEntry,
    PricesFile,
    ProvidersFile,
    ScoringFile,
    YamlDocument,
    YamlSyntaxError,
    read_yaml,
)
from service.prices import Price, Prices
from service.validation import problems

PROVIDERS_FILE = "meta-providers.yaml"
ADJUSTMENTS_FILE = "model-adjustments.yaml"
SCORING_FILE = "scoring.yaml"
PRICES_FILE = "prices.yaml"
ALIASES_FILE = "aliases.yaml"

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """The configuration cannot be used; the message is one line listing every problem, each
    as ``FILE:LINE: key: what``, separated by ``; ``."""


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    api_key_env_var: str | None  # None: no key (a local server), used while it answers
    base_url: str
    base_priority: float
    model_url: str | None = None
    models: tuple[str, ...] | None = None
    timeout_s: float | None = None
    apis: frozenset[str] = frozenset(DEFAULT_APIS)
    first_token_timeout_s: float | None = None

    @property
    def keyless(self) -> bool:
        return self.api_key_env_var is None

    @property
    def models_url(self) -> str:
        return f"{(self.model_url or self.base_url).rstrip('/')}/models"

    @property
    def chat_url(self) -> str:
        return f"{self.base_url.rstrip('/')}/chat/completions"

    @property
    def embeddings_url(self) -> str:
        return f"{self.base_url.rstrip('/')}/embeddings"


@dataclass(frozen=True)
class AdjustmentGroup:
    name: str
    priority: float
    patterns: tuple[re.Pattern[str], ...]

    def matches(self, model: str) -> bool:
        return any(p.search(model) for p in self.patterns)


@dataclass(frozen=True)
class Weights:
    """Score = (leaderboard*w + params_b*w + context*w + adjustment*w) * base_priority."""

    leaderboard: float = 100.0
    params_per_b: float = 100.0 / 405.0
    context_per_token: float = 100.0 / 2_000_000.0
    adjustment: float = 2.0
    # Older name of ``live.error_weight`` (used when ``live.error_weight`` is not set).
    health_penalty: float = 0.5


@dataclass(frozen=True)
class Breaker:
    """``breaker:`` of scoring.yaml: when a (provider, model) pair's breaker opens."""

    failure_threshold: int = 3  # consecutive failures, fleet-wide
    error_rate: float = 0.5  # or this share of failed attempts ...
    min_attempts: int = 10  # ... over at least this many attempts ...
    window_s: float = 30.0  # ... in the last window_s seconds
    open_s: float = 10.0  # first open period; doubles per reopening ...
    max_open_s: float = 300.0  # ... up to this


@dataclass(frozen=True)
class Live:
    """``live:`` of scoring.yaml: how recent fleet-wide health adjusts a pair's score.

    live factor = error part * latency part, never below ``min_factor``:
    - error part = 1 - error_weight * (failed / attempts) over the window;
    - latency part = 1 / (1 + latency_weight * excess), where excess is how far the pair's
      median time to first byte, divided by the reference, is above
      ``1 + latency_tolerance`` (0 inside that band); the reference is the fastest median
      among the providers of the same model, or ``latency_floor_ms`` if that is larger
      (below it differences are noise).
    A pair with fewer than ``min_attempts`` in the window keeps its last factor (and drops
    it after a window with no data at all)."""

    window_s: float = 60.0
    min_attempts: int = 5
    error_weight: float = 0.5
    latency_weight: float = 1.0
    latency_tolerance: float = 0.5
    latency_floor_ms: float = 100.0
    min_factor: float = 0.05
    explore: float = 0.05  # share of requests that try a penalised or tied pair first


@dataclass(frozen=True)
class HedgeGroup:
    """``hedging:`` entry: requested model ids matching a pattern are hedged."""

    patterns: tuple[re.Pattern[str], ...]
    after_ms: float | None  # None: the first candidate's recent p95 time to first byte

    def matches(self, model: str) -> bool:
        return any(p.search(model) for p in self.patterns)


@dataclass(frozen=True)
class LeaderboardSource:
    name: str
    location: str  # http(s) URL or a file path (relative to CONFIG_DIR)
    format: str  # "bigcodebench" | "scores"
    timeout_s: float = 10.0
    refresh_s: float = 3600.0


@dataclass(frozen=True)
class GatewayConfig:
    providers: tuple[ProviderConfig, ...]
    adjustments: tuple[AdjustmentGroup, ...]
    weights: Weights = Weights()
    breaker: Breaker = Breaker()
    live: Live = Live()
    hedging: tuple[HedgeGroup, ...] = ()
    leaderboards: tuple[LeaderboardSource, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)
    discovery_refresh_s: float = 600.0
    discovery_timeout_s: float = 10.0
    fingerprint: str = ""
    warnings: tuple[str, ...] = ()
    prices: Prices = field(default_factory=Prices)
    model_aliases: Aliases = field(default_factory=Aliases)  # aliases.yaml


def default_provider_name(api_key_env_var: str) -> str:
    name = api_key_env_var.lower()
    return name[: -len("_api_key")] if name.endswith("_api_key") else name


class _Errors:
    """Every problem of every file, each as ``FILE:LINE: where: what``."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, path: Path, line: int, where: str, text: str) -> None:
        place = f"{path}:{line}" if line else str(path)
        self.lines.append(f"{place}: {where}: {text}" if where else f"{place}: {text}")

    def raise_if_any(self) -> None:
        if self.lines:
            # One line (the CLI prints it as is), every problem in it.
            raise ConfigError("; ".join(self.lines))


def _validate(
    schema: type[M], path: Path, errors: _Errors, *, optional: bool
) -> tuple[M, YamlDocument] | None:
    """The file at ``path`` validated by ``schema``; None (with errors added) if it is not
    valid, or when an optional file is absent."""
    if optional and not path.is_file():
        return None
    try:
        document = read_yaml(path)
    except FileNotFoundError:
        errors.add(path, 0, "", "file not found (set CONFIG_DIR)")
        return None
    except OSError as exc:
        errors.add(path, 0, "", f"cannot be read: {exc.strerror}")
        return None
    except YamlSyntaxError as exc:
        errors.add(path, exc.line, "", f"invalid YAML: {exc.problem}")
        return None
    data = {} if document.data is None and optional else document.data
    try:
        return schema.model_validate(data), document
    except ValidationError as exc:
        found = [(document.line_of(p.loc), p) for p in problems(exc)]
        for line, problem in sorted(found, key=lambda item: item[0]):
            errors.add(path, line, problem.where, problem.text)
        return None


def _providers(
    validated: tuple[ProvidersFile, YamlDocument], path: Path, errors: _Errors
) -> tuple[ProviderConfig, ...]:
    parsed, document = validated
    providers = tuple(
        ProviderConfig(
            # The schema makes sure one of the two is there.
            name=entry.name or default_provider_name(entry.api_key_env_var or ""),
            api_key_env_var=entry.api_key_env_var,
            base_url=entry.base_url,
            base_priority=entry.base_priority,
            model_url=entry.model_url,
            models=tuple(entry.models) if entry.models is not None else None,
            timeout_s=entry.timeout_s,
            apis=frozenset(entry.apis),
            first_token_timeout_s=entry.first_token_timeout_s,
        )
        for entry in parsed.providers
    )
    seen: set[str] = set()
    for i, provider in enumerate(providers):
        if provider.name in seen:
            loc = ("providers", i)
            errors.add(
                path,
                document.line_of(loc),
                f"providers[{i}]",
                f"duplicate provider name {provider.name!r} (set a distinct name:)",
            )
        seen.add(provider.name)
    return providers


def _adjustments(
    validated: tuple[AdjustmentsFile, YamlDocument], path: Path, warnings: list[str]
) -> tuple[AdjustmentGroup, ...]:
    parsed, document = validated
    groups: list[AdjustmentGroup] = []
    for name, entry in parsed.adjustments.items():
        where = ("adjustments", name, "regex")
        patterns = _patterns(entry.regex, f"adjustments.{name}", where, path, document, warnings)
        groups.append(AdjustmentGroup(name, entry.priority, patterns))
    return tuple(groups)


def _hedging(
    validated: tuple[ScoringFile, YamlDocument] | None, path: Path, warnings: list[str]
) -> tuple[HedgeGroup, ...]:
    if validated is None:
        return ()
    parsed, document = validated
    groups: list[HedgeGroup] = []
    for i, entry in enumerate(parsed.hedging):
        where = ("hedging", i, "models")
        patterns = _patterns(entry.models, f"hedging[{i}]", where, path, document, warnings)
        if patterns:
            groups.append(HedgeGroup(patterns, entry.after_ms))
    return tuple(groups)


def _patterns(
    sources: list[str],
    label: str,
    where: tuple[str | int, ...],
    path: Path,
    document: YamlDocument,
    warnings: list[str],
) -> tuple[re.Pattern[str], ...]:
    """Each regex compiled, case-insensitive; an invalid one is a warning naming its line in
    ``path`` (``where`` is the list's place in the document), and is ignored."""
    patterns: list[re.Pattern[str]] = []
    for i, pattern in enumerate(sources):
        try:
            patterns.append(re.compile(pattern, re.IGNORECASE))
        except re.error as exc:
            line = document.line_of((*where, i))
            warnings.append(
                f"{path}:{line}: {label}: regex {pattern!r} is invalid ({exc}); ignored"
            )
    return tuple(patterns)


def _given(section: BaseModel) -> dict[str, object]:
    """The keys of a section the file set (the dataclass keeps its defaults for the rest)."""
    return {k: v for k, v in section.model_dump().items() if v is not None}


def _leaderboard(entry: LeaderboardEntry, index: int, config_dir: Path) -> LeaderboardSource:
    if entry.url is not None:
        location = entry.url
    else:
        assert entry.file is not None  # the schema requires one of url and file
        file = Path(entry.file)
        location = str(file if file.is_absolute() else config_dir / file)
    return LeaderboardSource(
        name=entry.name or f"source{index}",
        location=location,
        format=entry.format,
        timeout_s=entry.timeout_s,
        refresh_s=entry.refresh_s,
    )


def _price(entry: PriceEntry) -> Price:
    return Price.per_million(entry.input, entry.output, entry.max_output_tokens)


def _prices(
    parsed: PricesFile,
    providers: tuple[ProviderConfig, ...],
    path: Path,
    warnings: list[str],
) -> Prices:
    known = {p.name for p in providers}
    for name in parsed.providers:
        if name not in known:
            warnings.append(f"{path}: providers.{name}: no such provider in {PROVIDERS_FILE}")
    return Prices(
        models={model.lower(): _price(e) for model, e in parsed.models.items()},
        providers={
            name: {model.lower(): _price(e) for model, e in entries.items()}
            for name, entries in parsed.providers.items()
        },
        default=_price(parsed.default) if parsed.default is not None else None,
        default_max_output_tokens=parsed.default_max_output_tokens,
    )


def load_config(config_dir: Path) -> GatewayConfig:
    """Load and validate every file of ``config_dir``; ConfigError lists every problem of every
    file, each with its file and line."""
    errors = _Errors()
    warnings: list[str] = []
    providers_path = config_dir / PROVIDERS_FILE
    adjustments_path = config_dir / ADJUSTMENTS_FILE
    scoring_path = config_dir / SCORING_FILE
    prices_path = config_dir / PRICES_FILE
    providers_file = _validate(ProvidersFile, providers_path, errors, optional=False)
    adjustments_file = _validate(AdjustmentsFile, adjustments_path, errors, optional=True)
    scoring_file = _validate(ScoringFile, scoring_path, errors, optional=True)
    prices_file = _validate(PricesFile, prices_path, errors, optional=True)
    aliases_file = _validate(AliasesFile, config_dir / ALIASES_FILE, errors, optional=True)
    providers = _providers(providers_file, providers_path, errors) if providers_file else ()
    errors.raise_if_any()

    adjustments = (
        _adjustments(adjustments_file, adjustments_path, warnings) if adjustments_file else ()
    )
    scoring = scoring_file[0] if scoring_file else ScoringFile()
    weights = Weights(**_given(scoring.weights))  # type: ignore[arg-type]
    live = _given(scoring.live)
    live.setdefault("error_weight", weights.health_penalty)
    return GatewayConfig(
        providers=providers,
        adjustments=adjustments,
        weights=weights,
        breaker=Breaker(**_given(scoring.breaker)),  # type: ignore[arg-type]
        live=Live(**live),  # type: ignore[arg-type]
        hedging=_hedging(scoring_file, scoring_path, warnings),
        leaderboards=tuple(
            _leaderboard(entry, i, config_dir) for i, entry in enumerate(scoring.leaderboards)
        ),
        aliases={k.lower(): v.lower() for k, v in scoring.aliases.items()},
        discovery_refresh_s=scoring.discovery.refresh_s,
        discovery_timeout_s=scoring.discovery.timeout_s,
        fingerprint=config_fingerprint(config_dir),
        warnings=tuple(warnings),
        prices=_prices(prices_file[0], providers, prices_path, warnings)
        if prices_file
        else Prices(),
        model_aliases=Aliases(aliases_file[0].aliases.items() if aliases_file else ()),
    )


def config_fingerprint(config_dir: Path) -> str:
    """A digest of the config files' bytes: changes when any file changes."""
    digest = hashlib.sha256()
    for name in (PROVIDERS_FILE, ADJUSTMENTS_FILE, SCORING_FILE, PRICES_FILE, ALIASES_FILE):
        path = config_dir / name
        digest.update(name.encode())
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(b"<absent>")
    return digest.hexdigest()
