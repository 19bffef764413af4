"""Whatever happens after admission, the request's lease and reservation are settled: an
unexpected error in routing must not lock a token out; and settlements ride with admissions
where holding a lease a little longer refuses nobody (in-process)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from service.quotas import leases, settlement
from tests.harness import RedisServer, write_config
from tests.inprocess import client, inprocess_settings, running_app

PROVIDER = {
    "name": "p",
    "api_key_env_var": "P_KEY",
    "base_url": "http://127.0.0.1:9/v1",
    "base_priority": 1,
    "models": ["m"],
}
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_an_unexpected_error_after_admission_releases_the_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = PROVIDER
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


@pytest.mark.parametrize(("max_concurrency", "alone"), [(1000, False), (2, True)])
def test_settlements_wait_for_a_ride_unless_a_limit_is_near(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_server: RedisServer,
    max_concurrency: int,
    alone: bool,
) -> None:
    """A settlement rides with its token's next admission (one script call for both) when it
    comes within the wait: 25 ms near a limit, where a held lease could refuse somebody, and
    longer far from every limit.  Requests 60 ms apart show the difference in script calls."""
    settings = inprocess_settings(
        write_config(tmp_path, [PROVIDER]),
        tmp_path / "data",
        redis_url=redis_server.url,
        default_max_concurrency=max_concurrency,
        default_tpm=100_000,
        env={"P_KEY": "k"},
    )

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("served nothing")  # every request settles at once

    def script_calls() -> int:
        with Redis.from_url(redis_server.url) as conn:
            stats: dict[str, Any] = conn.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    async def main() -> int:
        async with running_app(settings) as app:
            monkeypatch.setattr(app.gateway.router, "complete", broken)
            async with client(app) as http:
                await http.post("/v1/chat/completions", json=BODY)
                await app.gateway.quotas.flush()
                before = script_calls()
                for _ in range(10):
                    await asyncio.sleep(0.06)
                    await http.post("/v1/chat/completions", json=BODY)
                calls = script_calls() - before
                await app.gateway.quotas.flush()
            return calls

    calls = asyncio.run(main())
    if alone:  # each settlement went before the next admission: two calls per request
        assert calls >= 19, calls
    else:  # each rode with the next admission: one call per request
        assert calls <= 11, calls


def test_a_patient_settlement_still_finds_its_lease() -> None:
    """A finished request's lease is no longer renewed: the longest wait for a ride ends at
    least 2 s before the lease could expire, so the settlement still releases it and corrects
    the reservation rather than leaving the lease to expire."""
    least_left_ms = leases.LEASE_MS - leases.RENEW_S * 1000
    assert least_left_ms - 2000 >= settlement.SETTLE_PATIENT_S * 1000
    assert settlement.SETTLE_DELAY_S < settlement.SETTLE_PATIENT_S
