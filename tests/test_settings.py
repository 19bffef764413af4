"""Environment -> Settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import SettingsError, load_environment, settings_from_env


def test_defaults() -> None:
    s = settings_from_env({})
    assert s.port == 12345
    assert s.host == "127.0.0.1"
    assert s.redis_url is None
    assert s.config_dir == Path("config")
    assert s.auth_tokens == () and s.admin_tokens == ()
    assert (s.default_rpm, s.default_tpm, s.default_max_concurrency) == (0, 0, 0)
    assert s.web_concurrency == 1
    assert s.max_attempts == 4
    assert s.request_timeout_s == 300.0
    assert s.max_body_bytes == 10 * 1024 * 1024
    assert s.on_store_failure == "open"
    assert s.log_level == "info"
    assert s.data_dir == Path("data")
    assert s.auth_disabled_by_env


def test_values_are_read() -> None:
    s = settings_from_env(
        {
            "PORT": "8080",
            "HOST": "0.0.0.0",
            "REDIS_URL": "redis://redis:6379/0",
            "CONFIG_DIR": "/etc/best",
            "ADMIN_TOKENS": "adm",
            "DEFAULT_RPM": "60",
            "DEFAULT_TPM": "100000",
            "DEFAULT_MAX_CONCURRENCY": "4",
            "WEB_CONCURRENCY": "3",
            "MAX_ATTEMPTS": "2",
            "REQUEST_TIMEOUT_S": "12.5",
            "MAX_BODY_BYTES": "1024",
            "ON_STORE_FAILURE": "Closed",
            "LOG_LEVEL": "DEBUG",
            "DATA_DIR": "/var/lib/best",
            "GROQ_API_KEY": " gsk-123 ",
        }
    )
    assert (s.port, s.host, s.redis_url) == (8080, "0.0.0.0", "redis://redis:6379/0")
    assert s.config_dir == Path("/etc/best")
    assert s.admin_tokens == ("adm",)
    assert (s.default_rpm, s.default_tpm, s.default_max_concurrency) == (60, 100000, 4)
    assert (s.web_concurrency, s.max_attempts) == (3, 2)
    assert s.request_timeout_s == 12.5
    assert s.max_body_bytes == 1024
    assert (s.on_store_failure, s.log_level) == ("closed", "debug")
    assert s.data_dir == Path("/var/lib/best")
    assert s.provider_key("GROQ_API_KEY") == "gsk-123"
    assert s.provider_key("MISSING_API_KEY") is None
    assert not s.auth_disabled_by_env


def test_auth_tokens_ignore_blanks() -> None:
    s = settings_from_env({"AUTH_TOKENS": " alpha, ,beta,, "})
    assert s.auth_tokens == ("alpha", "beta")
    assert settings_from_env({"AUTH_TOKENS": " , ,"}).auth_tokens == ()


def test_empty_provider_key_counts_as_missing() -> None:
    assert settings_from_env({"GROQ_API_KEY": "  "}).provider_key("GROQ_API_KEY") is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "http"),
        ("PORT", "-1"),
        ("DEFAULT_RPM", "ten"),
        ("DEFAULT_TPM", "1.5"),
        ("DEFAULT_MAX_CONCURRENCY", "-2"),
        ("WEB_CONCURRENCY", "0"),
        ("MAX_ATTEMPTS", "0"),
        ("MAX_BODY_BYTES", "10MiB"),
        ("REQUEST_TIMEOUT_S", "soon"),
        ("REQUEST_TIMEOUT_S", "0"),
        ("ON_STORE_FAILURE", "maybe"),
        ("LOG_LEVEL", "loud"),
    ],
)
def test_bad_values_are_settings_errors_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        settings_from_env({name: value})


def test_several_workers_need_redis() -> None:
    with pytest.raises(SettingsError, match="REDIS_URL"):
        settings_from_env({"WEB_CONCURRENCY": "2"})
    with pytest.raises(SettingsError, match="REDIS_URL"):
        settings_from_env({"WEB_CONCURRENCY": "2", "REDIS_URL": "  "})
    assert settings_from_env({"WEB_CONCURRENCY": "2", "REDIS_URL": "redis://r"}).web_concurrency


def test_dotenv_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("BEST_TEST_PORT_X=1\nPORT=9999\nAUTH_TOKENS=a,b\n")
    monkeypatch.delenv("PORT", raising=False)
    monkeypatch.delenv("AUTH_TOKENS", raising=False)
    env = load_environment(tmp_path)
    assert env["BEST_TEST_PORT_X"] == "1"
    s = settings_from_env(env)
    assert s.port == 9999
    assert s.auth_tokens == ("a", "b")


def test_real_environment_wins_over_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("PORT=9999\nAUTH_TOKENS=from-dotenv\n")
    monkeypatch.setenv("PORT", "7000")
    # Set to an empty string in the real environment: still wins, so no token at all.
    monkeypatch.setenv("AUTH_TOKENS", "")
    s = settings_from_env(load_environment(tmp_path))
    assert s.port == 7000
    assert s.auth_tokens == ()


def test_no_dotenv_is_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "7001")
    assert load_environment(tmp_path)["PORT"] == "7001"


def test_settings_from_env_reads_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("MAX_ATTEMPTS=7\n")
    monkeypatch.delenv("MAX_ATTEMPTS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert settings_from_env().max_attempts == 7


def test_every_bad_variable_is_listed_by_name() -> None:
    with pytest.raises(SettingsError) as excinfo:
        settings_from_env({"PORT": "http", "MAX_ATTEMPTS": "0", "LOG_LEVEL": "loud"})
    message = str(excinfo.value)
    assert "\n" not in message
    assert [part.split(":")[0] for part in message.split("; ")] == [
        "PORT",
        "MAX_ATTEMPTS",
        "LOG_LEVEL",
    ]
    assert "'http'" in message and "'loud'" in message


def test_an_empty_real_variable_means_the_default_even_over_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("MAX_ATTEMPTS=9\n")
    monkeypatch.setenv("MAX_ATTEMPTS", "")
    assert settings_from_env(load_environment(tmp_path)).max_attempts == 4
