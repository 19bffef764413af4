"""``Store``: the gateway's one handle on shared state, over a ``Backend``.

With ``REDIS_URL`` the primary backend is Redis and a ``MemoryBackend`` stands by: when Redis
does not answer within ``STORE_TIMEOUT_MS`` the replica is *degraded* and runs every operation
on its local state (routing and cooldowns go on locally; quotas count locally or are refused,
as ``ON_STORE_FAILURE`` says, in the quotas package).  A probe pings Redis every second; when
it answers, the recovery callbacks run (the registry re-seeds what Redis may have lost) and
the replica switches back.  Without ``REDIS_URL`` the memory backend is the store, durable
under ``DATA_DIR``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from service.observability.metrics import Metrics
from service.store.backend import (
    AdmitRequest,
    Backend,
    BreakerResult,
    BreakerRule,
    BreakerState,
    CoolRule,
    LedgerKey,
    MessageHandler,
    QuotaDecision,
    Settlement,
    Spend,
    StoreError,
    StoreUnreachable,
    WindowUsage,
    WriteMode,
)
from service.store.keys import Keys, QuotaKeys

log = logging.getLogger("best.store")
T = TypeVar("T")

PROBE_S = 1.0
MAX_ORPHANS = 10_000  # settlements kept for Redis while it is away (a long outage drops more)
ORPHANS_PER_CALL = 200


class Store:
    def __init__(
        self, primary: Backend, local: Backend, keys: Keys, *, timeout_s: float, metrics: Metrics
    ) -> None:
        self.keys = keys
        self._primary = primary
        self._local = local
        self._timeout_s = timeout_s
        self._metrics = metrics
        self._degraded = False
        self._probe: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._handlers: dict[str, MessageHandler] = {}
        self._on_recover: list[Callable[[], Awaitable[None]]] = []
        # Admissions whose caller gave up waiting: refunded once Redis answers again.
        self._orphans: list[tuple[QuotaKeys, Settlement]] = []
        self._latency = {
            op: metrics.store_latency.labels(op) for op in ("quota", "cool", "other", "cache")
        }

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return self._primary.kind

    @property
    def shared(self) -> bool:
        """True when state is shared through Redis (a fleet), not embedded."""
        return self._primary is not self._local

    @property
    def degraded(self) -> bool:
        return self._degraded

    def on_recover(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` when Redis answers again, before the replica uses it."""
        self._on_recover.append(callback)

    async def start(self) -> None:
        if not self.shared:
            return
        try:
            await self._bounded(self._primary.ping())
        except StoreError as exc:
            log.warning("store: Redis is unreachable (%s); starting degraded", exc)
            self._enter_degraded()
        self._listener = asyncio.create_task(self._primary.listen(self._dispatch))

    async def close(self) -> None:
        for task in (self._probe, self._listener):
            if task is not None:
                task.cancel()
        await self._primary.close()
        if self.shared:
            await self._local.close()

    async def ping(self) -> bool:
        """Is the store this replica is meant to use reachable right now?"""
        if self._degraded:
            return False
        try:
            await self._bounded(self._primary.ping())
        except StoreError:
            return False
        return True

    # -- the failover wrapper ----------------------------------------------------------------

    async def _bounded(self, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await call
        except TimeoutError:
            raise StoreUnreachable(f"no answer within {self._timeout_s * 1000:.0f} ms") from None

    async def _run(self, op: str, fn: Callable[[Backend], Awaitable[T]]) -> T:
        if self._degraded:
            return await fn(self._local)
        if not self.shared:
            # The embedded store answers in this process, at once: nothing to bound or time.
            return await fn(self._primary)
        started = time.perf_counter()
        call = fn(self._primary)
        try:
            if op == "quota" and self._primary.quota_bound_s is not None:
                # Bounded per batch of calls by the backend: one timer for all the requests
                # of a loop turn instead of an asyncio.timeout (5 us) for each.
                result = await call
            else:
                result = await self._bounded(call)
        except StoreUnreachable as exc:
            self._metrics.store_errors.labels(op).inc()
            log.warning("store: %s failed (%s); serving on local state", op, exc)
            self._enter_degraded()
            raise
        except StoreError:
            self._metrics.store_errors.labels(op).inc()
            raise
        self._latency[op].observe(time.perf_counter() - started)
        return result

    async def _run_or_local(self, op: str, fn: Callable[[Backend], Awaitable[T]]) -> T:
        try:
            return await self._run(op, fn)
        except StoreUnreachable:
            return await fn(self._local)

    def _enter_degraded(self) -> None:
        if self._degraded or not self.shared:
            return
        self._degraded = True
        self._metrics.store_degraded.set(1)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._probe_until_back())

    async def _probe_until_back(self) -> None:
        while True:
            await asyncio.sleep(PROBE_S)
            try:
                await self._bounded(self._primary.ping())
                for callback in self._on_recover:
                    await callback()
                await self._refund_orphans()
            except StoreError as exc:
                log.debug("store: still unreachable (%s)", exc)
                continue
            log.warning("store: Redis answers again; leaving degraded mode")
            self._degraded = False
            self._metrics.store_degraded.set(0)
            return

    async def _refund_orphans(self) -> None:
        """Send the settlements kept while Redis was away, one script call per owner."""
        while self._orphans:
            keys = self._orphans[0][0]
            mine = [s for k, s in self._orphans if k == keys][:ORPHANS_PER_CALL]
            await self._bounded(self._primary.quota(keys, mine, None))
            sent = {id(s) for s in mine}
            self._orphans = [(k, s) for k, s in self._orphans if id(s) not in sent]

    # -- quotas ------------------------------------------------------------------------------

    async def quota(
        self,
        keys: QuotaKeys,
        settle: Sequence[Settlement],
        admit: AdmitRequest | None,
        local_fallback: bool = True,
    ) -> QuotaDecision:
        """Settle and admit; while degraded, on local state, or (``local_fallback`` False)
        raise ``StoreUnreachable``."""
        if self._degraded:
            if not local_fallback:
                raise StoreUnreachable("the shared store is unreachable")
            self._send_when_back(keys, settle)
            return await self._local.quota(keys, settle, admit)
        try:
            return await self._run("quota", lambda b: b.quota(keys, settle, admit))
        except StoreUnreachable:
            if admit is not None and admit.lease_ms > 0:
                # Redis may still run the admission after this caller gave up: refund it
                # when Redis is back (a no-op if it never ran).
                second = int(time.time())
                refund = Settlement(
                    entry=admit.entry, second=second, reserved=admit.cost, used=0, cost=0
                )
                self._orphans.append((keys, refund))
            self._send_when_back(keys, settle)
            if not local_fallback:
                raise
            return await self._local.quota(keys, [], admit)

    def _send_when_back(self, keys: QuotaKeys, settle: Sequence[Settlement]) -> None:
        """Settlements Redis did not take (or may not have) go again when it is back: the
        leases they release would otherwise stay held until they expire (LEASE_MS).  They are
        idempotent, and a no-op for an admission Redis never ran (one made on local state)."""
        room = MAX_ORPHANS - len(self._orphans)
        if settle and room > 0:
            self._orphans.extend((keys, s) for s in settle[:room])

    async def renew(self, leases: Mapping[str, Sequence[str]], until_ms: int) -> None:
        await self._run_or_local("other", lambda b: b.renew(leases, until_ms))

    async def spend(self, budget_key: str, period: int) -> Spend:
        return await self._run_or_local("other", lambda b: b.spend(budget_key, period))

    async def usage(self, keys: QuotaKeys) -> WindowUsage:
        return await self._run_or_local("other", lambda b: b.usage(keys))

    # -- circuit breakers and provider cooldowns ---------------------------------------------

    async def breaker_cool(self, field: str, rule: CoolRule) -> tuple[int, int]:
        return await self._run_or_local("cool", lambda b: b.breaker_cool(field, rule))

    async def breaker_state(self) -> BreakerState:
        return await self._run_or_local("other", lambda b: b.breaker_state())

    async def breaker_fail(self, field: str, rule: BreakerRule, trip: bool) -> BreakerResult:
        return await self._run_or_local("cool", lambda b: b.breaker_fail(field, rule, trip))

    async def breaker_probe(self, field: str, owner: str, lease_ms: int) -> bool:
        return await self._run_or_local("cool", lambda b: b.breaker_probe(field, owner, lease_ms))

    async def breaker_release(self, field: str, owner: str) -> None:
        await self._run_or_local("other", lambda b: b.breaker_release(field, owner))

    async def breaker_close(self, fields: Sequence[str]) -> int:
        return await self._run_or_local("other", lambda b: b.breaker_close(fields))

    # -- statistics, caches, locks -----------------------------------------------------------

    async def add_stats(self, deltas: Mapping[str, int]) -> None:
        await self._run_or_local("other", lambda b: b.add_stats(deltas))

    async def read_stats(self) -> dict[str, int]:
        return await self._run_or_local("other", lambda b: b.read_stats())

    async def get(self, key: str) -> bytes | None:
        return await self._run_or_local("other", lambda b: b.get(key))

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._run_or_local("other", lambda b: b.set(key, value, int(ttl_s * 1000)))

    async def try_lock(self, name: str, owner: str, ttl_s: float) -> bool:
        key = self.keys.lock(name)
        return await self._run_or_local(
            "other", lambda b: b.try_lock(key, owner, int(ttl_s * 1000))
        )

    async def unlock(self, name: str, owner: str) -> None:
        key = self.keys.lock(name)
        await self._run_or_local("other", lambda b: b.unlock(key, owner))

    # -- response cache (store/cache.py) -----------------------------------------------------

    # On the shared store only: while degraded the cache is skipped (a lookup misses), and a
    # failed call is a miss, never a failed request.

    async def cache_get(self, key: str) -> bytes | None:
        if self._degraded:
            return None
        try:
            return await self._run("cache", lambda b: b.get(key))
        except StoreError as exc:
            log.debug("store: cache lookup failed: %s", exc)
            return None

    async def cache_put(self, key: str, value: bytes, ttl_ms: int) -> None:
        if self._degraded:
            return
        try:
            await self._run("cache", lambda b: b.set(key, value, ttl_ms))
        except StoreError as exc:
            log.debug("store: cache write failed: %s", exc)

    # -- registry ----------------------------------------------------------------------------

    # The registry is read and written on the shared store only: while degraded these raise
    # StoreUnreachable (a 503 at the edge) rather than answer from an empty local copy or
    # change records behind the fleet's back; requests authenticate from each replica's cache.

    async def _registry(self, fn: Callable[[Backend], Awaitable[T]]) -> T:
        if self._degraded:
            raise StoreUnreachable("the shared store is unreachable")
        return await self._run("other", fn)

    async def put_record(
        self, kind: str, record_id: str, fields: Mapping[str, str], mode: WriteMode
    ) -> bool:
        return await self._registry(lambda b: b.put_record(kind, record_id, fields, mode))

    async def reseed(self, kind: str, records: Sequence[Mapping[str, str]]) -> int:
        """Write back records the store lost (newest copy wins); returns how many it took.
        Runs on the primary even while degraded: recovery calls it before switching back."""
        written = 0
        for record in records:
            if await self._bounded(self._primary.put_record(kind, record["id"], record, "newest")):
                written += 1
        return written

    async def get_record(self, kind: str, record_id: str) -> dict[str, str] | None:
        return await self._registry(lambda b: b.get_record(kind, record_id))

    async def all_records(self, kind: str, primary: bool = False) -> list[dict[str, str]]:
        if primary:
            return await self._bounded(self._primary.all_records(kind))
        return await self._registry(lambda b: b.all_records(kind))

    async def registry_version(self, primary: bool = False) -> int | None:
        if primary:
            return await self._bounded(self._primary.registry_version())
        return await self._registry(lambda b: b.registry_version())

    # -- usage ledger ------------------------------------------------------------------------

    async def add_usage(self, rows: Mapping[LedgerKey, Sequence[int]]) -> None:
        """Raises ``StoreUnreachable`` while degraded: the ledger keeps its rows until the
        shared store takes them (a local copy would be lost to the fleet)."""
        if self._degraded:
            raise StoreUnreachable("the shared store is unreachable")
        await self._run("other", lambda b: b.add_usage(rows))

    async def read_usage(self, days: Sequence[str]) -> list[tuple[LedgerKey, list[int]]]:
        if self._degraded:
            raise StoreUnreachable("the shared store is unreachable")
        return await self._run("other", lambda b: b.read_usage(days))

    # -- change notifications ----------------------------------------------------------------

    async def publish(self, message: str) -> None:
        if self.shared and not self._degraded:
            await self._run("other", lambda b: b.publish(message))

    def subscribe(self, topic: str, handler: MessageHandler) -> None:
        """Call ``handler(rest)`` for every message ``topic:rest`` any replica publishes."""
        self._handlers[topic] = handler

    async def _dispatch(self, message: str) -> None:
        topic, _, rest = message.partition(":")
        handler = self._handlers.get(topic)
        if handler is not None:
            await handler(rest)
