"""Fleet-wide statistics per (provider, model): counted locally, flushed to the store about
once a second, read back by every replica.  They feed ``/stats`` and the live health that
lowers the score of a pair that keeps failing.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from service.observability.metrics import Metrics
from service.store.backend import StoreError
from service.store.client import Store

log = logging.getLogger("best.stats")

LATENCY_BUCKETS_MS = (25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000)
FLUSH_S = 1.0
HEALTH_WINDOW_S = 30.0
HEALTH_MIN_ATTEMPTS = 5

HealthCallback = Callable[[Mapping[tuple[str, str], float]], None]


def percentile(buckets: list[int], q: float) -> float | None:
    """Upper bound (ms) of the bucket holding quantile ``q`` of a bucketed distribution."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(buckets):
        seen += count
        if seen >= rank:
            return float(
                LATENCY_BUCKETS_MS[index]
                if index < len(LATENCY_BUCKETS_MS)
                else LATENCY_BUCKETS_MS[-1]
            )
    return float(LATENCY_BUCKETS_MS[-1])


class FleetStats:
    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        providers: Callable[[], list[str]],
        on_health: HealthCallback | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._providers = providers
        self._pending: dict[str, int] = {}
        self._on_health = on_health
        self._history: deque[tuple[float, dict[str, int]]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()

    def record(
        self,
        provider: str,
        model: str,
        *,
        ok: bool,
        latency_s: float,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        """Count one upstream attempt (cheap: a few dict updates)."""
        pending = self._pending
        pair = f"{provider}|{model}"
        key = "req|" + pair
        pending[key] = pending.get(key, 0) + 1
        if not ok:
            key = "fail|" + pair
            pending[key] = pending.get(key, 0) + 1
        if prompt_tokens:
            key = "pt|" + pair
            pending[key] = pending.get(key, 0) + prompt_tokens
        if completion_tokens:
            key = "ct|" + pair
            pending[key] = pending.get(key, 0) + completion_tokens
        bucket = bisect.bisect_left(LATENCY_BUCKETS_MS, latency_s * 1000.0)
        key = f"lat|{pair}|{bucket}"
        pending[key] = pending.get(key, 0) + 1

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.flush()

    async def flush(self) -> None:
        # Serialised: a reader that flushes first must also see what a concurrent flush of
        # the background loop is still writing.
        async with self._flushing:
            pending, self._pending = self._pending, {}
            try:
                await self._store.add_stats(pending)
            except StoreError as exc:
                log.warning("stats flush failed: %s", exc)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            await self.flush()
            try:
                totals = await self._store.read_stats()
                cooldowns = (await self._store.routing_state()).cooling
            except StoreError as exc:
                log.warning("stats read failed: %s", exc)
                continue
            self._update_health(totals)
            self._update_cooldowns(cooldowns)

    def _update_cooldowns(self, cooldowns: Mapping[str, int]) -> None:
        """Export the fleet's cooldowns per provider (whole provider and pairs)."""
        counts = dict.fromkeys(self._providers(), 0)
        for field in cooldowns:
            provider = field.split("|", 2)[1]
            counts[provider] = counts.get(provider, 0) + 1
        for provider, count in counts.items():
            self._metrics.cooldowns_active.labels(provider).set(count)

    def _update_health(self, totals: dict[str, int]) -> None:
        now = time.monotonic()
        self._history.append((now, totals))
        while len(self._history) > 2 and now - self._history[1][0] >= HEALTH_WINDOW_S:
            self._history.popleft()
        if self._on_health is None:
            return
        _, old = self._history[0]
        health: dict[tuple[str, str], float] = {}
        for key, value in totals.items():
            if not key.startswith("req|"):
                continue
            attempts = value - old.get(key, 0)
            if attempts < HEALTH_MIN_ATTEMPTS:
                continue
            pair = key[4:]
            failures = totals.get("fail|" + pair, 0) - old.get("fail|" + pair, 0)
            if failures > 0:
                provider, _, model = pair.partition("|")
                health[(provider, model)] = failures / attempts
        self._on_health(health)

    async def snapshot(self) -> dict[str, Any]:
        """The ``/stats`` document: fleet totals and per-pair figures, with cooldowns."""
        await self.flush()
        totals = await self._store.read_stats()
        state = await self._store.routing_state()
        cooldowns, now_ms = state.cooling, state.now_ms
        pairs: dict[str, dict[str, Any]] = {}
        for key, value in totals.items():
            kind, _, rest = key.partition("|")
            if kind == "lat":
                pair, _, bucket = rest.rpartition("|")
                entry = pairs.setdefault(pair, _empty())
                entry["buckets"][int(bucket)] += value
            elif kind in ("req", "fail", "pt", "ct"):
                pairs.setdefault(rest, _empty())[kind] += value
        rows = []
        for pair, entry in sorted(pairs.items()):
            provider, _, model = pair.partition("|")
            until = max(
                cooldowns.get(f"p|{provider}", 0), cooldowns.get(f"m|{provider}|{model}", 0)
            )
            rows.append(
                {
                    "provider": provider,
                    "model": model,
                    "requests": entry["req"],
                    "failures": entry["fail"],
                    "prompt_tokens": entry["pt"],
                    "completion_tokens": entry["ct"],
                    "latency_ms": {
                        "p50": percentile(entry["buckets"], 0.5),
                        "p95": percentile(entry["buckets"], 0.95),
                    },
                    "cooldown_remaining_s": round(max(0, until - now_ms) / 1000.0, 3),
                }
            )
        return {
            "totals": {
                "requests": sum(r["requests"] for r in rows),
                "failures": sum(r["failures"] for r in rows),
                "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
                "completion_tokens": sum(r["completion_tokens"] for r in rows),
            },
            "providers": rows,
            "cooldowns": [
                {"scope": field, "remaining_s": round((until - now_ms) / 1000.0, 3)}
                for field, until in sorted(cooldowns.items())
            ],
            "store": {"shared": self._store.shared, "degraded": self._store.degraded},
        }


def _empty() -> dict[str, Any]:
    return {"req": 0, "fail": 0, "pt": 0, "ct": 0, "buckets": [0] * (len(LATENCY_BUCKETS_MS) + 1)}
