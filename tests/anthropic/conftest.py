"""The Messages route in process: fake providers on loopback (two chat providers serving
``m``, one native Anthropic provider serving ``claude-native``), aliases for Claude's names,
and the real ``anthropic`` SDK talking to the App through ``httpx.ASGITransport``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anthropic
import httpx
import httpx2
import pytest
import yaml

from service.app import App
from tests.fakes.upstream import FakeProvider
from tests.harness import write_config
from tests.inprocess import USER_TOKEN, inprocess_settings, running_app

ALIASES = {"claude-haiku-*": "m2", "claude-*": "m"}


@pytest.fixture(scope="module")
def chat_p() -> Iterator[FakeProvider]:
    """The first chat provider (``p``, key ``kp``), serving ``m`` and ``m2``."""
    with FakeProvider(["m", "m2"], api_key="kp", apis=("chat",)) as provider:
        yield provider


@pytest.fixture(scope="module")
def chat_q() -> Iterator[FakeProvider]:
    """The second chat provider (``q``, key ``kq``), serving ``m`` after ``p``."""
    with FakeProvider(["m"], api_key="kq", apis=("chat",)) as provider:
        yield provider


@pytest.fixture(scope="module")
def native() -> Iterator[FakeProvider]:
    """An Anthropic-native provider (``n``, key ``kn``), serving ``claude-native``."""
    with FakeProvider(["claude-native"], api_key="kn", apis=("messages",)) as provider:
        yield provider


@pytest.fixture(scope="module")
def config_dir(
    chat_p: FakeProvider,
    chat_q: FakeProvider,
    native: FakeProvider,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    directory = write_config(
        tmp_path_factory.mktemp("messages-config"),
        [
            {
                "name": "p",
                "api_key_env_var": "P_KEY",
                "base_url": chat_p.base_url,
                "base_priority": 2,
                "models": ["m", "m2"],
            },
            {
                "name": "q",
                "api_key_env_var": "Q_KEY",
                "base_url": chat_q.base_url,
                "base_priority": 1,
                "models": ["m"],
            },
            {
                "name": "n",
                "api_key_env_var": "N_KEY",
                "base_url": native.base_url,
                "base_priority": 1,
                "models": ["claude-native"],
                "apis": ["messages"],
            },
        ],
    )
    (directory / "aliases.yaml").write_text(yaml.safe_dump({"aliases": ALIASES}, sort_keys=False))
    return directory


KEYS = {"P_KEY": "kp", "Q_KEY": "kq", "N_KEY": "kn"}


@pytest.fixture
def providers(
    chat_p: FakeProvider, chat_q: FakeProvider, native: FakeProvider
) -> Iterator[tuple[FakeProvider, FakeProvider, FakeProvider]]:
    for provider in (chat_p, chat_q, native):
        provider.clear_behaviors()
        provider.clear()
    yield chat_p, chat_q, native


@pytest.fixture
async def app(config_dir: Path, tmp_path: Path, providers: object) -> AsyncIterator[App]:
    settings = inprocess_settings(config_dir, tmp_path, env=KEYS)
    async with running_app(settings) as app:
        yield app


def transport(app: App) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")


def sdk(app: App, **options: object) -> anthropic.AsyncAnthropic:
    """The real SDK, in process (it speaks httpx2, the SDK's own fork of httpx); the BEST
    token as its api_key (sent as x-api-key)."""
    values: dict[str, object] = {"api_key": USER_TOKEN, "max_retries": 0, **options}
    return anthropic.AsyncAnthropic(
        base_url="http://gateway",
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app)),
        **values,  # type: ignore[arg-type]
    )
