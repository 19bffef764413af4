"""Environment -> Settings.  Read once at start-up and passed in; nothing else reads os.environ
for gateway settings.

A ``.env`` file in the working directory is read first; a variable set in the real environment,
even to an empty string, wins over it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values


class SettingsError(ValueError):
    """An environment variable holds a value the gateway cannot use."""


@dataclass(frozen=True)
class Settings:
    port: int = 12345
    host: str = "127.0.0.1"
    redis_url: str | None = None
    config_dir: Path = Path("config")
    auth_tokens: tuple[str, ...] = ()
    admin_tokens: tuple[str, ...] = ()
    default_rpm: int = 0
    default_tpm: int = 0
    default_max_concurrency: int = 0
    web_concurrency: int = 1
    max_attempts: int = 4
    request_timeout_s: float = 300.0
    max_body_bytes: int = 10 * 1024 * 1024
    on_store_failure: str = "open"
    log_level: str = "info"
    data_dir: Path = Path("data")
    redis_prefix: str = "best"
    shutdown_grace_s: float = 30.0
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def auth_disabled_by_env(self) -> bool:
        return not self.auth_tokens and not self.admin_tokens

    def provider_key(self, env_var: str) -> str | None:
        value = self.env.get(env_var, "").strip()
        return value or None


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


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be >= {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise SettingsError(f"{name}={value} must be > 0")
    return value


def settings_from_env(env: Mapping[str, str] | None = None) -> Settings:
    env = dict(load_environment() if env is None else env)
    on_failure = env.get("ON_STORE_FAILURE", "").strip().lower() or "open"
    if on_failure not in ("open", "closed"):
        raise SettingsError(f"ON_STORE_FAILURE={on_failure!r} must be 'open' or 'closed'")
    log_level = env.get("LOG_LEVEL", "").strip().lower() or "info"
    if log_level not in ("debug", "info", "warning", "error", "critical"):
        raise SettingsError(f"LOG_LEVEL={log_level!r} is not a log level")
    settings = Settings(
        port=_int(env, "PORT", 12345, minimum=0),
        host=env.get("HOST", "").strip() or "127.0.0.1",
        redis_url=env.get("REDIS_URL", "").strip() or None,
        config_dir=Path(env.get("CONFIG_DIR", "").strip() or "config"),
        auth_tokens=_split(env.get("AUTH_TOKENS", "")),
        admin_tokens=_split(env.get("ADMIN_TOKENS", "")),
        default_rpm=_int(env, "DEFAULT_RPM", 0),
        default_tpm=_int(env, "DEFAULT_TPM", 0),
        default_max_concurrency=_int(env, "DEFAULT_MAX_CONCURRENCY", 0),
        web_concurrency=_int(env, "WEB_CONCURRENCY", 1, minimum=1),
        max_attempts=_int(env, "MAX_ATTEMPTS", 4, minimum=1),
        request_timeout_s=_float(env, "REQUEST_TIMEOUT_S", 300.0),
        max_body_bytes=_int(env, "MAX_BODY_BYTES", 10 * 1024 * 1024, minimum=1),
        on_store_failure=on_failure,
        log_level=log_level,
        data_dir=Path(env.get("DATA_DIR", "").strip() or "data"),
        redis_prefix=env.get("REDIS_PREFIX", "").strip() or "best",
        shutdown_grace_s=_float(env, "SHUTDOWN_GRACE_S", 30.0),
        env=env,
    )
    if settings.web_concurrency > 1 and not settings.redis_url:
        raise SettingsError(
            "WEB_CONCURRENCY > 1 needs REDIS_URL: the embedded store is per process"
        )
    return settings
