"""Registry writes on Sentinel: never answered as written and then lost to a failover."""

from __future__ import annotations

import asyncio
from pathlib import Path

from service.store.connection import connect_url
from tests.topologies import HOST, RedisNode, free_port, lone_sentinel


def test_a_write_to_a_master_the_sentinels_no_longer_name_is_at_risk(tmp_path: Path) -> None:
    """``failing_over(address)``: False for the master the sentinels name, True for another
    one (a write that reached it is lost when it is demoted)."""
    master = RedisNode(free_port(), tmp_path / "m").start()
    sentinel = lone_sentinel(tmp_path / "s", master)

    async def body() -> tuple[bool, bool, tuple[str, int] | None]:
        topology = await connect_url(f"redis+sentinel://{sentinel.address}/mymaster")
        try:
            await topology.client.ping()
            named = (HOST, master.port)
            return (
                await topology.failing_over(named),
                await topology.failing_over((HOST, free_port())),
                topology.master_address(),
            )
        finally:
            await topology.aclose()

    try:
        assert asyncio.run(body()) == (False, True, (HOST, master.port))
    finally:
        sentinel.close()
        master.close()
