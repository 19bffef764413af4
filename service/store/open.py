"""Opening the store that the settings ask for: Redis in the topology ``REDIS_URL`` names
(standalone, Sentinel or Cluster; see ``connection.py``), or the embedded memory backend,
durable under ``DATA_DIR``."""

from __future__ import annotations

from service.observability.metrics import Metrics
from service.settings import Settings
from service.store.client import Store
from service.store.connection import parse_redis_url
from service.store.keys import Keys
from service.store.memory import MemoryBackend
from service.store.redis_backend import RedisBackend


def open_store(settings: Settings, metrics: Metrics) -> Store:
    """The store for ``settings`` (raises ``RedisUrlError`` for an unusable ``REDIS_URL``);
    it connects in ``Store.start``."""
    keys = Keys(settings.redis_prefix)
    timeout_s = settings.store_timeout_ms / 1000.0
    if settings.redis_url is None:
        embedded = MemoryBackend(settings.data_dir)
        return Store(embedded, embedded, keys, timeout_s=timeout_s, metrics=metrics)
    target = parse_redis_url(
        settings.redis_url,
        sentinel_password=settings.redis_sentinel_password,
        timeout_ms=settings.store_timeout_ms,
    )
    primary = RedisBackend(target, keys, quota_bound_s=timeout_s)
    return Store(primary, MemoryBackend(), keys, timeout_s=timeout_s, metrics=metrics)
