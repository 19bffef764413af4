"""Three replicas on master + replica + 3 sentinels: the master is SIGKILLed mid-traffic."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from devkit.procs import eventually
from tests.fleet.traffic import (
    STATIC,
    Traffic,
    all_ready,
    burst,
    chat,
    create_token,
    fleet_env,
    gateways,
)
from tests.harness import GatewayProcess
from tests.topologies import RedisNode, SentinelGroup

pytestmark = pytest.mark.slow  # every test here runs gateway processes (and Redis servers)


def _try_create(replica: GatewayProcess) -> tuple[str, str] | None:
    try:
        return create_token(replica, rpm=5)
    except (AssertionError, httpx.HTTPError):  # 503: degraded, or a failover under way
        return None


def _writes(node: RedisNode) -> dict[str, int]:
    """EVALSHA calls clients made on a node, and those it refused (READONLY on a replica)."""
    stats = node.info("commandstats").get("cmdstat_evalsha") or {}
    return {k: int(stats.get(k, 0)) for k in ("calls", "rejected_calls", "failed_calls")}


def _gateway_clients(node: RedisNode) -> list[str]:
    """Addresses of the gateways' connections to ``node`` (named ``best`` by default)."""
    with node.client() as conn:
        return [client["addr"] for client in conn.client_list() if client.get("name") == "best"]


def _exact(replicas: list[GatewayProcess], created: tuple[str, str]) -> list[int]:
    _, token = created
    return burst(replicas, token, 15)


def test_master_killed_mid_traffic_is_followed_and_changes_nothing_when_it_returns(
    redis_sentinel_group: SentinelGroup, single_provider_config: Path
) -> None:
    group = redis_sentinel_group
    with gateways(single_provider_config, fleet_env(group.url())) as replicas:
        tokens = {"static": STATIC}
        for index in range(3):
            token_id, raw = create_token(replicas[index], rpm=100_000, max_concurrency=50)
            tokens[token_id] = raw

        with Traffic(replicas, tokens) as traffic:
            traffic.wait_for(60)
            killed_at = time.monotonic()
            old, new = group.kill_master()
            promoted = time.monotonic() - killed_at
            # Followed: a token created through any replica is stored (on the new master) and
            # works on every replica.
            fresh = eventually(lambda: _try_create(replicas[2]), "a token created")
            followed = time.monotonic() - killed_at
            # A replica still degraded (its probe looks once a second) answers a token it has
            # not seen 503, not 401: it cannot tell.  Once all are back, it works everywhere.
            eventually(lambda: all_ready(replicas), "every replica ready")
            for replica in replicas:
                assert chat(replica.url, fresh[1]).status_code == 200
            # Quotas exact after: that token (rpm=5) has 2 requests left across the fleet.
            after_failover = _exact(replicas, fresh)
            traffic.wait_for(60)

            # The old master comes back, empty and for a while still calling itself master,
            # until the sentinels make it a replica (their next look at it, up to 10 s).
            group.revive_as_replica(old)
            assert old.role() == "slave" and new.role() == "master"
            traffic.wait_for(90)
            rejoined = _try_create(replicas[0])
            assert rejoined is not None
            after_return = _exact(replicas, rejoined)
            traffic.wait_for(30)
            returned_writes = _writes(old)

        assert traffic.failures() == [], traffic.failures()[:5]
        assert after_failover.count(200) == 2, after_failover  # 3 of its 5 were used above
        assert after_failover.count(429) == 13, after_failover
        assert after_return.count(200) == 5, after_return
        # Since it came back no script ran on the old master, nor was refused there (READONLY):
        # a replica applies its master's scripts as their effects, not as EVALSHA.
        assert returned_writes == {"calls": 0, "rejected_calls": 0, "failed_calls": 0}
        with new.client() as conn:
            assert conn.exists(f"best:{{registry}}:token:{rejoined[0]}") == 1
        print(
            f"\nsentinel: {traffic.count()} requests, 0 failed; promotion {promoted:.1f} s, "
            f"writes followed {followed:.1f} s after the kill"
        )


def test_manual_failover_mid_traffic_relays_no_readonly_and_loses_no_token(
    redis_sentinel_group: SentinelGroup, single_provider_config: Path
) -> None:
    """``SENTINEL FAILOVER``: the old master stays up and is demoted under open connections
    (the ``READONLY`` path); tokens created all along are all on the new master after."""
    group = redis_sentinel_group
    with gateways(single_provider_config, fleet_env(group.url())) as replicas:
        tokens = {"static": STATIC}
        for index in range(3):
            token_id, raw = create_token(replicas[index], rpm=100_000, max_concurrency=50)
            tokens[token_id] = raw
        created: list[str] = []
        refused_creates = 0
        with Traffic(replicas, tokens) as traffic:
            traffic.wait_for(60)
            with ThreadPoolExecutor(1) as pool:
                failover = pool.submit(group.manual_failover)
                while not failover.done():  # token creation all through the failover
                    made = _try_create(replicas[len(created) % 3])
                    if made is None:
                        refused_creates += 1
                    else:
                        created.append(made[0])
                new = failover.result()
            promoted_at = time.monotonic()
            old = next(node for node in group.data_nodes if node is not new)
            # The old master is alive and a master until the sentinels demote it (about 8 s
            # later): writes that reach it meanwhile are lost.  Every replica leaves it, its
            # subscription included, soon after the promotion.
            eventually(lambda: not _gateway_clients(old), "the gateways to leave it", 5)
            left = time.monotonic() - promoted_at
            traffic.wait_for(60)
            eventually(lambda: all_ready(replicas), "every replica ready")
            fresh = eventually(lambda: _try_create(replicas[1]), "a token created")
            statuses = burst(replicas, fresh[1], 15)

        assert traffic.failures() == [], traffic.failures()[:5]
        assert statuses.count(200) == 5, statuses
        with new.client() as conn:
            stored = {m.decode() for m in conn.smembers("best:{registry}:tokens")}
        assert set(created) <= stored, set(created) - stored  # no acknowledged write lost
        print(
            f"\nsentinel manual failover: {traffic.count()} requests, 0 failed; "
            f"{len(created)} tokens created during it, all kept ({refused_creates} refused 503); "
            f"every replica left the old master {left:.1f} s after the sentinels agreed"
        )
