"""Discovery: what a provider's model list may contain, and how soon a provider that was
down comes back (against a real provider on loopback and the embedded store)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from service.observability.metrics import create_metrics
from service.routing.catalog import MAX_CONTEXT_TOKENS, RETRY_S, Catalog, parse_model_list
from service.settings import Settings
from service.store.client import Store
from service.store.open import open_store
from service.upstream.client import UpstreamClient
from tests.fakes.behaviors import Behavior
from tests.fakes.upstream import FakeProvider
from tests.harness import write_config


def test_unusable_ids_are_dropped_and_said_so() -> None:
    dropped: list[str] = []
    models = parse_model_list(
        {"data": [{"id": ""}, {"id": " padded"}, {"id": "a\nb"}, {"id": 7}, {"id": "good"}]},
        dropped,
    )
    assert [m.id for m in models] == ["good"]
    assert len(dropped) == 4


def test_an_absurd_context_window_counts_as_unknown() -> None:
    dropped: list[str] = []
    models = parse_model_list(
        {
            "data": [
                {"id": "huge", "context_window": 9 * 10**18},
                {"id": "ok", "context_window": 8192},
            ]
        },
        dropped,
    )
    assert [(m.id, m.context) for m in models] == [("huge", 0), ("ok", 8192)]
    assert dropped == [f"huge: context_window {9 * 10**18} is out of bounds; ignored"]
    assert MAX_CONTEXT_TOKENS < 9 * 10**18


def _catalog(directory: Path, provider: FakeProvider) -> tuple[Catalog, Store, UpstreamClient]:
    config_dir = write_config(
        directory,
        [
            {
                "name": "p",
                "api_key_env_var": "P_KEY",
                "base_url": provider.base_url,
                "base_priority": 1,
            }
        ],
        scoring={"discovery": {"timeout_s": 0.5}},
    )
    settings = Settings(config_dir=config_dir, env={"P_KEY": "k"})
    metrics = create_metrics()
    store = open_store(settings, metrics)
    client = UpstreamClient()
    return Catalog(settings, store, client, metrics), store, client


@pytest.mark.slow  # waits for a discovery retry
def test_a_provider_down_at_start_up_rejoins_at_the_next_retry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(provider: FakeProvider) -> float:
        catalog, store, client = _catalog(tmp_path / "config", provider)
        await store.start()
        await client.start()
        try:
            assert await catalog._discover_all() is True  # still pending
            assert "HTTP 503" in catalog.discovery_errors["p"]
            provider.set_models_behavior(Behavior.ok())
            came_back = time.monotonic()
            # The old lock lasted 60 s: no retry could discover it for a minute.
            while await catalog._discover_all():
                assert time.monotonic() - came_back < RETRY_S, "still not rediscovered"
                await asyncio.sleep(0.1)
            assert catalog.discovery_errors == {}
            assert [c.model for c in catalog.table.pairs] == ["m"]
            return time.monotonic() - came_back
        finally:
            await client.close()
            await store.close()

    with FakeProvider(["m"], api_key="k") as provider:
        provider.set_models_behavior(Behavior.server_error(503))
        caplog.set_level(logging.WARNING, "best.catalog")
        elapsed = asyncio.run(scenario(provider))
    # Within one retry interval (the old lock held for 60 s, four intervals).
    assert elapsed < RETRY_S


def test_garbage_in_a_discovered_list_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(provider: FakeProvider) -> list[str]:
        catalog, store, client = _catalog(tmp_path / "config", provider)
        await store.start()
        await client.start()
        try:
            assert await catalog._discover_all() is False  # nothing pending
            return [c.model for c in catalog.table.pairs]
        finally:
            await client.close()
            await store.close()

    with FakeProvider(["m", ""], api_key="k") as provider:
        caplog.set_level(logging.WARNING, "best.catalog")
        routable = asyncio.run(scenario(provider))
    assert routable == ["m"]
    assert "dropped entry with id ''" in caplog.text
