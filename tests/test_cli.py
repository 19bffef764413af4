"""The `best` command in-process: check-config (discovery errors per provider, the exit status,
clean --json) and the help of serve."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from service.cli import main
from service.store.backend import BreakerRule
from service.store.keys import Keys, pair_field
from service.store.redis_backend import RedisBackend
from tests.fakes.upstream import FakeProvider
from tests.harness import RedisServer, write_config
from tests.tools import REPO


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    with FakeProvider(["m"], api_key="right") as fake:
        yield fake


def _configure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, provider: FakeProvider, key: str
) -> None:
    config_dir = write_config(
        tmp_path / "config",
        [
            {
                "name": "p",
                "api_key_env_var": "P_KEY",
                "base_url": provider.base_url,
                "base_priority": 1,
            }
        ],
    )
    monkeypatch.chdir(tmp_path)  # no developer .env
    monkeypatch.setenv("CONFIG_DIR", str(config_dir))
    monkeypatch.setenv("P_KEY", key)
    monkeypatch.delenv("REDIS_URL", raising=False)


def test_a_rejected_discovery_is_shown_and_nothing_routable_exits_1(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    provider: FakeProvider,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _configure(monkeypatch, tmp_path, provider, key="wrong")
    assert main(["check-config"]) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("provider p "))
    assert "discovery failed" in line and "HTTP 401" in line, out
    assert "0 routable" in out


def test_json_holds_only_json_with_the_provider_states(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    provider: FakeProvider,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _configure(monkeypatch, tmp_path, provider, key="wrong")
    assert main(["check-config", "--json"]) == 1
    document = json.loads(capsys.readouterr().out)  # fails on any line that is not JSON
    assert document["providers"][0]["state"].startswith("discovery failed")
    assert document["routable"] == 0


def test_a_working_provider_is_ok_and_exits_0(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    provider: FakeProvider,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _configure(monkeypatch, tmp_path, provider, key="right")
    assert main(["check-config", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["providers"] == [{"name": "p", "state": "ok", "apis": ["chat", "embeddings"]}]
    assert [(r["provider"], r["model"]) for r in document["pairs"]] == [("p", "m")]
    assert document["routable"] == 1


def test_serve_help_points_to_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for name in ("PORT", "CONFIG_DIR", "AUTH_TOKENS", "REDIS_URL", "REQUEST_READ_TIMEOUT_S"):
        assert name in out, out
    assert "docs/configuration.md" in out


def test_check_config_help_explains_offline(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["check-config", "--help"])
    assert "--offline" in capsys.readouterr().out
    manual = (REPO / "docs" / "configuration.md").read_text()
    assert "--offline" in manual


def test_check_config_shows_the_fleets_live_factor_and_breaker_state(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    provider: FakeProvider,
    redis_server: RedisServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With REDIS_URL, each pair shows what the fleet sees: its breaker and live factor."""
    _configure(monkeypatch, tmp_path, provider, key="right")
    redis_server.flush()
    monkeypatch.setenv("REDIS_URL", redis_server.url)

    async def trip() -> None:
        keys = Keys()
        backend = RedisBackend(Redis.from_url(redis_server.url), keys)
        try:
            rule = BreakerRule(threshold=1, open_ms=60_000, max_open_ms=300_000)
            await backend.breaker_fail(pair_field("p", "m"), rule, trip=False)
            live = [{"provider": "p", "model": "m", "factor": 0.4}]
            await backend.set(keys.live, json.dumps(live).encode(), 10_000)
        finally:
            await backend.close()

    asyncio.run(trip())
    assert main(["check-config", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["pairs"]
    assert row["breaker"] == "open" and 55 < row["cooling_s"] <= 60
    assert row["live_factor"] == 0.4

    monkeypatch.delenv("REDIS_URL")
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert "live and breaker: the fleet's state is in the running gateway" in out


def test_check_config_shows_the_aliases_and_what_they_reach(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    provider: FakeProvider,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _configure(monkeypatch, tmp_path, provider, key="right")
    (tmp_path / "config" / "aliases.yaml").write_text(
        'aliases:\n  "claude-haiku-*": "nothing,m"\n  "claude-*": priority-auto\n  x: y\n'
    )
    assert main(["check-config", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["aliases"] == [
        {"pattern": "claude-haiku-*", "target": "nothing,m", "pairs": 1},
        {"pattern": "claude-*", "target": "priority-auto", "pairs": 1},
        {"pattern": "x", "target": "y", "pairs": 0},
    ]
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert "claude-haiku-*" in out and "-> nothing,m  (1 pairs)" in out


def test_cache_ttl_options_make_the_admin_body() -> None:
    from service.cli import _limits, build_parser

    parser = build_parser()
    assert _limits(parser.parse_args(["tokens", "update", "ab", "--cache-ttl-s", "0"])) == {
        "cache_ttl_s": 0
    }
    assert _limits(parser.parse_args(["teams", "update", "t", "--cache-ttl-s", "none"])) == {
        "cache_ttl_s": None
    }
    created = parser.parse_args(["teams", "create", "--name", "t", "--cache-ttl-s", "600"])
    assert _limits(created) == {"name": "t", "cache_ttl_s": 600}
