"""Token records, caches, locks and statistics: the store's plain key-value side."""

from __future__ import annotations

import asyncio

from service.store.client import Store
from tests.store.conftest import StoreRunner


def test_put_token_create_never_overwrites(run_store: StoreRunner) -> None:
    async def body(store: Store) -> None:
        assert await store.put_token("abc", {"name": "first", "rpm": "10"}, create=True)
        assert not await store.put_token("abc", {"name": "second"}, create=True)
        assert await store.get_token("abc") == {"name": "first", "rpm": "10"}

    run_store(body)


def test_put_token_update_merges_fields(run_store: StoreRunner) -> None:
    async def body(store: Store) -> None:
        await store.put_token("abc", {"name": "n", "rpm": "10", "tpm": ""}, create=True)
        await store.put_token("abc", {"rpm": "20"}, create=False)
        assert await store.get_token("abc") == {"name": "n", "rpm": "20", "tpm": ""}

    run_store(body)


def test_unknown_token_is_none(run_store: StoreRunner) -> None:
    async def body(store: Store) -> None:
        assert await store.get_token("missing") is None
        assert await store.token_usage("missing") == (0, 0, 0)

    run_store(body)


def test_all_tokens_lists_every_record_by_id(run_store: StoreRunner) -> None:
    async def body(store: Store) -> None:
        assert await store.all_tokens() == []
        await store.put_token("bbb", {"id": "bbb", "name": "two"}, create=True)
        await store.put_token("aaa", {"id": "aaa", "name": "one"}, create=True)
        assert await store.all_tokens() == [
            {"id": "aaa", "name": "one"},
            {"id": "bbb", "name": "two"},
        ]

    run_store(body)


def test_get_and_set_with_expiry(run_store: StoreRunner) -> None:
    async def body(store: Store) -> None:
        key = store.keys.catalog("groq")
        assert await store.get(key) is None
        await store.set(key, b'["llama"]', ttl_s=60)
        assert await store.get(key) == b'["llama"]'
        await store.set(key, b"short", ttl_s=0.05)
        await asyncio.sleep(0.15)  # expiry is time itself: nothing to wait on
        assert await store.get(key) is None

    run_store(body)


def test_lock_has_one_holder_until_it_expires(run_store: StoreRunner) -> None:
    async def body(store: Store) -> None:
        assert await store.try_lock("discovery", "replica-a", ttl_s=0.1)
        assert not await store.try_lock("discovery", "replica-b", ttl_s=0.1)
        assert await store.try_lock("other", "replica-b", ttl_s=0.1)
        await asyncio.sleep(0.2)
        assert await store.try_lock("discovery", "replica-b", ttl_s=0.1)

    run_store(body)


def test_stats_are_summed(run_store: StoreRunner) -> None:
    async def body(store: Store) -> None:
        assert await store.read_stats() == {}
        await store.add_stats({"requests|groq|llama": 2, "failures|groq|llama": 1})
        await store.add_stats({"requests|groq|llama": 3})
        await store.add_stats({})
        assert await store.read_stats() == {"requests|groq|llama": 5, "failures|groq|llama": 1}

    run_store(body)


def test_embedded_and_shared_modes(store_url: str | None, run_store: StoreRunner) -> None:
    async def body(store: Store) -> None:
        assert store.shared is (store_url is not None)
        assert not store.degraded
        assert await store.ping()

    run_store(body)


def test_keys_of_one_store_share_a_hash_tag(run_store: StoreRunner) -> None:
    async def body(store: Store) -> None:
        tag = store.keys.tag
        assert tag.startswith("{") and tag.endswith("}")
        keys = [
            *store.keys.quota_keys("t"),
            store.keys.cooldowns,
            store.keys.failures,
            store.keys.tokens,
        ]
        assert all(k.startswith(tag + ":") for k in keys)

    run_store(body)
