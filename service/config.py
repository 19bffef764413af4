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

from service.config_schema import (
    DEFAULT_APIS,
    AdjustmentsFile,
    LeaderboardEntry,
    ProvidersFile,
    ScoringFile,
    YamlDocument,
    YamlSyntaxError,
    read_yaml,
)
from service.validation import problems

PROVIDERS_FILE = "meta-providers.yaml"
ADJUSTMENTS_FILE = "model-adjustments.yaml"
SCORING_FILE = "scoring.yaml"

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """The configuration cannot be used; the message is one line listing every problem, each
    as ``FILE:LINE: key: what``, separated by ``; ``."""


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    api_key_env_var: str
    base_url: str
    base_priority: float
    model_url: str | None = None
    models: tuple[str, ...] | None = None
    timeout_s: float | None = None
    apis: frozenset[str] = frozenset(DEFAULT_APIS)

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
    # Live health: a pair whose recent error rate is r keeps (1 - r * health_penalty) of its score.
    health_penalty: float = 0.5


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
    leaderboards: tuple[LeaderboardSource, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)
    discovery_refresh_s: float = 600.0
    discovery_timeout_s: float = 10.0
    fingerprint: str = ""
    warnings: tuple[str, ...] = ()


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
            name=entry.name or default_provider_name(entry.api_key_env_var),
            api_key_env_var=entry.api_key_env_var,
            base_url=entry.base_url,
            base_priority=entry.base_priority,
            model_url=entry.model_url,
            models=tuple(entry.models) if entry.models is not None else None,
            timeout_s=entry.timeout_s,
            apis=frozenset(entry.apis),
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
        patterns: list[re.Pattern[str]] = []
        for i, pattern in enumerate(entry.regex):
            try:
                patterns.append(re.compile(pattern, re.IGNORECASE))
            except re.error as exc:
                line = document.line_of(("adjustments", name, "regex", i))
                warnings.append(
                    f"{path}:{line}: adjustments.{name}: regex {pattern!r} is invalid ({exc});"
                    " ignored"
                )
        groups.append(AdjustmentGroup(name, entry.priority, tuple(patterns)))
    return tuple(groups)


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


def load_config(config_dir: Path) -> GatewayConfig:
    """Load and validate every file of ``config_dir``; ConfigError lists every problem of every
    file, each with its file and line."""
    errors = _Errors()
    warnings: list[str] = []
    providers_path = config_dir / PROVIDERS_FILE
    adjustments_path = config_dir / ADJUSTMENTS_FILE
    scoring_path = config_dir / SCORING_FILE
    providers_file = _validate(ProvidersFile, providers_path, errors, optional=False)
    adjustments_file = _validate(AdjustmentsFile, adjustments_path, errors, optional=True)
    scoring_file = _validate(ScoringFile, scoring_path, errors, optional=True)
    providers = _providers(providers_file, providers_path, errors) if providers_file else ()
    errors.raise_if_any()

    adjustments = (
        _adjustments(adjustments_file, adjustments_path, warnings) if adjustments_file else ()
    )
    scoring = scoring_file[0] if scoring_file else ScoringFile()
    given = {k: v for k, v in scoring.weights.model_dump().items() if v is not None}
    return GatewayConfig(
        providers=providers,
        adjustments=adjustments,
        weights=Weights(**given),
        leaderboards=tuple(
            _leaderboard(entry, i, config_dir) for i, entry in enumerate(scoring.leaderboards)
        ),
        aliases={k.lower(): v.lower() for k, v in scoring.aliases.items()},
        discovery_refresh_s=scoring.discovery.refresh_s,
        discovery_timeout_s=scoring.discovery.timeout_s,
        fingerprint=config_fingerprint(config_dir),
        warnings=tuple(warnings),
    )


def config_fingerprint(config_dir: Path) -> str:
    """A digest of the config files' bytes: changes when any file changes."""
    digest = hashlib.sha256()
    for name in (PROVIDERS_FILE, ADJUSTMENTS_FILE, SCORING_FILE):
        path = config_dir / name
        digest.update(name.encode())
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(b"<absent>")
    return digest.hexdigest()
