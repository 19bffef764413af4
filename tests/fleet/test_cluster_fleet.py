"""Three replicas on a real 3-master Redis Cluster with replicas: failovers mid-traffic."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import redis

from devkit.procs import eventually
from tests.fleet.traffic import (
    STATIC,
    Traffic,
    all_ready,
    burst,
    create_token,
    fleet_env,
    gateways,
)
from tests.topologies import RedisClusterGroup

pytestmark = pytest.mark.slow  # every test here runs gateway processes (and Redis servers)

REGISTRY_KEY = "best:{registry}:version"


def _quota_key(token_id: str) -> str:
    return f"best:{{q:{token_id}}}:token:{token_id}:ring60"


@pytest.mark.parametrize(
    ("url_form", "how"),
    [("redis+cluster", "kill"), ("plain redis", "manual")],
)
def test_master_failover_mid_traffic_fails_no_request(
    disposable_redis_cluster: RedisClusterGroup,
    single_provider_config: Path,
    url_form: str,
    how: str,
) -> None:
    cluster = disposable_redis_cluster
    # The master holding the registry: token writes and registry reads go there.
    victim = cluster.master_for_key(REGISTRY_KEY)
    # The plain form names only that one node: the Cluster is found behind it.
    url = cluster.url if url_form == "redis+cluster" else f"redis://{victim.address}"
    with gateways(single_provider_config, fleet_env(url)) as replicas:
        for replica in replicas:
            assert httpx.get(f"{replica.url}/health").json()["store"] != "degraded"
        tokens = {"static": STATIC}
        # Limited tokens, until one's quota keys sit on the victim and others elsewhere.
        owners: set[int] = set()
        while len(tokens) < 4 or victim.port not in owners or len(owners) < 2:
            assert len(tokens) < 40, "token ids never reached the victim's slots"
            token_id, raw = create_token(replicas[len(tokens) % 3], rpm=100_000, max_concurrency=50)
            tokens[token_id] = raw
            owners.add(cluster.master_for_key(_quota_key(token_id)).port)

        with Traffic(replicas, tokens) as traffic:
            traffic.wait_for(60)
            failed_over_at = time.monotonic()
            if how == "kill":
                cluster.kill_master(victim)
            else:
                cluster.failover(victim)
            promoted = time.monotonic() - failed_over_at
            traffic.wait_for(60)
            # Quotas exact again, within seconds: a fresh token with rpm=5 gets exactly 5.
            eventually(lambda: all_ready(replicas), "every replica ready")
            _, fresh = create_token(replicas[1], rpm=5)
            statuses = burst(replicas, fresh, 15)
            exact_after = time.monotonic() - failed_over_at
            traffic.wait_for(30)

        assert traffic.failures() == [], traffic.failures()[:5]
        # Every limited token's window is on the master owning its slot: the Cluster was used
        # as one (behind the plain URL too), not one node answering MOVED.
        for token_id in tokens:
            if token_id != "static":
                with cluster.master_for_key(_quota_key(token_id)).client() as conn:
                    assert conn.exists(_quota_key(token_id)) == 1, token_id
        assert statuses.count(200) == 5, statuses
        assert statuses.count(429) == 10, statuses
        print(
            f"\n{url_form}/{how}: {traffic.count()} requests, 0 failed; "
            f"promotion {promoted:.1f} s, exact quotas {exact_after:.1f} s after the failover"
        )


def test_master_restarted_empty_mid_traffic_is_reseeded(
    disposable_redis_cluster: RedisClusterGroup, single_provider_config: Path
) -> None:
    """The registry's master comes back empty (faster than the Cluster fails it over): its
    replica resyncs empty too, and it has forgotten the scripts the other masters keep."""
    cluster = disposable_redis_cluster
    victim = cluster.master_for_key(REGISTRY_KEY)
    with gateways(single_provider_config, fleet_env(cluster.url)) as replicas:
        tokens = {"static": STATIC}
        for index in range(6):
            token_id, raw = create_token(replicas[index % 3], rpm=100_000, max_concurrency=50)
            tokens[token_id] = raw
        with Traffic(replicas, tokens) as traffic:
            traffic.wait_for(60)
            restarted_at = time.monotonic()
            victim.restart_empty()
            eventually(
                lambda: set(tokens) - {"static"} <= _registry(cluster),
                "records re-seeded",
                ignore=(OSError, redis.RedisError),  # CLUSTERDOWN while the node rejoins
            )
            reseeded = time.monotonic() - restarted_at
            cluster.wait_healthy()
            traffic.wait_for(60)
            eventually(lambda: all_ready(replicas), "every replica ready")
            _, fresh = create_token(replicas[1], rpm=5)
            statuses = burst(replicas, fresh, 15)
            traffic.wait_for(30)

        assert traffic.failures() == [], traffic.failures()[:5]
        assert statuses.count(200) == 5, statuses
        print(
            f"\ncluster master restarted empty: {traffic.count()} requests, 0 failed; "
            f"registry re-seeded {reseeded:.1f} s after"
        )


def _registry(cluster: RedisClusterGroup) -> set[str]:
    with cluster.master_for_key(REGISTRY_KEY).client() as conn:
        return {m.decode() for m in conn.smembers("best:{registry}:tokens")}
