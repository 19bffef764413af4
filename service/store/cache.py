"""Where the response cache keeps its answers: bytes by request hash, each with a TTL.

- On Redis (standalone, Sentinel or Cluster) an answer is one plain key (``SET PX``, ``GET``),
  named by ``Keys.cached_answer``: a hash tag per entry, so the cache spreads over a Cluster's
  shards and each entry expires on its own.  A call is bounded by ``STORE_TIMEOUT_MS`` like
  every store call; a failure, or a degraded store, is a miss (``Store.cache_get``).
- Embedded, answers live in this process, bounded by ``CACHE_MAX_BYTES``: the least recently
  used go first when a new one needs room; ``best_cache_bytes`` shows what is held.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol

from prometheus_client import Gauge

from service.store.client import Store

# What an entry costs beyond its bytes in the embedded cache (the key, the dict slot, the
# tuple): counted so that many tiny answers cannot hold far more memory than the bound says.
ENTRY_OVERHEAD = 200


class Answers(Protocol):
    async def get(self, digest: str) -> bytes | None:
        """The answer stored under ``digest``, or None (absent, expired, store unreachable)."""
        ...

    async def put(self, digest: str, value: bytes, ttl_ms: int) -> None:
        """Keep ``value`` under ``digest`` for ``ttl_ms``; never raises."""
        ...


class SharedAnswers:
    """Answers on the fleet's Redis: every replica sees what any one stored."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._keys = store.keys

    async def get(self, digest: str) -> bytes | None:
        return await self._store.cache_get(self._keys.cached_answer(digest))

    async def put(self, digest: str, value: bytes, ttl_ms: int) -> None:
        await self._store.cache_put(self._keys.cached_answer(digest), value, ttl_ms)


class LocalAnswers:
    """Answers in this process: a least-recently-used map bounded by ``max_bytes``."""

    def __init__(self, max_bytes: int, gauge: Gauge) -> None:
        self._max_bytes = max_bytes
        self._gauge = gauge
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0

    @property
    def bytes_held(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, digest: str) -> bytes | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        value, expires = entry
        if expires <= time.monotonic():
            self._drop(digest)
            return None
        self._entries.move_to_end(digest)
        return value

    async def put(self, digest: str, value: bytes, ttl_ms: int) -> None:
        size = len(value) + ENTRY_OVERHEAD
        if size > self._max_bytes:
            return
        if digest in self._entries:
            self._drop(digest)
        self._entries[digest] = (value, time.monotonic() + ttl_ms / 1000.0)
        self._bytes += size
        while self._bytes > self._max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
        self._gauge.set(self._bytes)

    def _drop(self, digest: str) -> None:
        value, _ = self._entries.pop(digest)
        self._bytes -= len(value) + ENTRY_OVERHEAD
        self._gauge.set(self._bytes)


def open_answers(store: Store, max_bytes: int, gauge: Gauge) -> Answers:
    """The cache's storage for ``store``: Redis when the fleet shares one, else embedded."""
    return SharedAnswers(store) if store.shared else LocalAnswers(max_bytes, gauge)
