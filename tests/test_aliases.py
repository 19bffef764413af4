"""Model aliases (``config/aliases.yaml``): glob patterns in file order, for every API,
hot-reloaded, a bad file reported while the last good one stays in force."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from service.aliases import Aliases
from service.app import App
from service.config import ConfigError, load_config
from service.routing import catalog
from tests.fakes.upstream import FakeProvider
from tests.harness import write_config
from tests.inprocess import client, inprocess_settings, running_app

REPO = Path(__file__).resolve().parent.parent


def test_first_matching_pattern_wins_ignoring_case() -> None:
    aliases = Aliases([("claude-haiku-*", "small"), ("claude-*", "big"), ("gpt-?", "four")])
    assert aliases.target("claude-haiku-4-5") == "small"
    assert aliases.target("Claude-Sonnet-4-5") == "big"
    assert aliases.target("gpt-4") == "four"
    assert aliases.target("gpt-4o") is None
    assert aliases.target("llama") is None
    assert not Aliases() and aliases


def test_shipped_file_maps_claudes_names() -> None:
    aliases = load_config(REPO / "config").model_aliases
    for name in ("claude-opus-4-1", "claude-sonnet-4-5-20250929", "claude-3-7-sonnet-latest"):
        assert aliases.target(name) == "priority-auto"
    assert aliases.target("claude-haiku-4-5") == "llama-3.1-8b-instant,priority-auto"
    assert aliases.target("llama-3.3-70b-versatile") is None


def test_a_bad_file_names_file_and_line(tmp_path: Path) -> None:
    write_config(
        tmp_path, [{"api_key_env_var": "X_KEY", "base_url": "http://x", "base_priority": 1}]
    )
    (tmp_path / "aliases.yaml").write_text("aliases:\n  claude-*: \n  gpt-*: [a, b]\n")
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path)
    text = str(error.value)
    assert "aliases.yaml:2" in text and "aliases.yaml:3" in text


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    with FakeProvider(["m", "small"], api_key="k") as fake:
        yield fake


@pytest.fixture
async def app(
    provider: FakeProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[App]:
    monkeypatch.setattr(catalog, "CONFIG_POLL_S", 0.05)
    config = write_config(
        tmp_path / "config",
        [
            {
                "name": "p",
                "api_key_env_var": "P_KEY",
                "base_url": provider.base_url,
                "base_priority": 1,
                "models": ["m", "small"],
            }
        ],
    )
    (config / "aliases.yaml").write_text(yaml.safe_dump({"aliases": {"claude-*": "m"}}))
    settings = inprocess_settings(config, tmp_path / "data", env={"P_KEY": "k"})
    async with running_app(settings) as app:
        yield app


async def _served(http: httpx.AsyncClient, model: str) -> tuple[int, str | None]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    response = await http.post("/v1/chat/completions", json=body)
    return response.status_code, response.headers.get("x-best-model")


@pytest.mark.anyio
async def test_aliases_route_chat_too_and_reload(app: App, provider: FakeProvider) -> None:
    config: Path = app.gateway.settings.config_dir
    async with client(app) as http:
        assert await _served(http, "claude-sonnet-4-5") == (200, "m")
        assert await _served(http, "small") == (200, "small")  # a served name is not aliased
        assert (await _served(http, "gpt-4"))[0] == 404

        (config / "aliases.yaml").write_text(
            yaml.safe_dump({"aliases": {"claude-*": "small", "gpt-*": "m"}})
        )
        await _until(lambda: app.gateway.catalog.config.model_aliases.target("gpt-4") == "m")
        assert await _served(http, "claude-sonnet-4-5") == (200, "small")
        assert await _served(http, "gpt-4") == (200, "m")

        # A file that no longer parses is reported; the last good aliases stay in force.
        reloads = app.gateway.metrics.config_reloads.labels("error")
        failed = reloads._value.get()
        (config / "aliases.yaml").write_text("aliases: [not, a, mapping]\n")
        await _until(lambda: reloads._value.get() > failed)
        assert await _served(http, "gpt-4") == (200, "m")

        # An alias whose target nothing serves says so.
        (config / "aliases.yaml").write_text(yaml.safe_dump({"aliases": {"gpt-*": "nowhere"}}))
        await _until(lambda: app.gateway.catalog.config.model_aliases.target("gpt-4") == "nowhere")
        response = await http.post(
            "/v1/chat/completions",
            json={"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert response.status_code == 404
    assert "alias of `nowhere`" in response.json()["error"]["message"]


async def _until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Until the config watcher (polling every 50 ms here) has applied a change: it
    signals nothing to wait on."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
