"""Environment -> Settings.  Read once at start-up and passed in; nothing else reads os.environ
for gateway settings.

A ``.env`` file in the working directory is read first; a variable set in the real environment,
even to an empty string, wins over it.  A blank value means "the default".

The variables are validated by a pydantic model, once; every bad variable is reported (not only
the first), by its name.  pydantic-settings is not used: the gateway needs the whole merged
environment anyway (provider keys are named in the YAML files), and its "empty real variable
wins over ``.env``" rule is the six lines of ``load_environment``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.validation import problems

MAX_CACHE_TTL_S = 30 * 86_400  # the longest a cached answer may live: 30 days


class SettingsError(ValueError):
    """Environment variables hold values the gateway cannot use (the message names them all)."""


def _var(name: str, **constraints: Any) -> Any:
    return Field(alias=name, **constraints)


class Settings(BaseModel):
    """The gateway's settings; built by ``settings_from_env`` (fields are named like the
    variables, lower-cased) or directly by field name in tests."""

    model_config = ConfigDict(frozen=True, validate_by_name=True, extra="ignore")

    port: Annotated[int, _var("PORT", ge=0, le=65535)] = 12345
    host: Annotated[str, _var("HOST")] = "127.0.0.1"
    redis_url: Annotated[str | None, _var("REDIS_URL")] = None
    config_dir: Annotated[Path, _var("CONFIG_DIR")] = Path("config")
    auth_tokens: Annotated[tuple[str, ...], _var("AUTH_TOKENS")] = ()
    admin_tokens: Annotated[tuple[str, ...], _var("ADMIN_TOKENS")] = ()
    default_rpm: Annotated[int, _var("DEFAULT_RPM", ge=0)] = 0
    default_tpm: Annotated[int, _var("DEFAULT_TPM", ge=0)] = 0
    default_max_concurrency: Annotated[int, _var("DEFAULT_MAX_CONCURRENCY", ge=0)] = 0
    web_concurrency: Annotated[int, _var("WEB_CONCURRENCY", ge=1)] = 1
    max_attempts: Annotated[int, _var("MAX_ATTEMPTS", ge=1)] = 4
    request_timeout_s: Annotated[float, _var("REQUEST_TIMEOUT_S", gt=0)] = 300.0
    max_body_bytes: Annotated[int, _var("MAX_BODY_BYTES", ge=1)] = 10 * 1024 * 1024
    on_store_failure: Annotated[Literal["open", "closed"], _var("ON_STORE_FAILURE")] = "open"
    log_level: Annotated[
        Literal["debug", "info", "warning", "error", "critical"], _var("LOG_LEVEL")
    ] = "info"
    data_dir: Annotated[Path, _var("DATA_DIR")] = Path("data")
    redis_prefix: Annotated[str, _var("REDIS_PREFIX")] = "best"
    store_timeout_ms: Annotated[int, _var("STORE_TIMEOUT_MS", ge=1)] = 1000
    redis_sentinel_password: Annotated[str | None, _var("REDIS_SENTINEL_PASSWORD")] = None
    shutdown_grace_s: Annotated[float, _var("SHUTDOWN_GRACE_S", gt=0)] = 30.0
    request_read_timeout_s: Annotated[float, _var("REQUEST_READ_TIMEOUT_S", gt=0)] = 30.0
    metrics_per_token: Annotated[bool, _var("METRICS_PER_TOKEN")] = False
    # The response cache (service/caching): TTL of static tokens' answers (0: off), the
    # largest answer kept, and the embedded store's bound (least recently used evicted).
    cache_default_ttl_s: Annotated[int, _var("CACHE_DEFAULT_TTL_S", ge=0, le=MAX_CACHE_TTL_S)] = 0
    cache_max_entry_bytes: Annotated[int, _var("CACHE_MAX_ENTRY_BYTES", ge=1)] = 1024 * 1024
    cache_max_bytes: Annotated[int, _var("CACHE_MAX_BYTES", ge=0)] = 64 * 1024 * 1024
    # The whole merged environment, for the provider keys the YAML files name.
    env: dict[str, str] = Field(default_factory=dict, repr=False, exclude=True)

    @field_validator("auth_tokens", "admin_tokens", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _split(value) if isinstance(value, str) else value

    @field_validator("on_store_failure", "log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _workers_need_redis(self) -> Settings:
        if self.web_concurrency > 1 and not self.redis_url:
            raise ValueError(
                "WEB_CONCURRENCY > 1 needs REDIS_URL: the embedded store is per process"
            )
        return self

    @property
    def auth_disabled_by_env(self) -> bool:
        return not self.auth_tokens and not self.admin_tokens

    def provider_key(self, env_var: str) -> str | None:
        value = self.env.get(env_var, "").strip()
        return value or None


# Variable name -> field name, for the variables Settings reads.
VARIABLES = {
    str(info.alias): name for name, info in Settings.model_fields.items() if info.alias is not None
}


def load_environment(cwd: Path | None = None) -> dict[str, str]:
    """The process environment over the values of ``.env`` (real environment wins)."""
    dotenv_path = (cwd or Path.cwd()) / ".env"
    merged: dict[str, str] = {}
    if dotenv_path.is_file():
        merged.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
    merged.update(os.environ)
    return merged


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def settings_from_env(env: dict[str, str] | None = None) -> Settings:
    """Settings from ``env`` (default: ``load_environment()``); SettingsError lists every bad
    variable."""
    env = dict(load_environment() if env is None else env)
    # Blank means default; AUTH_TOKENS/ADMIN_TOKENS of blanks are simply empty.
    values: dict[str, Any] = {
        name: env[name].strip() for name in VARIABLES if name in env and env[name].strip()
    }
    try:
        return Settings.model_validate({**values, "env": env})
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for problem in problems(exc):
        name = str(problem.loc[0]) if problem.loc else ""
        parts.append(f"{name}: {problem.text}" if name else problem.text)
    return "; ".join(parts)
