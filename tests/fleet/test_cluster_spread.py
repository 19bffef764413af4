"""Three replicas on a real 3-master Cluster: the store's load spreads over the masters, a
token's quota state stays small whatever its rpm, and revocations reach every replica."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.fleet.traffic import CHAT, admin, chat, create_token, fleet_env, gateways
from tests.harness import GatewayProcess
from tests.topologies import RedisClusterGroup, RedisNode

pytestmark = pytest.mark.slow  # every test here runs gateway processes (and Redis servers)


@pytest.fixture(scope="module")
def cluster_fleet(
    redis_cluster: RedisClusterGroup, single_provider_config: Path
) -> Iterator[list[GatewayProcess]]:
    redis_cluster.flush()
    with gateways(single_provider_config, fleet_env(redis_cluster.url)) as replicas:
        yield replicas


def _evalsha_calls(node: RedisNode) -> int:
    stats = node.info("commandstats").get("cmdstat_evalsha")
    return int(stats["calls"]) if stats else 0


async def _send(
    replicas: Sequence[GatewayProcess], tokens: Sequence[str], total: int, concurrency: int = 24
) -> list[int]:
    """``total`` requests, ``concurrency`` at a time, round-robin over replicas and tokens."""
    pairs = itertools.cycle(itertools.product([r.url for r in replicas], tokens))
    statuses: list[int] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while len(statuses) < total:
            url, token = next(pairs)
            statuses.append(0)  # reserve the slot before awaiting
            response = await client.post(
                f"{url}/v1/chat/completions",
                json=CHAT,
                headers={"Authorization": f"Bearer {token}"},
            )
            statuses[statuses.index(0)] = response.status_code

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100)) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return statuses


def test_script_calls_spread_over_every_master(
    cluster_fleet: list[GatewayProcess], redis_cluster: RedisClusterGroup
) -> None:
    masters = redis_cluster.masters()
    assert len(masters) == 3
    tokens = [create_token(cluster_fleet[i % 3], rpm=100_000)[1] for i in range(48)]
    before = {m.port: _evalsha_calls(m) for m in masters}
    requests = 240
    started = time.monotonic()
    statuses = asyncio.run(_send(cluster_fleet, tokens, requests))
    elapsed = time.monotonic() - started
    assert statuses.count(200) == requests, sorted(set(statuses))
    delta = {m.port: _evalsha_calls(m) - before[m.port] for m in masters}
    total = sum(delta.values())
    shares = {port: calls / total for port, calls in delta.items()}
    print(f"\nEVALSHA per master over {requests} requests of 48 tokens in {elapsed:.1f} s: {delta}")
    # At most one script call per limited request (rpm only: nothing to settle; calls of one
    # turn bound for one master share one), plus each replica's background reads of the
    # routing state (cooldown refresh and stats loop: 2 a second).
    background = 3 * 2 * (elapsed + 1)
    assert 0 < total <= requests + background, delta
    # 48 owners over 3 masters: each master takes a fair part (binomial, never near 10 %).
    assert min(shares.values()) > 0.1, shares


def test_quota_memory_per_token_is_bounded(
    cluster_fleet: list[GatewayProcess], redis_cluster: RedisClusterGroup
) -> None:
    token_id, token = create_token(
        cluster_fleet[0], rpm=100_000, tpm=100_000_000, max_concurrency=1000
    )
    requests = 1000
    started = time.monotonic()
    statuses = asyncio.run(_send(cluster_fleet, [token], requests))
    elapsed = time.monotonic() - started
    assert statuses.count(200) == requests, sorted(set(statuses))
    group = f"best:{{q:{token_id}}}:token:{token_id}"
    master = redis_cluster.master_for_key(group)
    with master.client() as conn:
        keys = sorted(k.decode() for k in conn.scan_iter(match=f"best:{{q:{token_id}}}*"))
        usage = {key: int(conn.memory_usage(key, samples=0) or 0) for key in keys}
        requests_counted = int(conn.hget(f"{group}:ring60", "rs") or 0)
        # The most a window can hold, whatever the rate: 60 one-second slots (requests
        # * 2^33 + tokens) plus its three totals (lua/quota.lua), with counts of a token
        # running at rpm=100000 (1,700 requests and 170,000 tokens a second).
        now_s = int(time.time())
        full = {"o": now_s - 59, "rs": 100_000, "ts": 10_000_000}
        for second in range(now_s - 59, now_s + 1):
            full |= {f"b{second % 60}": 1_700 * 2**33 + 170_000}
        scratch = f"{group}:full-window-scratch"
        conn.hset(scratch, mapping=full)
        full_window = int(conn.memory_usage(scratch, samples=0) or 0)
        conn.delete(scratch)
    print(
        f"\nquota keys of an rpm=100000 token after {requests} requests in {elapsed:.1f} s: "
        f"{usage} ({sum(usage.values())} B); a full 60 s window: {full_window} B"
    )
    assert f"{group}:ring60" in usage
    if elapsed < 59:  # every admission is still in the window
        assert requests_counted == requests
    # Per-second buckets, not one entry per request (about 120 B each: 120 KB here, 12 MB
    # for a minute at rpm=100000).
    assert sum(usage.values()) < 4096, usage
    assert full_window < 4096, full_window


def _first_refusal(replica: GatewayProcess, token: str, status: int, since: float) -> float:
    with httpx.Client(timeout=5) as client:
        while True:
            if chat(replica.url, token, client).status_code == status:
                return time.monotonic() - since
            if time.monotonic() - since > 3:
                raise AssertionError(f"{replica.url} still serves the token after 3 s")


def test_revocation_and_new_limits_hold_on_every_replica_within_a_second(
    cluster_fleet: list[GatewayProcess],
) -> None:
    revoked_id, revoked = create_token(cluster_fleet[0])
    limited_id, limited = create_token(cluster_fleet[0])
    for replica in cluster_fleet:  # every replica knows (and caches) both
        assert chat(replica.url, revoked).status_code == 200
        assert chat(replica.url, limited).status_code == 200

    with admin(cluster_fleet[0]) as client:
        assert client.patch(f"/admin/tokens/{limited_id}", json={"rpm": 1}).status_code == 200
        patched = time.monotonic()
        assert client.delete(f"/admin/tokens/{revoked_id}").status_code == 200
        deleted = time.monotonic()
    # Each other replica is asked in its own thread, over and over, until it refuses.
    with ThreadPoolExecutor(4) as pool:
        revoked_on = [
            pool.submit(_first_refusal, r, revoked, 401, deleted) for r in cluster_fleet[1:]
        ]
        limited_on = [
            pool.submit(_first_refusal, r, limited, 429, patched) for r in cluster_fleet[1:]
        ]
        delays = {
            "revoked": [f.result() for f in revoked_on],
            "rpm=1": [f.result() for f in limited_on],
        }
    print(f"\nfirst refusal on the other replicas (s): {delays}")
    assert max(max(d) for d in delays.values()) < 1.0, delays
