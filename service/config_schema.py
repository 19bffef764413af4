"""What the YAML files of ``CONFIG_DIR`` may contain: one pydantic model per file, and a YAML
reader that remembers the line of every key so an error can name it.

These models only validate; ``service.config`` turns them into the plain runtime objects the
gateway keeps (pydantic runs when a file is loaded, never per request).  Unknown keys are
errors: a misspelt ``timout_s`` must not pass silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from service.validation import Location

# Numbers are strict: `true` or "high" is not a priority (YAML ints are accepted as floats).
Number = Annotated[float, Field(strict=True)]
Positive = Annotated[float, Field(strict=True, gt=0)]
Text = Annotated[str, Field(strict=True), StringConstraints(strip_whitespace=True, min_length=1)]


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http(s) URL")
    return value.rstrip("/")


def _as_list(value: Any) -> Any:
    """A single pattern may be written without the list around it."""
    return [value] if isinstance(value, str) else value


def _scalars_as_text(value: Any) -> Any:
    """YAML reads `405` or `1.5` as numbers; patterns and model names are text."""
    if isinstance(value, list):
        return [
            str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v for v in value
        ]
    if isinstance(value, dict):
        return {str(k): str(v) if isinstance(v, int | float) else v for k, v in value.items()}
    return value


def _keys_as_text(value: Any) -> Any:
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value


def _blank_is_none(value: Any) -> Any:
    return None if value == "" else value


HttpUrl = Annotated[Text, AfterValidator(_http_url)]


class Section(BaseModel):
    """A mapping of a config file: unknown keys are errors; an optional key set to null (or
    left empty, as ``weights:``) is as if absent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, value: Any) -> Any:
        if isinstance(value, dict):
            fields = cls.model_fields
            return {
                k: v
                for k, v in value.items()
                if v is not None or (k in fields and fields[k].is_required())
            }
        return value


# -- meta-providers.yaml ----------------------------------------------------------------------


# The APIs a provider may serve; ``apis:`` lists them (default: chat and embeddings).
ApiName = Literal["chat", "embeddings", "responses", "completions", "messages"]
DEFAULT_APIS: tuple[ApiName, ...] = ("chat", "embeddings")


class ProviderEntry(Section):
    """One provider.  Without ``api_key_env_var`` it needs no key (a local server such as
    Ollama, vLLM or llama.cpp's): then it must be named, and it is used while it answers."""

    name: Text | None = None
    api_key_env_var: Text | None = None
    base_url: HttpUrl
    model_url: Annotated[HttpUrl | None, BeforeValidator(_blank_is_none)] = None
    base_priority: Number
    models: Annotated[list[Text] | None, BeforeValidator(_scalars_as_text)] = None
    timeout_s: Positive | None = None
    apis: Annotated[list[ApiName], Field(min_length=1)] = Field(
        default_factory=lambda: list(DEFAULT_APIS)
    )
    first_token_timeout_s: Positive | None = None

    @model_validator(mode="after")
    def _named(self) -> ProviderEntry:
        if self.name is None and self.api_key_env_var is None:
            raise ValueError(
                "give a name, or an api_key_env_var to name the provider after "
                "(a provider without api_key_env_var needs no key, and a name)"
            )
        return self


class ProvidersFile(Section):
    providers: list[ProviderEntry]


# -- model-adjustments.yaml -------------------------------------------------------------------


class AdjustmentEntry(Section):
    priority: Number = 0.0
    regex: Annotated[list[str], BeforeValidator(_as_list), BeforeValidator(_scalars_as_text)] = (
        Field(default_factory=list)
    )


class AdjustmentsFile(Section):
    adjustments: Annotated[dict[str, AdjustmentEntry], BeforeValidator(_keys_as_text)] = Field(
        default_factory=dict
    )


# -- scoring.yaml ------------------------------------------------------------------------------


class WeightsEntry(Section):
    """Defaults live in ``service.config.Weights``; a key left out keeps its default."""

    leaderboard: Number | None = None
    params_per_b: Number | None = None
    context_per_token: Number | None = None
    adjustment: Number | None = None
    health_penalty: Number | None = None


class LeaderboardEntry(Section):
    name: Text | None = None
    url: HttpUrl | None = None
    file: Text | None = None
    format: Literal["bigcodebench", "scores"] = "scores"
    timeout_s: Positive = 10.0
    refresh_s: Positive = 3600.0

    @model_validator(mode="after")
    def _one_location(self) -> LeaderboardEntry:
        if (self.url is None) == (self.file is None):
            raise ValueError("give exactly one of url (http(s)) or file (path under CONFIG_DIR)")
        return self


class DiscoveryEntry(Section):
    refresh_s: Positive = 600.0
    timeout_s: Positive = 10.0


PositiveInt = Annotated[int, Field(strict=True, gt=0)]
Fraction = Annotated[float, Field(strict=True, ge=0, le=1)]
NonNegative = Annotated[float, Field(strict=True, ge=0)]


class BreakerEntry(Section):
    """Circuit breaking of (provider, model) pairs; defaults in ``service.config.Breaker``."""

    failure_threshold: PositiveInt | None = None
    error_rate: Annotated[float, Field(strict=True, gt=0, le=1)] | None = None
    min_attempts: PositiveInt | None = None
    window_s: Positive | None = None
    open_s: Positive | None = None
    max_open_s: Positive | None = None

    @model_validator(mode="after")
    def _ordered(self) -> BreakerEntry:
        if (
            self.open_s is not None
            and self.max_open_s is not None
            and self.max_open_s < self.open_s
        ):
            raise ValueError("max_open_s must be at least open_s")
        return self


class LiveEntry(Section):
    """Live health in the score; defaults in ``service.config.Live``."""

    window_s: Positive | None = None
    min_attempts: PositiveInt | None = None
    error_weight: NonNegative | None = None
    latency_weight: NonNegative | None = None
    latency_tolerance: NonNegative | None = None
    latency_floor_ms: Positive | None = None
    min_factor: Annotated[float, Field(strict=True, gt=0, le=1)] | None = None
    explore: Fraction | None = None


class HedgingEntry(Section):
    models: Annotated[list[str], BeforeValidator(_as_list), BeforeValidator(_scalars_as_text)]
    after_ms: Positive | None = None


class ScoringFile(Section):
    weights: WeightsEntry = WeightsEntry()
    breaker: BreakerEntry = BreakerEntry()
    live: LiveEntry = LiveEntry()
    hedging: list[HedgingEntry] = Field(default_factory=list)
    leaderboards: list[LeaderboardEntry] = Field(default_factory=list)
    aliases: Annotated[dict[str, Text], BeforeValidator(_scalars_as_text)] = Field(
        default_factory=dict
    )
    discovery: DiscoveryEntry = DiscoveryEntry()


# -- aliases.yaml ------------------------------------------------------------------------------


class AliasesFile(Section):
    """Glob pattern -> the model it routes as (file order: the first match wins)."""

    aliases: Annotated[dict[str, Text], BeforeValidator(_scalars_as_text)] = Field(
        default_factory=dict
    )


# -- prices.yaml -------------------------------------------------------------------------------


class PriceEntry(Section):
    """USD per million tokens; ``max_output_tokens`` is the model's completion cap, used for
    the worst case of a request that sets no ``max_tokens``."""

    input: NonNegative
    output: NonNegative
    max_output_tokens: Annotated[int, Field(strict=True, gt=0)] | None = None


class PricesFile(Section):
    models: Annotated[dict[str, PriceEntry], BeforeValidator(_keys_as_text)] = Field(
        default_factory=dict
    )
    providers: Annotated[
        dict[str, Annotated[dict[str, PriceEntry], BeforeValidator(_keys_as_text)]],
        BeforeValidator(_keys_as_text),
    ] = Field(default_factory=dict)
    default: PriceEntry | None = None
    default_max_output_tokens: Annotated[int, Field(strict=True, gt=0)] = 4096


# -- reading YAML with lines -------------------------------------------------------------------


class YamlSyntaxError(ValueError):
    """The file is not YAML; ``line`` is 1-based (0 when the parser could not tell)."""

    def __init__(self, problem: str, line: int) -> None:
        super().__init__(problem)
        self.problem = problem
        self.line = line


@dataclass(frozen=True)
class YamlDocument:
    data: Any
    lines: dict[Location, int]  # where each key and list item starts (1-based)

    def line_of(self, loc: Location) -> int:
        """The line of ``loc`` or of the nearest enclosing key that is in the file (a missing
        key is reported at the mapping that lacks it)."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(loc[:end])
            if line is not None:
                return line
        return 1


def read_yaml(path: Path) -> YamlDocument:
    """Parse ``path``; raises OSError when unreadable and YamlSyntaxError when not YAML."""
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise YamlSyntaxError(problem, mark.line + 1 if mark is not None else 0) from None
    lines: dict[Location, int] = {}
    if node is not None:
        _record_lines(node, (), lines)
    return YamlDocument(data, lines)


def _record_lines(node: yaml.Node, loc: Location, lines: dict[Location, int]) -> None:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*loc, str(key.value))
            lines[child] = key.start_mark.line + 1
            _record_lines(value, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, (*loc, index), lines)
