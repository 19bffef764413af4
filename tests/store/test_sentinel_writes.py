"""Registry writes on Sentinel are acknowledged only once a replica has them (real sentinels)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from service.store.backend import StoreUnreachable
from service.store.connection import parse_redis_url
from service.store.keys import Keys
from service.store.redis_backend import RedisBackend
from tests.topologies import SENTINEL_SERVICE, SentinelGroup, wait_until


def _replica_down(group: SentinelGroup) -> bool:
    with group.sentinels[0].client() as conn:
        replicas = conn.sentinel_slaves(SENTINEL_SERVICE)
    return bool(replicas) and all(r["is_sdown"] for r in replicas)


def test_a_write_no_replica_acknowledges_is_refused_while_a_replica_is_up(
    redis_sentinel_group: SentinelGroup,
) -> None:
    """A replica that stops acknowledging (here: SIGSTOP; in a manual failover: the replica
    being promoted) while the sentinels still count it up would let a write be lost on
    promotion: it is refused (an outage, 503 at the edge).  Once the sentinels see the replica
    down there is nothing to fail over to, and the master's word is enough again."""
    group = redis_sentinel_group
    for sentinel in group.sentinels:  # time to write before the sentinels call it down
        with sentinel.client() as conn:
            conn.sentinel_set(SENTINEL_SERVICE, "down-after-milliseconds", 5000)
    replica = group.replica
    assert replica.process is not None

    async def put(backend: RedisBackend, record_id: str) -> bool:
        return await backend.put_record("token", record_id, {"id": record_id}, "create")

    async def body() -> tuple[bool, bool]:
        backend = RedisBackend(parse_redis_url(group.url()), Keys("test-wait"))
        await backend.ping()
        try:
            replicated = await put(backend, "a")
            os.kill(replica.process.pid, signal.SIGSTOP)
            try:
                with pytest.raises(StoreUnreachable, match="no replica acknowledged"):
                    await put(backend, "b")
                await asyncio.to_thread(
                    wait_until, lambda: _replica_down(group), 20.0, "the replica seen down"
                )
                alone = await put(backend, "c")
            finally:
                os.kill(replica.process.pid, signal.SIGCONT)
            return replicated, alone
        finally:
            await backend.close()

    assert asyncio.run(body()) == (True, True)
    keys = Keys("test-wait")
    with group.master.client() as conn:
        # "b" reached the master although it was refused: the client retries, no harm done.
        assert [conn.exists(keys.record("token", i)) for i in "abc"] == [1, 1, 1]
