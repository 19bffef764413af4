"""How the Redis backend names a failure: redis-py's own faults are an unreachable store."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.connection import Connection

from service.store.backend import StoreUnreachable
from service.store.connection import parse_redis_url
from service.store.keys import Keys
from service.store.redis_backend import RedisBackend


def test_a_fault_inside_redis_py_is_an_unreachable_store_and_ours_is_not() -> None:
    async def main() -> None:
        backend = RedisBackend(parse_redis_url("redis://127.0.0.1:1"), Keys("t"))
        # What redis-py's Cluster pipeline hit while a master restarted: a write on a
        # connection closed under it ("'NoneType' object has no attribute 'writelines'").
        closed = Connection(host="127.0.0.1", port=1)
        with pytest.raises(StoreUnreachable, match="writelines"):
            await backend._do(closed._send_packed_command([b"PING\r\n"]))

        # What the Sentinel client hit when a promotion closed its transport under a
        # reconnect (uvloop: "unable to perform operation on <TCPTransport closed=True>").
        class ClosedTransport:
            def writelines(self, data: object) -> None:
                raise RuntimeError("the handler is closed")

        reconnecting = Connection(host="127.0.0.1", port=1)
        reconnecting._writer = ClosedTransport()  # type: ignore[assignment]
        with pytest.raises(StoreUnreachable, match="handler is closed"):
            await backend._do(reconnecting._send_packed_command([b"PING\r\n"]))

        async def our_bug() -> None:
            raise AttributeError("a bug of the gateway's own")

        with pytest.raises(AttributeError):
            await backend._do(our_bug())

    asyncio.run(main())
