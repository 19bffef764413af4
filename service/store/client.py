"""The only code that talks to Redis.

``Store`` runs every operation on the shared Redis when ``REDIS_URL`` is set, else on an
embedded in-process Redis (fakeredis with Lua), through the same scripts and commands.

When the shared Redis is unreachable the store fails over to its embedded copy (the replica
is *degraded*): routing and cooldowns go on locally, quotas count locally (``open``) or are
refused (``closed``).  A probe pings Redis every second and switches back when it answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import fakeredis
import redis.asyncio as redis_asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.observability.metrics import Metrics
from service.store.batching import ScriptBatcher
from service.store.keys import Keys
from service.store.scripts import load_sources

log = logging.getLogger("best.store")
T = TypeVar("T")
Client = Any  # redis.asyncio.Redis or fakeredis.FakeAsyncRedis: the same command surface

_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)


class StoreError(Exception):
    """A store operation failed for a reason other than Redis being unreachable."""


@dataclass(slots=True)
class Admission:
    """What the admission script decided; limits are -1 when the token has none."""

    status: int
    retry_after_ms: int
    rpm_limit: int
    rpm_remaining: int
    rpm_reset_ms: int
    tpm_limit: int
    tpm_remaining: int
    tpm_reset_ms: int
    concurrency_limit: int
    now_ms: int
    cooling: dict[str, int]  # cooldown field -> cooling until (ms), for those in force
    failing: frozenset[str]  # fields with recent failures that a success resets

    def state(self, field: str) -> int:
        """Cooling until (ms); -1 when not cooling but recently failed; 0 when healthy."""
        until = self.cooling.get(field, 0)
        return until if until else (-1 if field in self.failing else 0)


ADMITTED, UNKNOWN, REVOKED, EXPIRED, OVER_RPM, OVER_TPM, OVER_CONCURRENCY, QUOTA_UNAVAILABLE = (
    range(8)
)


class Store:
    def __init__(
        self,
        *,
        url: str | None,
        prefix: str,
        refuse_quotas_when_degraded: bool,
        metrics: Metrics,
    ) -> None:
        self.url = url
        self.keys = Keys(prefix)
        self._refuse_quotas_when_degraded = refuse_quotas_when_degraded
        self._metrics = metrics
        self._local: Client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        self._primary: Client = (
            redis_asyncio.Redis.from_url(
                url, socket_timeout=2.0, socket_connect_timeout=1.0, retry_on_timeout=False
            )
            if url
            else self._local
        )
        sources = load_sources()
        self._batchers = {
            id(client): ScriptBatcher(client, sources) for client in (self._primary, self._local)
        }
        self._degraded = False
        self._probe: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._on_recover: list[Callable[[], Awaitable[None]]] = []
        self._on_degrade: list[Callable[[], Awaitable[None]]] = []
        self._latency = {
            op: metrics.store_latency.labels(op) for op in ("admit", "settle", "cool", "other")
        }

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def shared(self) -> bool:
        """True when state is shared through a real Redis (a fleet), not embedded."""
        return self.url is not None

    @property
    def degraded(self) -> bool:
        return self._degraded

    def on_recover(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` each time the shared Redis is reachable again."""
        self._on_recover.append(callback)

    def on_degrade(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback()`` when failing over (to seed the local copy, see ``put_tokens``)."""
        self._on_degrade.append(callback)

    async def start(self) -> None:
        if not self.shared:
            return
        try:
            await self._primary.ping()
        except _UNREACHABLE as exc:
            log.warning("store: Redis at %s is unreachable (%s); starting degraded", self.url, exc)
            await self._enter_degraded()

    async def close(self) -> None:
        for task in (self._probe, self._listener):
            if task is not None:
                task.cancel()
        if self.shared:
            await self._primary.aclose()
        await self._local.aclose()

    async def ping(self) -> bool:
        """Is the store this replica is meant to use reachable right now?"""
        if self._degraded:
            return False
        try:
            await self._primary.ping()
        except _UNREACHABLE:
            return False
        return True

    # -- the failover wrapper ----------------------------------------------------------------

    async def _run(self, op: str, fn: Callable[[Client], Awaitable[T]]) -> T:
        if self._degraded:
            return await fn(self._local)
        started = time.perf_counter()
        try:
            result = await fn(self._primary)
        except _UNREACHABLE as exc:
            self._metrics.store_errors.labels(op).inc()
            log.warning("store: %s failed (%r); failing over to local state", op, exc)
            await self._enter_degraded()
            return await fn(self._local)
        except RedisError as exc:
            self._metrics.store_errors.labels(op).inc()
            raise StoreError(f"store operation {op} failed: {exc}") from exc
        self._latency.get(op, self._latency["other"]).observe(time.perf_counter() - started)
        return result

    async def _enter_degraded(self) -> None:
        if self._degraded or not self.shared:
            return
        self._degraded = True
        self._metrics.store_degraded.set(1)
        for callback in self._on_degrade:
            await callback()
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._probe_until_back())

    async def _probe_until_back(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._primary.ping()
            except _UNREACHABLE:
                continue
            except RedisError:
                continue
            log.warning("store: Redis at %s is reachable again; leaving degraded mode", self.url)
            # Pooled connections from before the outage are dead; do not let them fail over
            # the next requests again.
            await self._primary.connection_pool.disconnect()
            self._degraded = False
            self._metrics.store_degraded.set(0)
            for callback in self._on_recover:
                try:
                    await callback()
                except (RedisError, *_UNREACHABLE) as exc:
                    log.warning("store: recovery step failed: %r", exc)
            return

    async def _script(
        self, name: str, client: Client, keys: list[str], args: list[Any], urgent: bool = True
    ) -> Any:
        return await self._batchers[id(client)].call(name, keys, args, urgent)

    # -- hot path ----------------------------------------------------------------------------

    async def admit(
        self, token_id: str | None, request_id: str, cost: int, lease_ms: int
    ) -> Admission:
        """Token check, quotas and the fleet's cooldowns, in one round trip."""
        keys = self.keys.quota_keys(token_id or "-")
        keys.append(self.keys.cooldowns)
        keys.append(self.keys.failures)

        async def call(client: Client) -> Any:
            refuse = "1" if (self._degraded and self._refuse_quotas_when_degraded) else "0"
            args = [request_id, cost, lease_ms, "1" if token_id else "0", refuse]
            return await self._script("admit", client, keys, args)

        raw = await self._run("admit", call)
        values = [int(v) for v in raw[:10]]
        n = int(raw[10])
        cooling_raw = raw[11 : 11 + 2 * n]
        return Admission(
            status=values[0],
            retry_after_ms=values[1],
            rpm_limit=values[2],
            rpm_remaining=values[3],
            rpm_reset_ms=values[4],
            tpm_limit=values[5],
            tpm_remaining=values[6],
            tpm_reset_ms=values[7],
            concurrency_limit=values[8],
            now_ms=values[9],
            cooling={
                cooling_raw[i].decode(): int(cooling_raw[i + 1])
                for i in range(0, len(cooling_raw), 2)
            },
            failing=frozenset(f.decode() for f in raw[11 + 2 * n :]),
        )

    async def settle(
        self, token_id: str | None, request_id: str, tokens_used: int, reset_fields: list[str]
    ) -> None:
        """Settle a request's tpm reservation, release its lease, reset failure counts."""
        tid = token_id or "-"
        keys = [
            self.keys.tpm(tid),
            self.keys.tpm_amounts(tid),
            self.keys.tpm_sum(tid),
            self.keys.concurrency(tid),
            self.keys.failures,
        ]

        async def call(client: Client) -> Any:
            return await self._script(
                "settle", client, keys, [request_id, tokens_used, *reset_fields], urgent=False
            )

        await self._run("settle", call)

    async def cool(
        self,
        field: str,
        *,
        retry_after_ms: int,
        fixed_ms: int,
        base_ms: int,
        cap_ms: int,
        floor_ms: int,
        ceiling_ms: int,
    ) -> tuple[int, int]:
        """Start or extend a cooldown; returns (cooling until ms, store now ms)."""
        keys = [self.keys.cooldowns, self.keys.failures]
        args = [field, retry_after_ms, fixed_ms, base_ms, cap_ms, floor_ms, ceiling_ms]

        async def call(client: Client) -> Any:
            return await self._script("cool", client, keys, args)

        until, now = await self._run("cool", call)
        return int(until), int(now)

    # -- shared state off the hot path -------------------------------------------------------

    async def cooldowns(self) -> tuple[dict[str, int], int]:
        """Every cooldown in force, and the store's clock in ms."""

        async def call(client: Client) -> tuple[dict[bytes, bytes], Any]:
            pipe = client.pipeline(transaction=False)
            pipe.hgetall(self.keys.cooldowns)
            pipe.time()
            result: list[Any] = await pipe.execute()
            return result[0], result[1]

        raw, clock = await self._run("other", call)
        now_ms = int(clock[0]) * 1000 + int(clock[1]) // 1000
        active = {k.decode(): int(v) for k, v in raw.items() if int(v) > now_ms}
        return active, now_ms

    async def add_stats(self, deltas: Mapping[str, int]) -> None:
        if not deltas:
            return

        async def call(client: Client) -> None:
            pipe = client.pipeline(transaction=False)
            for field, delta in deltas.items():
                pipe.hincrby(self.keys.stats, field, delta)
            await pipe.execute()

        await self._run("other", call)

    async def read_stats(self) -> dict[str, int]:
        async def call(client: Client) -> dict[bytes, bytes]:
            result: dict[bytes, bytes] = await client.hgetall(self.keys.stats)
            return result

        raw = await self._run("other", call)
        return {k.decode(): int(v) for k, v in raw.items()}

    async def get(self, key: str) -> bytes | None:
        async def call(client: Client) -> bytes | None:
            value: bytes | None = await client.get(key)
            return value

        return await self._run("other", call)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        async def call(client: Client) -> None:
            await client.set(key, value, px=int(ttl_s * 1000))

        await self._run("other", call)

    async def try_lock(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take a named lock unless someone else holds it (it expires after ``ttl_s``)."""

        async def call(client: Client) -> bool:
            return bool(
                await client.set(self.keys.lock(name), owner, nx=True, px=int(ttl_s * 1000))
            )

        return await self._run("other", call)

    # -- token registry ----------------------------------------------------------------------

    async def put_token(self, token_id: str, fields: Mapping[str, str], create: bool) -> bool:
        """Write a token record; with ``create`` only if it does not exist yet."""
        key = self.keys.token(token_id)

        async def call(client: Client) -> bool:
            if create and await client.exists(key):
                return False
            pipe = client.pipeline(transaction=True)
            pipe.hset(key, mapping=dict(fields))
            pipe.sadd(self.keys.tokens, token_id)
            await pipe.execute()
            return True

        return await self._run("other", call)

    async def put_local_tokens(self, records: list[Mapping[str, str]]) -> None:
        """Copy token records into the embedded copy, so auth and quotas work degraded."""
        pipe = self._local.pipeline(transaction=False)
        for record in records:
            pipe.hset(self.keys.token(record["id"]), mapping=dict(record))
            pipe.sadd(self.keys.tokens, record["id"])
        await pipe.execute()

    async def get_token(self, token_id: str) -> dict[str, str] | None:
        async def call(client: Client) -> dict[bytes, bytes]:
            result: dict[bytes, bytes] = await client.hgetall(self.keys.token(token_id))
            return result

        raw = await self._run("other", call)
        return {k.decode(): v.decode() for k, v in raw.items()} if raw else None

    async def all_tokens(self) -> list[dict[str, str]]:
        async def call(client: Client) -> list[dict[bytes, bytes]]:
            ids = sorted(await client.smembers(self.keys.tokens))
            pipe = client.pipeline(transaction=False)
            for token_id in ids:
                pipe.hgetall(self.keys.token(token_id.decode()))
            result: list[dict[bytes, bytes]] = await pipe.execute()
            return result

        rows = await self._run("other", call)
        return [{k.decode(): v.decode() for k, v in row.items()} for row in rows if row]

    async def token_usage(self, token_id: str) -> tuple[int, int, int]:
        """(requests, tokens, in flight) in the current windows of one token."""
        now_ms = int(time.time() * 1000)

        async def call(client: Client) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            pipe.zcount(self.keys.rpm(token_id), now_ms - 60000, "+inf")
            pipe.get(self.keys.tpm_sum(token_id))
            pipe.zcount(self.keys.concurrency(token_id), now_ms, "+inf")
            result: list[Any] = await pipe.execute()
            return result

        rpm, tpm, conc = await self._run("other", call)
        return int(rpm), int(tpm or 0), int(conc)

    # -- change notifications ----------------------------------------------------------------

    async def publish(self, message: str) -> None:
        """Tell every replica something changed (no-op for the embedded store)."""
        if not self.shared:
            return

        async def call(client: Client) -> None:
            await client.publish(self.keys.channel, message)

        await self._run("other", call)

    def subscribe(self, handler: Callable[[str], Awaitable[None]]) -> None:
        """Call ``handler(message)`` for every published message, reconnecting as needed."""
        if self.shared:
            self._listener = asyncio.create_task(self._listen(handler))

    async def _listen(self, handler: Callable[[str], Awaitable[None]]) -> None:
        while True:
            try:
                async with self._primary.pubsub() as pubsub:
                    await pubsub.subscribe(self.keys.channel)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            await handler(message["data"].decode())
            except (RedisError, *_UNREACHABLE) as exc:
                log.debug("store: subscription lost (%r); retrying", exc)
            await asyncio.sleep(1.0)
