"""Whatever happens after admission, the request's lease and reservation are settled: an
unexpected error in routing must not lock a token out (in-process, embedded store)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.harness import write_config
from tests.inprocess import client, inprocess_settings, running_app


def test_an_unexpected_error_after_admission_releases_the_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = {
        "name": "p",
        "api_key_env_var": "P_KEY",
        "base_url": "http://127.0.0.1:9/v1",
        "base_priority": 1,
        "models": ["m"],
    }
    settings = inprocess_settings(
        write_config(tmp_path, [provider]),
        tmp_path / "data",
        default_max_concurrency=1,
        default_tpm=100_000,
        env={"P_KEY": "k"},
    )
    calls = 0

    async def broken(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        raise RuntimeError("a bug after admission")

    async def main() -> tuple[list[int], dict[str, int]]:
        async with running_app(settings) as app:
            monkeypatch.setattr(app.gateway.router, "complete", broken)
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            async with client(app) as http:
                statuses = [
                    (await http.post("/v1/chat/completions", json=body)).status_code
                    for _ in range(3)
                ]
            await app.gateway.quotas.flush()
            tokens = await app.gateway.tokens.list()
            usage = next(t for t in tokens if t["kind"] == "static")["usage"]
            return statuses, usage

    statuses, usage = asyncio.run(main())
    # Each request is a 500 (an internal error), never a 429 for a leaked lease: every one was
    # admitted because the previous one's lease was released.
    assert statuses == [500, 500, 500]
    assert calls == 3
    assert usage["in_flight"] == 0
    assert usage["tokens_last_minute"] > 0  # an unknown usage keeps its reservation
