"""Three replicas on one Redis that restarts empty, or stalls, under load."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis as redis_py

from devkit.procs import eventually
from service.quotas.admission import LEASE_MS
from tests.fakes.upstream import Behavior, FakeProvider
from tests.fleet.traffic import (
    STATIC,
    Traffic,
    admin,
    all_ready,
    burst,
    chat,
    create_token,
    fleet_env,
    gateways,
)
from tests.harness import GatewayProcess, RedisServer, write_config

pytestmark = pytest.mark.slow  # every test here runs gateway processes (and Redis servers)


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    """Model ``m`` answers at once; model ``held`` waits for ``release()``."""
    with FakeProvider(["m", "held"], api_key="k") as fake:
        fake.set_behavior(Behavior.held(), model="held")
        yield fake


@pytest.fixture
def config(provider: FakeProvider, tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "config",
        [
            {
                "name": "p",
                "api_key_env_var": "P_KEY",
                "base_url": provider.base_url,
                "base_priority": 1,
                "models": ["m", "held"],
            }
        ],
    )


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


def _client(server: RedisServer) -> redis_py.Redis:
    return redis_py.Redis(port=server.port, socket_timeout=2)


def _stored_ids(server: RedisServer) -> set[str]:
    with _client(server) as conn:
        return {m.decode() for m in conn.smembers("best:{registry}:tokens")}


def _listed(replica: GatewayProcess) -> dict[str, dict[str, object]]:
    with admin(replica) as client:
        response = client.get("/admin/tokens")
    assert response.status_code == 200, response.text
    return {t["id"]: t for t in response.json()["data"]}


def test_redis_restarted_empty_under_load_refuses_no_valid_token_and_loses_no_record(
    redis: RedisServer, config: Path
) -> None:
    with gateways(config, fleet_env(redis.url)) as replicas:
        unlimited_id, unlimited = create_token(replicas[0])
        limited_id, limited = create_token(replicas[1], rpm=100_000, max_concurrency=50)
        patched_id, patched = create_token(replicas[2], rpm=100_000)
        tokens = {"static": STATIC, unlimited_id: unlimited, limited_id: limited}
        tokens[patched_id] = patched
        for replica in replicas:  # every replica has served every token
            for token in tokens.values():
                assert chat(replica.url, token).status_code == 200

        with Traffic(replicas, tokens) as traffic:
            traffic.wait_for(60)
            with admin(replicas[1]) as client:
                body = {"name": "older", "rpm": 90_000}
                assert client.patch(f"/admin/tokens/{patched_id}", json=body).status_code == 200
            with admin(replicas[2]) as client:
                body = {"name": "newest", "rpm": 80_000}
                assert client.patch(f"/admin/tokens/{patched_id}", json=body).status_code == 200
            # At once, before every replica may have fetched the newest copy.
            redis.stop()
            restarted_at = time.monotonic()
            redis.start()
            # Re-seeded by the replicas: every record is in Redis again.
            eventually(
                lambda: {unlimited_id, limited_id, patched_id} <= _stored_ids(redis),
                "records re-seeded",
            )
            seconds = time.monotonic() - restarted_at
            traffic.wait_for(60)
            eventually(lambda: all_ready(replicas), "every replica ready")
            traffic.wait_for(60)

        failures = traffic.failures()
        assert [a for a in failures if a.status == 401] == [], failures[:5]
        assert failures == [], failures[:5]
        for replica in replicas:
            listed = _listed(replica)
            assert {unlimited_id, limited_id, patched_id} <= set(listed)
            assert listed[patched_id]["name"] == "newest"
            assert listed[patched_id]["rpm"] == 80_000
            for token in tokens.values():
                assert chat(replica.url, token).status_code == 200
        # Quotas exact again after the restart.
        _, fresh = create_token(replicas[0], rpm=5)
        statuses = burst(replicas, fresh, 15)
        assert statuses.count(200) == 5, statuses
        print(
            f"\nrestart empty: {traffic.count()} requests, {len(failures)} failed; "
            f"registry back {seconds:.1f} s after the restart"
        )


async def _two_in_flight(
    replicas: list[GatewayProcess], token: str, provider: FakeProvider
) -> bool:
    """Whether two concurrent held requests of ``token`` (on two replicas) both get upstream."""
    async with httpx.AsyncClient(timeout=30) as client:
        tasks = [
            asyncio.ensure_future(
                client.post(
                    f"{replica.url}/v1/chat/completions",
                    json={"model": "held", "messages": [{"role": "user", "content": "hi"}]},
                    headers={"Authorization": f"Bearer {token}"},
                )
            )
            for replica in replicas[:2]
        ]
        # Two conditions from two threads (the upstream's counter, this loop's tasks): poll.
        while provider.in_flight < 2 and not any(t.done() for t in tasks):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        both = provider.in_flight >= 2
        provider.release()
        responses = await asyncio.gather(*tasks)
    statuses = sorted(r.status_code for r in responses)
    assert statuses in ([200, 200], [200, 429], [429, 429]), statuses
    return both and statuses == [200, 200]


def _lease_events(subscription: redis_py.client.PubSub) -> list[str]:
    """The zset operations on the leases key notified since the last call (zadd, zrem...)."""
    events = []
    while message := subscription.get_message(ignore_subscribe_messages=True, timeout=0.2):
        events.append(message["data"].decode())
    return events


def test_stalled_redis_leaves_no_lease_behind_for_long(
    redis: RedisServer, config: Path, provider: FakeProvider
) -> None:
    with gateways(config, fleet_env(redis.url)) as replicas:
        token_id, token = create_token(replicas[0], max_concurrency=2)
        leases = f"best:{{q:{token_id}}}:token:{token_id}:leases"
        # Keyspace notifications show what ran on the leases: the orphans' ZADDs, their ZREMs.
        watcher = _client(redis)
        watcher.config_set("notify-keyspace-events", "Kz")
        subscription = watcher.pubsub()
        subscription.subscribe(f"__keyspace@0__:{leases}")
        assert asyncio.run(_two_in_flight(replicas, token, provider))
        _lease_events(subscription)

        # Two requests admitted by Redis are held upstream when it stalls; they finish during
        # the stall, when their settlements (lease releases) cannot reach it.
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(chat, r.url, token, None, model="held") for r in replicas[:2]]
            provider.wait_for_in_flight(2)
            redis.pause()
            paused = time.monotonic()
            statuses: list[int] = []
            try:
                # The next admissions wait on the stalled store past STORE_TIMEOUT_MS, then
                # are served on local state: Redis still runs them when it wakes up, and
                # nobody is left to settle them.  The stall lasts 3 s, with requests all along.
                statuses += burst(replicas, token, 6)
                # Every replica is degraded now: the held requests finish, and their
                # settlements are kept for Redis until it is back.
                provider.release()
                held_statuses = [f.result().status_code for f in held]
                while time.monotonic() - paused < 3:
                    statuses += burst(replicas, token, 6)
            finally:
                redis.resume()
        resumed = time.monotonic()
        assert held_statuses == [200, 200]
        assert statuses.count(200) >= 2, statuses
        assert set(statuses) <= {200, 429}, statuses

        def live_leases() -> int:
            with _client(redis) as conn:
                return int(conn.zcount(leases, int(time.time() * 1000), "(+inf"))

        try:
            eventually(lambda: live_leases() == 0, "orphaned leases released", timeout=5)
        except TimeoutError:
            with _client(redis) as conn:
                held = conn.zrange(leases, 0, -1, withscores=True)
            pytest.fail(
                f"leases live 5 s after SIGCONT (now {time.time() * 1000:.0f}): {held}; "
                f"lease events since the stall: {_lease_events(subscription)}"
            )
        released = time.monotonic() - resumed
        events = _lease_events(subscription)
        eventually(
            lambda: asyncio.run(_two_in_flight(replicas, token, provider)),
            "two concurrent requests again",
            timeout=LEASE_MS / 1000 + 3,
        )
        usable = time.monotonic() - resumed
        subscription.close()
        watcher.close()
        # Redis did run admissions after their callers gave up (more leases taken than the
        # two held ones), and all were released well before they would expire (LEASE_MS).
        assert events.count("zadd") > 2, events
        assert "zrem" in events, events
        print(
            f"\nstall: {events.count('zadd')} lease writes (2 held requests, the rest orphans), "
            f"all released {released:.1f} s after SIGCONT, 2 concurrent requests again after "
            f"{usable:.1f} s"
        )
