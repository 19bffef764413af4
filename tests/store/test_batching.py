"""Script batches on a real Cluster: one script call per master and turn; a master that lost
its scripts (a promoted replica: Redis does not copy loaded scripts to replicas) costs a
reload, and a stale slot map a resend, and no call runs twice."""

from __future__ import annotations

import asyncio
import itertools
import uuid

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from service.store.backend import (
    AdmitRequest,
    RateLimits,
    Status,
)
from service.store.connection import parse_redis_url
from service.store.keys import Keys
from service.store.redis_backend import RedisBackend
from tests.topologies import RedisClusterGroup


def test_calls_on_masters_that_kept_their_scripts_run_once(
    redis_cluster: RedisClusterGroup,
) -> None:
    keys = Keys(f"test-{uuid.uuid4().hex[:12]}")
    masters = redis_cluster.masters()
    # One owner per master, so one batch spans the three.
    owners: dict[int, str] = {}
    for n in itertools.count():
        owner = f"o{n}"
        port = redis_cluster.master_for_key(keys.quota(owner, None).token_windows).port
        owners.setdefault(port, owner)
        if len(owners) == len(masters):
            break
    limits = RateLimits(1000, 0, 0)

    async def admit_all(backend: RedisBackend, round_: int) -> list[int]:
        decisions = await asyncio.gather(
            *(
                backend.quota(
                    keys.quota(owner, None), [], AdmitRequest(f"{owner}-{round_}", 0, 0, limits)
                )
                for owner in owners.values()
            )
        )
        return [d.status for d in decisions]

    async def main() -> list[tuple[int, int, int]]:
        backend = RedisBackend(parse_redis_url(redis_cluster.url), keys)
        await backend.ping()
        try:
            assert await admit_all(backend, 0) == [Status.ADMITTED] * 3  # loads the scripts
            with masters[0].client() as conn:
                conn.script_flush()
            assert await admit_all(backend, 1) == [Status.ADMITTED] * 3
            return [await backend.usage(keys.quota(owner, None)) for owner in owners.values()]
        finally:
            await backend.close()

    usage = asyncio.run(main())
    # Two admissions each: none counted twice by the reload.
    assert [requests for requests, _, _ in usage] == [2, 2, 2], usage


def test_a_turn_costs_one_script_call_per_master_and_a_moved_slot_a_resend(
    redis_cluster: RedisClusterGroup,
) -> None:
    """Calls of one turn bound for one master travel as one script call, whatever their slots.
    When the slot map is stale (a slot moved to another master), that batch runs nothing and
    its calls go again slot by slot: each admission counts once."""
    keys = Keys(f"test-{uuid.uuid4().hex[:12]}")
    masters = redis_cluster.masters()
    first = masters[0].port
    # Four owners (four slots) on the first master, then one on another.
    here: list[str] = []
    there = ""
    for n in itertools.count():
        owner = f"o{n}"
        port = redis_cluster.master_for_key(keys.quota(owner, None).token_windows).port
        if port == first and len(here) < 4:
            here.append(owner)
        elif port != first and not there:
            there = owner
        if len(here) == 4 and there:
            break
    owners = [*here, there]
    slots = {key_slot(keys.quota(o, None).token_windows.encode()) for o in here}
    assert len(slots) == 4
    limits = RateLimits(1000, 0, 0)

    def script_calls() -> dict[int, int]:
        calls = {}
        for node in masters:
            with node.client() as conn:
                stats = conn.info("commandstats").get("cmdstat_evalsha", {})
                calls[node.port] = int(stats.get("calls", 0))
        return calls

    async def admit_all(backend: RedisBackend, round_: int) -> list[int]:
        decisions = await asyncio.gather(
            *(
                backend.quota(keys.quota(o, None), [], AdmitRequest(f"{o}-{round_}", 0, 0, limits))
                for o in owners
            )
        )
        return [d.status for d in decisions]

    async def main() -> tuple[dict[int, int], list[tuple[int, int, int]]]:
        backend = RedisBackend(parse_redis_url(redis_cluster.url), keys)
        await backend.ping()
        try:
            assert await admit_all(backend, 0) == [Status.ADMITTED] * 5  # loads the scripts
            before = script_calls()
            assert await admit_all(backend, 1) == [Status.ADMITTED] * 5
            after = script_calls()
            sent = {port: after[port] - before[port] for port in after}
            # A stale map: the client believes the last owner's slot is on the first master.
            client = backend._client
            assert isinstance(client, RedisCluster)
            cache = client.nodes_manager.slots_cache
            moved = key_slot(keys.quota(there, None).token_windows.encode())
            cache[moved] = cache[next(iter(slots))]
            assert await admit_all(backend, 2) == [Status.ADMITTED] * 5
            return sent, [await backend.usage(keys.quota(o, None)) for o in owners]
        finally:
            await backend.close()

    sent, usage = asyncio.run(main())
    other = redis_cluster.master_for_key(keys.quota(there, None).token_windows).port
    assert sent[first] == 1 and sent[other] == 1, sent
    assert [requests for requests, _, _ in usage] == [3] * 5, usage
