"""Opening the store that the settings ask for: Redis in the topology ``REDIS_URL`` names,
or the embedded memory backend (durable under ``DATA_DIR``)."""

from __future__ import annotations

from redis.asyncio import Redis

from service.observability.metrics import Metrics
from service.settings import Settings
from service.store.client import Store
from service.store.keys import Keys
from service.store.memory import MemoryBackend
from service.store.redis_backend import RedisBackend


def open_store(settings: Settings, metrics: Metrics) -> Store:
    keys = Keys(settings.redis_prefix)
    timeout_s = settings.store_timeout_ms / 1000.0
    if settings.redis_url is None:
        embedded = MemoryBackend(settings.data_dir)
        return Store(embedded, embedded, keys, timeout_s=timeout_s, metrics=metrics)
    client = Redis.from_url(
        settings.redis_url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry_on_timeout=False,
    )
    primary = RedisBackend(client, keys, "standalone")
    return Store(primary, MemoryBackend(), keys, timeout_s=timeout_s, metrics=metrics)
