"""The token registry's own writes: each copy of a record is strictly newer than the one it
replaces, so "the newest copy wins" after an empty restart always has an answer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from service.quotas import tokens as registry_module
from tests.harness import write_config
from tests.inprocess import inprocess_settings, running_app
from tests.quotas.test_settlement import PROVIDER


def test_successive_writes_of_a_record_never_tie_on_updated_ms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an empty restart each replica writes back its copy and the newest ``updated_ms``
    wins; two writes in the same millisecond must still be ordered, or the older could win."""
    settings = inprocess_settings(write_config(tmp_path, [PROVIDER]), tmp_path / "data")

    async def main() -> list[int]:
        async with running_app(settings) as app:
            registry = app.gateway.tokens
            created = await registry.create({"name": "a"})
            monkeypatch.setattr(registry_module, "_now_ms", lambda: 1_000)  # a frozen clock
            stamps = []
            for name in ("older", "newest"):
                await registry.update(created["id"], {"name": name})
                stamps.append(int((await registry.get(created["id"]))["updated_ms"]))
            return stamps

    older, newest = asyncio.run(main())
    assert newest > older
