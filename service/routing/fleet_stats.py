"""Fleet-wide statistics per (provider, model): counted locally, flushed to the store about
once a second, read back by every replica.  They feed ``/stats``, the live factors that adjust
scores (``live.py``), the routing gauges, and the error-rate check of the circuit breakers
(``breakers.py`` decides; this module only hands it the fleet's figures).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from service.config import GatewayConfig
from service.observability.metrics import Metrics
from service.routing.breakers import CLOSED, HALF_OPEN, OPEN, Breakers
from service.routing.live import FIRST_BYTE_BUCKETS_MS, LiveView, compute, figures
from service.routing.table import ModelTable
from service.store.backend import StoreError
from service.store.client import Store

log = logging.getLogger("best.stats")

LATENCY_BUCKETS_MS = (25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000)
FLUSH_S = 1.0
LIVE_TTL_S = 10.0  # the live factors kept in the store (for check-config) expire unrefreshed
BREAKER_GAUGE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}

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
        config: Callable[[], GatewayConfig] | None = None,
        breakers: Breakers | None = None,
        table: Callable[[], ModelTable] | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._providers = providers
        self._pending: dict[str, int] = {}
        self._on_health = on_health
        self._config = config
        self._breakers = breakers
        self._table = table
        self._history: deque[tuple[float, dict[str, int]]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()
        self.live = LiveView()
        self._breaker_series: set[tuple[str, str]] = set()
        self._published: dict[tuple[str, str], float] | None = None

    def record(
        self,
        provider: str,
        model: str,
        *,
        ok: bool,
        latency_s: float,
        first_byte_s: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        """Count one upstream attempt (cheap: a few dict updates); ``first_byte_s`` of a
        success feeds the live latency."""
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
        if first_byte_s is not None:
            bucket = bisect.bisect_left(FIRST_BYTE_BUCKETS_MS, first_byte_s * 1000.0)
            key = f"fb|{pair}|{bucket}"
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
                # The replica's cooldown copy is fresh (refreshed every second): no second read.
                cooldowns = (
                    self._breakers.in_force()
                    if self._breakers is not None
                    else (await self._store.breaker_state()).cooling
                )
            except StoreError as exc:
                log.warning("stats read failed: %s", exc)
                continue
            await self._update_health(totals)
            self._update_cooldowns(cooldowns)
            self.update_breaker_gauges()

    def _update_cooldowns(self, cooldowns: Mapping[str, int]) -> None:
        """Export the fleet's cooldowns per provider (whole provider and pairs)."""
        counts = dict.fromkeys(self._providers(), 0)
        for field in cooldowns:
            provider = field.split("|", 2)[1]
            counts[provider] = counts.get(provider, 0) + 1
        for provider, count in counts.items():
            self._metrics.cooldowns_active.labels(provider).set(count)

    def update_breaker_gauges(self) -> None:
        """Breaker state per pair that has tripped, and the routable models every candidate
        of which is out of rotation (breaker open or provider cooling)."""
        if self._table is None or self._breakers is None:
            return
        table, breakers = self._table(), self._breakers
        now = int(time.time() * 1000)
        blocked = 0
        for model in table.model_ids:
            candidates = table.resolve(model)
            if not any(c.score.total > 0 for c in candidates):
                continue
            if all(breakers.until(c, now) for c in candidates):
                blocked += 1
        self._metrics.models_blocked.set(blocked)
        for c in table.pairs:
            state = breakers.breaker_state(c)
            key = (c.provider, c.model)
            if state == CLOSED and key not in self._breaker_series:
                continue  # a series appears once its breaker first trips (bounded labels)
            self._breaker_series.add(key)
            self._metrics.breaker_state.labels(c.provider, c.model).set(BREAKER_GAUGE[state])

    def _baseline(self, window_s: float, since: float = 0.0) -> dict[str, int]:
        """The oldest snapshot inside the window (and taken after ``since``)."""
        now = time.monotonic()
        for at, totals in self._history:
            if now - at <= window_s + FLUSH_S / 2 and at >= since:
                return totals
        return self._history[-1][1]

    async def _update_health(self, totals: dict[str, int]) -> None:
        now = time.monotonic()
        self._history.append((now, totals))
        if self._config is None:
            return
        config = self._config()
        keep = max(config.live.window_s, config.breaker.window_s) + 2 * FLUSH_S
        while len(self._history) > 2 and now - self._history[1][0] >= keep:
            self._history.popleft()
        previous = self.live
        self.live = compute(
            figures(totals, self._baseline(config.live.window_s)), config.live, previous
        )
        if self._on_health is not None:
            self._on_health(self.live.factors)
        if self._breakers is not None:
            await self._breakers.check_error_rates(
                lambda window_s, since: figures(totals, self._baseline(window_s, since))
            )
        await self._publish_live()

    async def _publish_live(self) -> None:
        """Keep the fleet's live factors in the store for ``best check-config``."""
        factors = self.live.factors
        if factors == self._published and factors == {}:
            return
        self._published = dict(factors)
        document = [
            {
                "provider": provider,
                "model": model,
                "factor": factor,
                "p50_ms": self.live.p50.get((provider, model)),
                "error_rate": self.live.error_rates.get((provider, model)),
            }
            for (provider, model), factor in sorted(factors.items())
        ]
        try:
            await self._store.set(self._store.keys.live, orjson.dumps(document), LIVE_TTL_S)
        except StoreError as exc:
            log.debug("live factors not published: %s", exc)

    async def snapshot(self) -> dict[str, Any]:
        """The ``/stats`` document: fleet totals and per-pair figures, with cooldowns."""
        await self.flush()
        totals = await self._store.read_stats()
        state = await self._store.breaker_state()
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
