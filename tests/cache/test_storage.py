"""Where answers are kept: the embedded store's bound (least recently used evicted, the
gauge), Redis entries with their own TTL spread over a Cluster's shards, and a store that
fails is a miss, never a failed request."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge
from redis import RedisCluster

from service.store.backend import StoreUnreachable
from service.store.cache import ENTRY_OVERHEAD, LocalAnswers
from service.store.keys import Keys
from tests.cache.conftest import Gateway
from tests.cache.test_cache import CHAT, post
from tests.cache.upstream import ScriptedUpstream

pytestmark = pytest.mark.anyio


def _gauge() -> Gauge:
    return Gauge("best_cache_bytes", "test", registry=CollectorRegistry())


async def test_the_embedded_cache_evicts_the_least_recently_used_within_its_bound() -> None:
    gauge = _gauge()
    size = 1000 + ENTRY_OVERHEAD
    answers = LocalAnswers(3 * size, gauge)
    for name in ("a", "b", "c"):
        await answers.put(name, name.encode() * 1000, 60_000)
    assert await answers.get("a") is not None  # "a" is now the most recently used
    await answers.put("d", b"d" * 1000, 60_000)
    assert await answers.get("b") is None  # the least recently used went
    assert [await answers.get(k) is not None for k in ("a", "c", "d")] == [True, True, True]
    assert answers.bytes_held == 3 * size <= 3 * size
    assert gauge._value.get() == 3 * size  # type: ignore[attr-defined]
    await answers.put("huge", b"x" * (4 * size), 60_000)  # over the whole bound: not kept
    assert await answers.get("huge") is None and len(answers) == 3


async def test_an_embedded_entry_expires_and_frees_its_bytes() -> None:
    gauge = _gauge()
    answers = LocalAnswers(10_000, gauge)
    await answers.put("k", b"v" * 100, 50)
    await asyncio.sleep(0.08)
    assert await answers.get("k") is None
    assert answers.bytes_held == 0 and gauge._value.get() == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("store_url", ["embedded"], indirect=True)
async def test_the_bound_holds_through_the_gateway_and_metrics_show_it(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    async with gateway(cache_default_ttl_s=60, cache_max_bytes=3 * 600) as app:
        for n in range(6):
            await post(app, {**CHAT, "messages": [{"role": "user", "content": f"q{n}"}]})
        first_again = await post(app, {**CHAT, "messages": [{"role": "user", "content": "q0"}]})
        last_again = await post(app, {**CHAT, "messages": [{"role": "user", "content": "q5"}]})
        metrics = app.gateway.metrics.render()[0].decode()
    assert first_again.headers["x-best-cache"] == "miss"  # evicted
    assert last_again.headers["x-best-cache"] == "hit"
    held = next(
        float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("best_cache_bytes")
    )
    assert 0 < held <= 3 * 600
    assert 'best_cache_requests_total{result="hit"} 1.0' in metrics
    assert 'best_cache_requests_total{result="miss"} 7.0' in metrics


@pytest.mark.parametrize("store_url", ["cluster"], indirect=True)
async def test_entries_are_plain_keys_with_a_ttl_spread_over_the_cluster(
    gateway: Gateway, upstream: ScriptedUpstream, store_url: str
) -> None:
    async with gateway(cache_default_ttl_s=60) as app:
        for n in range(12):
            await post(app, {**CHAT, "messages": [{"role": "user", "content": f"q{n}"}]})
        prefix = app.gateway.store.keys.prefix
    nodes = store_url.removeprefix("redis+cluster://").split(",")
    host, port = nodes[0].split(":")
    cluster: Any = RedisCluster(host=host, port=int(port))
    try:
        keys = [k.decode() for k in cluster.keys(target_nodes=RedisCluster.ALL_NODES)]
        mine = [k for k in keys if k.startswith(f"{prefix}:{{cache:")]
        assert len(mine) == 12
        assert all("hello" not in k and "q1" not in k for k in mine)  # a hash, not the prompt
        slots = {cluster.keyslot(k) for k in mine}
        masters = {cluster.get_node_from_key(k).name for k in mine}
        ttls = [cluster.pttl(k) for k in mine]
    finally:
        cluster.close()
    assert len(slots) == 12 and len(masters) > 1
    assert all(55_000 < t <= 60_000 for t in ttls)
    assert Keys(prefix).cached_answer("ab") == f"{prefix}:{{cache:ab}}"


@pytest.mark.parametrize("store_url", ["redis"], indirect=True)
async def test_a_failing_store_is_a_miss_not_a_failed_request(
    gateway: Gateway, upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unreachable(*args: Any) -> Any:
        raise StoreUnreachable("no answer within 1000 ms")

    async with gateway(cache_default_ttl_s=60) as app:
        await post(app, CHAT)
        primary = app.gateway.store._primary
        monkeypatch.setattr(primary, "get", unreachable)
        monkeypatch.setattr(primary, "set", unreachable)
        failed = await post(app, CHAT)
        degraded = await post(app, CHAT)
    assert failed.status_code == degraded.status_code == 200
    assert failed.headers["x-best-cache"] == degraded.headers["x-best-cache"] == "miss"
    assert upstream.calls["chat"] == 3
