"""Whatever happens after admission, the request's lease and reservation are settled: an
unexpected error in routing must not lock a token out (in-process, embedded store)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.settings import Settings
from tests.harness import write_config

TOKEN = "sk-settle-test"


def test_an_unexpected_error_after_admission_releases_the_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = write_config(
        tmp_path,
        [
            {
                "name": "p",
                "api_key_env_var": "P_KEY",
                "base_url": "http://127.0.0.1:9/v1",
                "base_priority": 1,
                "models": ["m"],
            }
        ],
    )
    settings = Settings(
        config_dir=config_dir,
        auth_tokens=(TOKEN,),
        default_max_concurrency=1,
        default_tpm=100_000,
        data_dir=tmp_path / "data",
        env={"P_KEY": "k"},
    )

    async def main() -> list[int]:
        app = create_app(settings)
        await app.gateway.start()
        calls = 0

        async def broken(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            raise RuntimeError("a bug after admission")

        monkeypatch.setattr(app.gateway.router, "complete", broken)
        transport = httpx.ASGITransport(app=app)
        statuses = []
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
                headers = {"Authorization": f"Bearer {TOKEN}"}
                for _ in range(3):
                    response = await client.post("/v1/chat/completions", json=body, headers=headers)
                    statuses.append(response.status_code)
                await app.gateway.quotas.flush()
                usage = (await app.gateway.tokens.list())[0]["usage"]
        finally:
            await app.gateway.close()
        assert calls == 3  # every request was admitted: the first one's lease was released
        assert usage["in_flight"] == 0
        assert usage["tokens_last_minute"] > 0  # the unknown usage keeps its reservation
        return statuses

    # Each request is a 500 (an internal error), never a 429 for a leaked lease.
    assert asyncio.run(main()) == [500, 500, 500]
