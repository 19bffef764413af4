"""Script batches on a real Cluster: a master that lost its scripts (a promoted replica: Redis
does not copy loaded scripts to replicas) costs a reload, and no call runs twice."""

from __future__ import annotations

import asyncio
import itertools
import uuid

from service.store.backend import ADMITTED, AdmitRequest
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
    limits = (1000, 0, 0, 0, 0, 0)

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
            assert await admit_all(backend, 0) == [ADMITTED] * 3  # loads the scripts
            with masters[0].client() as conn:
                conn.script_flush()
            assert await admit_all(backend, 1) == [ADMITTED] * 3
            return [await backend.usage(keys.quota(owner, None)) for owner in owners.values()]
        finally:
            await backend.close()

    usage = asyncio.run(main())
    # Two admissions each: none counted twice by the reload.
    assert [requests for requests, _, _ in usage] == [2, 2, 2], usage
