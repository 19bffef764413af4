"""A request refused for its token's rpm says when to come back: never later than the
60-second window it was counted in (both stores)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.inprocess import client, inprocess_settings, running_app

GOOD = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.slow  # about a second per store
def test_retry_after_of_an_rpm_refusal_is_at_most_the_window(
    tmp_path: Path, single_provider_config: Path, store_url: str | None
) -> None:
    settings = inprocess_settings(
        single_provider_config,
        tmp_path / "data",
        redis_url=store_url,
        redis_prefix=f"retry-{tmp_path.name}",
        default_rpm=1,
        env={"P_KEY": "k"},
    )

    async def main() -> tuple[int, int, str | None]:
        async with running_app(settings) as app, client(app) as http:
            # Both requests early in one second: the longest wait the window can ask for.
            await asyncio.sleep(1.02 - time.time() % 1.0)
            first = await http.post("/v1/chat/completions", json=GOOD)
            second = await http.post("/v1/chat/completions", json=GOOD)
            return first.status_code, second.status_code, second.headers.get("retry-after")

    first, second, retry_after = asyncio.run(main())
    assert (first, second) == (200, 429)
    assert retry_after is not None
    assert 59 <= int(retry_after) <= 60
