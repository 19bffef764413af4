"""Redis going away mid-traffic: the fleet keeps serving, shows it, and recovers alone.

Runs last in this package (module order) because it restarts the shared Redis empty."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.fleet.conftest import Fleet
from tests.fleet.test_quotas_fleet import _burst

pytestmark = pytest.mark.slow  # every test here runs gateway processes (and Redis servers)


def _wait(predicate: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_redis_outage_keeps_traffic_flowing_and_recovers(fleet: Fleet) -> None:
    _, token = fleet.create_token(rpm=1000)
    assert all(r.status_code == 200 for r in asyncio.run(_burst(fleet, token, 6)))

    fleet.redis.stop()
    responses = asyncio.run(_burst(fleet, token, 12))
    assert [r.status_code for r in responses] == [200] * 12
    for replica in fleet.replicas:
        ready = httpx.get(f"{replica.url}/ready")
        assert ready.status_code == 503
        assert "store unreachable" in ready.json()["problems"]
        assert httpx.get(f"{replica.url}/health").json()["store"] == "degraded"
        metrics = httpx.get(f"{replica.url}/metrics").text
        assert "best_store_degraded 1.0" in metrics
    # A token no replica has seen may have been created a moment ago: while the store is
    # away that is "cannot check" (503), not "invalid" (401).
    unseen = httpx.post(
        f"{fleet.replicas[0].url}/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": "Bearer best-0123456789abcdef-unseen"},
    )
    assert unseen.status_code == 503, unseen.text
    assert unseen.json()["error"]["code"] == "service_unavailable"

    fleet.redis.start()  # same port, empty: the registry is restored from the replicas
    for replica in fleet.replicas:
        _wait(lambda r=replica: httpx.get(f"{r.url}/ready").status_code == 200)

    # Exactness is back: a fresh token with rpm=5 gets exactly 5 across the fleet.
    _, limited = fleet.create_token(rpm=5)
    statuses = [r.status_code for r in asyncio.run(_burst(fleet, limited, 20))]
    assert statuses.count(200) == 5
    # The token created before the outage still works (restored into the empty Redis).
    assert asyncio.run(_burst(fleet, token, 1))[0].status_code == 200
