"""Two fake providers serving the same models (``a`` first, ``b`` second; hedging on for
``hedge-m``), and a traced gateway in this process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.fakes.upstream import FakeProvider
from tests.harness import write_config
from tests.observability.traced import Traced, traced_gateway

HEDGE_AFTER_MS = 100
MODELS = ["m", "hedge-m", "emb-m"]


@pytest.fixture(scope="module")
def providers() -> Iterator[dict[str, FakeProvider]]:
    with FakeProvider(MODELS, api_key="ka") as a, FakeProvider(MODELS, api_key="kb") as b:
        yield {"a": a, "b": b}


@pytest.fixture(autouse=True)
def fresh(providers: dict[str, FakeProvider]) -> None:
    for fake in providers.values():
        fake.clear_behaviors()
        fake.clear()
        fake.report_cost(None)


@pytest.fixture(scope="module")
def config_dir(
    providers: dict[str, FakeProvider], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return write_config(
        tmp_path_factory.mktemp("traced"),
        [
            {
                "name": name,
                "api_key_env_var": f"{name.upper()}_KEY",
                "base_url": fake.base_url,
                "base_priority": priority,
                "models": MODELS,
            }
            for (name, fake), priority in zip(providers.items(), (2, 1), strict=True)
        ],
        scoring={
            "live": {"explore": 0},
            "hedging": [{"models": ["^hedge-m$"], "after_ms": HEDGE_AFTER_MS}],
        },
    )


@pytest.fixture
async def traced(config_dir: Path, tmp_path: Path) -> AsyncIterator[Traced]:
    async with traced_gateway(config_dir, tmp_path) as found:
        yield found
