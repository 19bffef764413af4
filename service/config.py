"""The YAML configuration in ``CONFIG_DIR``: providers, model adjustments, scoring.

Loading validates everything and raises ``ConfigError`` with one line naming the file (and
line, for YAML syntax errors).  Recoverable problems (a bad regex, a provider without its key)
are collected as warnings instead: they are logged, never fatal.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROVIDERS_FILE = "meta-providers.yaml"
ADJUSTMENTS_FILE = "model-adjustments.yaml"
SCORING_FILE = "scoring.yaml"


class ConfigError(ValueError):
    """The configuration cannot be used; the message is one line naming file and place."""


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    api_key_env_var: str
    base_url: str
    base_priority: float
    model_url: str | None = None
    models: tuple[str, ...] | None = None
    timeout_s: float | None = None

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


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None


def _number(value: Any, where: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{where} must be > 0, got {value!r}")
    return float(value)


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where} must be a non-empty string, got {value!r}")
    return value.strip()


def default_provider_name(api_key_env_var: str) -> str:
    name = api_key_env_var.lower()
    return name[: -len("_api_key")] if name.endswith("_api_key") else name


def _parse_provider(raw: Any, where: str) -> ProviderConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping")
    for key in ("api_key_env_var", "base_url", "base_priority"):
        if key not in raw:
            raise ConfigError(f"{where} is missing the required key {key!r}")
    env_var = _string(raw["api_key_env_var"], f"{where}.api_key_env_var")
    base_url = _string(raw["base_url"], f"{where}.base_url")
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.base_url must be an http(s) URL, got {base_url!r}")
    models = raw.get("models")
    if models is not None and (
        not isinstance(models, list) or not all(isinstance(m, str) and m for m in models)
    ):
        raise ConfigError(f"{where}.models must be a list of model ids")
    timeout = raw.get("timeout_s")
    name = raw.get("name")
    return ProviderConfig(
        name=_string(name, f"{where}.name") if name is not None else default_provider_name(env_var),
        api_key_env_var=env_var,
        base_url=base_url.rstrip("/"),
        base_priority=_number(raw["base_priority"], f"{where}.base_priority"),
        model_url=_string(raw["model_url"], f"{where}.model_url") if raw.get("model_url") else None,
        models=tuple(models) if models is not None else None,
        timeout_s=_number(timeout, f"{where}.timeout_s", positive=True) if timeout else None,
    )


def _parse_adjustments(raw: Any, path: Path, warnings: list[str]) -> tuple[AdjustmentGroup, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not isinstance(raw.get("adjustments", {}), dict | None):
        raise ConfigError(f"{path}: expected a mapping 'adjustments: {{GROUP: ...}}'")
    groups: list[AdjustmentGroup] = []
    for name, spec in (raw.get("adjustments") or {}).items():
        where = f"{path}: adjustments.{name}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where} must be a mapping with 'priority' and 'regex'")
        priority = _number(spec.get("priority", 0), f"{where}.priority")
        patterns_raw = spec.get("regex", [])
        if isinstance(patterns_raw, str):
            patterns_raw = [patterns_raw]
        if not isinstance(patterns_raw, list):
            raise ConfigError(f"{where}.regex must be a list of patterns")
        patterns: list[re.Pattern[str]] = []
        for pattern in patterns_raw:
            try:
                patterns.append(re.compile(str(pattern), re.IGNORECASE))
            except re.error as exc:
                warnings.append(f"{where}: regex {pattern!r} is invalid ({exc}); ignored")
        groups.append(AdjustmentGroup(str(name), priority, tuple(patterns)))
    return tuple(groups)


def _parse_scoring(
    raw: Any, path: Path
) -> tuple[Weights, tuple[LeaderboardSource, ...], dict[str, str], float, float]:
    if raw is None:
        return Weights(), (), {}, 600.0, 10.0
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping")
    weights_raw = raw.get("weights") or {}
    if not isinstance(weights_raw, dict):
        raise ConfigError(f"{path}: weights must be a mapping")
    defaults = Weights()
    known = set(Weights.__dataclass_fields__)
    for key in weights_raw:
        if key not in known:
            raise ConfigError(f"{path}: weights.{key} is not one of {sorted(known)}")
    weights = Weights(
        **{
            key: _number(weights_raw.get(key, getattr(defaults, key)), f"{path}: weights.{key}")
            for key in known
        }
    )
    sources: list[LeaderboardSource] = []
    sources_raw = raw.get("leaderboards") or []
    if not isinstance(sources_raw, list):
        raise ConfigError(f"{path}: leaderboards must be a list of sources")
    for i, src in enumerate(sources_raw):
        where = f"{path}: leaderboards[{i}]"
        if not isinstance(src, dict):
            raise ConfigError(f"{where} must be a mapping")
        fmt = src.get("format", "scores")
        if fmt not in ("bigcodebench", "scores"):
            raise ConfigError(f"{where}.format must be 'bigcodebench' or 'scores'")
        location = src.get("url") or src.get("file")
        sources.append(
            LeaderboardSource(
                name=_string(src.get("name", f"source{i}"), f"{where}.name"),
                location=_string(location, f"{where}.url"),
                format=fmt,
                timeout_s=_number(src.get("timeout_s", 10), f"{where}.timeout_s", positive=True),
                refresh_s=_number(src.get("refresh_s", 3600), f"{where}.refresh_s", positive=True),
            )
        )
    aliases = raw.get("aliases") or {}
    if not isinstance(aliases, dict):
        raise ConfigError(f"{path}: aliases must map model ids to leaderboard names")
    discovery = raw.get("discovery") or {}
    if not isinstance(discovery, dict):
        raise ConfigError(f"{path}: discovery must be a mapping")
    return (
        weights,
        tuple(sources),
        {str(k).lower(): str(v).lower() for k, v in aliases.items()},
        _number(discovery.get("refresh_s", 600), f"{path}: discovery.refresh_s", positive=True),
        _number(discovery.get("timeout_s", 10), f"{path}: discovery.timeout_s", positive=True),
    )


def load_config(config_dir: Path) -> GatewayConfig:
    """Load and validate every file of ``config_dir``."""
    providers_path = config_dir / PROVIDERS_FILE
    if not providers_path.is_file():
        raise ConfigError(f"{providers_path}: file not found (set CONFIG_DIR)")
    warnings: list[str] = []
    raw = _read_yaml(providers_path)
    if not isinstance(raw, dict) or not isinstance(raw.get("providers"), list):
        raise ConfigError(f"{providers_path}: expected a mapping with a 'providers' list")
    providers = tuple(
        _parse_provider(p, f"{providers_path}: providers[{i}]")
        for i, p in enumerate(raw["providers"])
    )
    names = [p.name for p in providers]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{providers_path}: duplicate provider names {duplicates}")

    adjustments_path = config_dir / ADJUSTMENTS_FILE
    adjustments = (
        _parse_adjustments(_read_yaml(adjustments_path), adjustments_path, warnings)
        if adjustments_path.is_file()
        else ()
    )
    scoring_path = config_dir / SCORING_FILE
    weights, sources, aliases, refresh_s, timeout_s = _parse_scoring(
        _read_yaml(scoring_path) if scoring_path.is_file() else None, scoring_path
    )
    resolved = []
    for src in sources:
        if not src.location.startswith(("http://", "https://")):
            location = Path(src.location)
            src = LeaderboardSource(
                src.name,
                str(location if location.is_absolute() else config_dir / location),
                src.format,
                src.timeout_s,
                src.refresh_s,
            )
        resolved.append(src)
    return GatewayConfig(
        providers=providers,
        adjustments=adjustments,
        weights=weights,
        leaderboards=tuple(resolved),
        aliases=aliases,
        discovery_refresh_s=refresh_s,
        discovery_timeout_s=timeout_s,
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
