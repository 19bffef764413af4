"""``Backend`` on Redis (standalone, Sentinel or Cluster): the only code that sends commands.

It connects lazily (``connection.py`` picks the client for the URL's topology, and tells a
Cluster behind a plain ``redis://``), so a replica whose Redis is down at start-up starts
degraded and connects when Redis answers.

Every atomic operation is one Lua script called by SHA; script calls made in one event-loop
turn travel as one pipeline (``batching.py``).  Keys come from ``keys.py`` with their hash
tags, so on a Cluster each call touches one slot and different owners spread over shards.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

import redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterDownError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.store.backend import (
    WINDOW_S,
    AdmitRequest,
    BreakerResult,
    BreakerRule,
    BreakerState,
    CoolRule,
    LedgerKey,
    MessageHandler,
    QuotaDecision,
    Settlement,
    Spend,
    Status,
    StoreError,
    StoreUnreachable,
    WindowUsage,
    WriteMode,
)
from service.store.batching import RedisClient, ScriptBatcher
from service.store.connection import RedisTarget, RedisTopology, RedisUrlError, connect
from service.store.keys import Keys, QuotaKeys
from service.store.periods import bounds
from service.store.scripts import load_sources

BUCKET_TOKEN_BITS = 33  # a window bucket is requests * 2^33 + tokens (lua/quota.lua)
RING_SLOTS = WINDOW_S  # a window's one-second slots, "b0" to "b59" (lua/quota.lua)

log = logging.getLogger("best.store")
_REDIS_PACKAGE = os.path.dirname(redis.__file__) + os.sep

# Ledger hash fields: token, team, provider, model and metric joined by a character no id
# holds (model ids are printable; this is a control character).
SEP = "\x1f"
LEDGER_FIELDS = ("requests", "prompt", "completion", "cost", "unpriced", "cached")

# CLUSTERDOWN: the shard has no usable master right now (a master restarting, a failover in
# progress) and redis-py's own retries are spent.  It is an outage of that shard, served
# degraded like any other, not an error to relay.
UNREACHABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterDownError,
    OSError,
    asyncio.TimeoutError,
)


_STATUSES = tuple(Status)  # by number: cheaper than Status(n) on the hot path


def _terms(admit: AdmitRequest) -> str:
    """An admission's terms as lua/quota.lua reads them: one comma-separated string of the
    token's and the team's limits, their budgets (-1: none) and periods, and the lease."""
    token, team = admit.limits, admit.team_limits
    budget, team_budget = admit.budget, admit.team_budget
    return (
        f"{token.rpm},{token.tpm},{token.max_concurrency},"
        f"{team.rpm},{team.tpm},{team.max_concurrency},"
        f"{_ms_or_none(budget.micro)},{budget.period:d},"
        f"{_ms_or_none(team_budget.micro)},{team_budget.period:d},{admit.lease_ms}"
    )


def _ms_or_none(value: int | None) -> int:
    """An optional amount as the Lua scripts take it: -1 for none."""
    return -1 if value is None else value


def _decode(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def _raised_in_client(exc: BaseException) -> bool:
    """Whether ``exc`` went through redis-py's own code on its way up."""
    tb = exc.__traceback__
    while tb is not None:
        if _REDIS_PACKAGE in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


class RedisBackend:
    def __init__(
        self, target: RedisTarget | RedisClient, keys: Keys, quota_bound_s: float | None = None
    ) -> None:
        """``quota_bound_s``: each batch of quota calls, retries included, fails with
        ``StoreUnreachable`` when Redis has not answered within it."""
        self.quota_bound_s = quota_bound_s
        self._keys = keys
        self._sources = load_sources()
        self._topology: RedisTopology | None = None
        self._client: RedisClient | None = None
        self._scripts: ScriptBatcher | None = None
        self.kind: str
        if isinstance(target, RedisTarget):
            self._target: RedisTarget | None = target
            self.kind = target.kind
        else:  # an already connected client (tests)
            self._target = None
            self.kind = "cluster" if isinstance(target, RedisCluster) else "standalone"
            self._use(target)

    def _use(self, client: RedisClient) -> None:
        self._client = client
        self._scripts = ScriptBatcher(client, self._sources, self.quota_bound_s)

    async def _connect(self) -> RedisClient:
        if self._client is not None:
            return self._client
        assert self._target is not None
        try:
            topology = await connect(self._target)
        except UNREACHABLE as exc:
            raise StoreUnreachable(str(exc) or type(exc).__name__) from exc
        except (RedisError, RedisUrlError) as exc:
            raise StoreError(str(exc)) from exc
        self._topology = topology
        self.kind = topology.kind
        self._use(topology.client)
        return topology.client

    async def _do(self, coro: Any) -> Any:
        """Await one client call, translating redis-py's errors into the store's."""
        try:
            return await coro
        except UNREACHABLE as exc:
            raise StoreUnreachable(str(exc) or type(exc).__name__) from exc
        except RedisError as exc:
            raise StoreError(str(exc)) from exc
        except (AttributeError, TypeError, RuntimeError) as exc:
            if not _raised_in_client(exc):
                raise
            # redis-py can trip over its own state while a node is replaced: a connection
            # closed under a Cluster pipeline ("'NoneType' object has no attribute
            # 'writelines'"; redis/redis-py#3835), or a Sentinel reconnect writing to a
            # transport already closed (uvloop's RuntimeError): a failed call, not our bug.
            log.warning("store: the Redis client failed mid-call (%r)", exc)
            raise StoreUnreachable(f"Redis client error: {exc}") from exc

    @property
    def _c(self) -> RedisClient:
        """The client; only after ``ping`` connected it (the Store pings first)."""
        if self._client is None:
            raise StoreUnreachable("not connected yet")
        return self._client

    def _script(
        self, name: str, keys: list[str], args: list[Any], urgent: bool = True
    ) -> Awaitable[Any]:
        """The script call, batched (``store/batching.py``), to await."""
        if self._scripts is None:
            raise StoreUnreachable("not connected yet")
        return self._do(self._scripts.call(name, keys, args, urgent))

    async def ping(self) -> None:
        client = await self._connect()
        await self._do(client.ping())

    async def close(self) -> None:
        if self._topology is not None:
            await self._topology.aclose()
        elif self._client is not None:
            await self._c.aclose()

    # -- quotas ------------------------------------------------------------------------------

    async def quota(
        self, keys: QuotaKeys, settle: Sequence[Settlement], admit: AdmitRequest | None
    ) -> QuotaDecision:
        # The call's shape first (its settlements, and whether it admits and reserves), then
        # each settlement's correction of its bucket, then the admission (lua/quota.lua).
        shape = 0 if admit is None else 2 if admit.reserve else 1
        args: list[Any] = [4 * len(settle) + shape]
        for s in settle:
            # int(): redis-py would send an IntEnum's repr
            args += [s.entry, s.second, s.correction, int(s.cost)]
        if admit is not None:
            args += [admit.entry, admit.cost, _terms(admit)]
            if admit.reserve:
                args.append(admit.reserve)
        raw = await self._script("quota", keys.as_list(), args, urgent=admit is not None)
        if admit is None:  # the script answers 0: settled (its clock read by no one)
            return QuotaDecision(status=Status.ADMITTED, retry_ms=0, now_ms=int(time.time() * 1000))
        status, retry, now, side, rpm_left, tpm_left, budget_left, conc_left = (int(v) for v in raw)
        return QuotaDecision(
            status=_STATUSES[status],
            retry_ms=retry,
            now_ms=now,
            team_side=side == 1,
            rpm_remaining=None if rpm_left < 0 else rpm_left,
            tpm_remaining=None if tpm_left < 0 else tpm_left,
            budget_remaining=None if budget_left < 0 else budget_left,
            concurrency_remaining=None if conc_left < 0 else conc_left,
        )

    async def renew(self, leases: Mapping[str, Sequence[str]], until_ms: int) -> None:
        if not leases:
            return

        async def run() -> None:
            pipe = self._c.pipeline(transaction=False)
            for key, entries in leases.items():
                # XX: a lease that was settled (or expired) meanwhile is not brought back.
                pipe.zadd(key, dict.fromkeys(entries, until_ms), xx=True)
                pipe.pexpireat(key, until_ms + 1000, gt=True)
            await pipe.execute()

        await self._do(run())

    async def spend(self, budget_key: str, period: int) -> Spend:
        raw = await self._do(self._c.hmget(budget_key, ["k", "p", "s", "r"]))
        kind, start, spent, reserved = (int(v) if v is not None else None for v in raw)
        now_start, _ = bounds(period, int(time.time() * 1000))
        current = kind == period and start == now_start
        return Spend((spent or 0) if current else 0, reserved or 0, now_start)

    async def usage(self, keys: QuotaKeys) -> WindowUsage:
        # The buckets of the window, not the counts "rs"/"ts": those still include the buckets
        # that left it until the token's next visit drops them.  Slot i holds the bucket of
        # the one second in [o, o + 59] that is i modulo 60 (lua/quota.lua).
        now_ms = int(time.time() * 1000)
        now_s = now_ms // 1000

        async def run() -> list[Any]:
            pipe = self._c.pipeline(transaction=False)
            pipe.hmget(keys.token_windows, ["o", *(f"b{i}" for i in range(RING_SLOTS))])
            # leases not expired, below LIVE (lua/quota.lua)
            pipe.zcount(keys.token_leases, f"({now_ms}", "(+inf")
            result: list[Any] = await pipe.execute()
            return result

        (oldest, *slots), in_flight = await self._do(run())
        requests = tokens = 0
        if oldest is not None:
            o = int(oldest)
            for i, value in enumerate(slots):
                second = o + (i - o) % RING_SLOTS
                if value is not None and now_s - WINDOW_S < second <= now_s:
                    packed = int(value)
                    requests += packed >> BUCKET_TOKEN_BITS
                    tokens += packed & ((1 << BUCKET_TOKEN_BITS) - 1)
        return WindowUsage(requests=requests, tokens=tokens, in_flight=int(in_flight))

    # -- circuit breakers and provider cooldowns (lua/breaker_*.lua) ----------------------

    async def breaker_cool(self, field: str, rule: CoolRule) -> tuple[int, int]:
        args = [
            field,
            _ms_or_none(rule.retry_after_ms),
            _ms_or_none(rule.fixed_ms),
            rule.base_ms,
            rule.cap_ms,
            rule.floor_ms,
            rule.ceiling_ms,
        ]
        until, now = await self._script(
            "breaker_cool", [self._keys.cooldowns, self._keys.failures], args
        )
        return int(until), int(now)

    async def breaker_state(self) -> BreakerState:
        k = self._keys
        raw = await self._script("breaker_state", [k.cooldowns, k.failures, k.breakers], [])
        n, failing = int(raw[1]), int(raw[2])
        pairs = raw[3 : 3 + 2 * n]
        rest = raw[3 + 2 * n :]
        return BreakerState(
            cooling={pairs[i].decode(): int(pairs[i + 1]) for i in range(0, len(pairs), 2)},
            failing=frozenset(f.decode() for f in rest[:failing]),
            now_ms=int(raw[0]),
            tripped=frozenset(f.decode() for f in rest[failing:]),
        )

    def _breaker_keys(self) -> list[str]:
        k = self._keys
        return [k.cooldowns, k.failures, k.breakers, k.probes]

    async def breaker_fail(self, field: str, rule: BreakerRule, trip: bool) -> BreakerResult:
        args = [
            field,
            rule.threshold,
            1 if trip else 0,
            rule.open_ms,
            rule.max_open_ms,
            _ms_or_none(rule.retry_after_ms),
            rule.floor_ms,
            rule.ceiling_ms,
        ]
        until, now, opened = await self._script("breaker_fail", self._breaker_keys(), args)
        return BreakerResult(int(until), int(now), int(opened) == 1)

    async def breaker_probe(self, field: str, owner: str, lease_ms: int) -> bool:
        k = self._keys
        keys = [k.cooldowns, k.breakers, k.probes]
        return int(await self._script("breaker_probe", keys, [field, owner, lease_ms])) == 1

    async def breaker_release(self, field: str, owner: str) -> None:
        await self._script("breaker_release", [self._keys.probes], [field, owner], urgent=False)

    async def breaker_close(self, fields: Sequence[str]) -> int:
        if not fields:
            return 0
        return int(await self._script("breaker_close", self._breaker_keys(), list(fields)))

    # -- statistics, caches, locks -----------------------------------------------------------

    async def add_stats(self, deltas: Mapping[str, int]) -> None:
        if not deltas:
            return

        async def run() -> None:
            pipe = self._c.pipeline(transaction=False)
            for field, delta in deltas.items():
                pipe.hincrby(self._keys.stats, field, delta)
            await pipe.execute()

        await self._do(run())

    async def read_stats(self) -> dict[str, int]:
        raw = await self._do(self._c.hgetall(self._keys.stats))
        return {k.decode(): int(v) for k, v in raw.items()}

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._do(self._c.get(key))
        return value

    async def set(self, key: str, value: bytes, ttl_ms: int) -> None:
        await self._do(self._c.set(key, value, px=max(1, ttl_ms)))

    async def try_lock(self, key: str, owner: str, ttl_ms: int) -> bool:
        return bool(await self._do(self._c.set(key, owner, nx=True, px=max(1, ttl_ms))))

    async def unlock(self, key: str, owner: str) -> None:
        # Only the owner's lock goes; an expired-and-retaken lock belongs to someone else.
        if await self._do(self._c.get(key)) == owner.encode():
            await self._do(self._c.delete(key))

    # -- registry ----------------------------------------------------------------------------

    async def put_record(
        self, kind: str, record_id: str, fields: Mapping[str, str], mode: WriteMode
    ) -> bool:
        keys = [self._keys.record(kind, record_id), self._keys.index(kind), self._keys.version]
        args: list[Any] = [mode, record_id]
        for name, value in fields.items():
            args += [name, value]
        topology = self._topology
        if topology is None or topology.kind != "sentinel":
            return bool(await self._script("put_record", keys, args))
        return bool(await self._do(self._put_replicated(topology, keys, args)))

    async def _put_replicated(
        self, topology: RedisTopology, keys: list[str], args: list[Any]
    ) -> bool:
        """On Sentinel a registry write must not be answered 201 and then lost.  Replication
        is asynchronous: a write that reaches the old master while a replica is promoted, or
        after the promotion but before this replica follows, is lost when the old master is
        demoted.  So the write waits (``WAIT``, on the connection that wrote) for a replica;
        if none acknowledges and the sentinels report a failover in progress, or name another
        master than the one written to, it is refused (503, retry).  Otherwise (no replica
        up, or one lagging with no failover) the master's word is enough.  A refusal does not
        make the replica degraded: the store answers, it cannot promise this write yet."""
        written_to = topology.master_address()
        pipe = self._c.pipeline(transaction=False)
        pipe.eval(self._sources["put_record"], len(keys), *keys, *args)
        pipe.execute_command("WAIT", 1, max(1, int(topology.target.timeout_s * 250)))
        written, acknowledged = await pipe.execute()
        if int(acknowledged) < 1 and await topology.failing_over(written_to):
            raise StoreError("no replica acknowledged the write during a failover; retry")
        return bool(written)

    async def get_record(self, kind: str, record_id: str) -> dict[str, str] | None:
        raw = await self._do(self._c.hgetall(self._keys.record(kind, record_id)))
        return _decode(raw) if raw else None

    async def all_records(self, kind: str) -> list[dict[str, str]]:
        async def run() -> list[Any]:
            members = await self._c.smembers(self._keys.index(kind))
            ids = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
            pipe = self._c.pipeline(transaction=False)
            for record_id in ids:
                pipe.hgetall(self._keys.record(kind, record_id))
            result: list[Any] = await pipe.execute()
            return result

        rows = await self._do(run())
        return [_decode(row) for row in rows if row]

    async def registry_version(self) -> int | None:
        raw = await self._do(self._c.get(self._keys.version))
        return None if raw is None else int(raw)

    # -- usage ledger ------------------------------------------------------------------------

    async def add_usage(self, rows: Mapping[LedgerKey, Sequence[int]]) -> None:
        async def run() -> None:
            pipe = self._c.pipeline(transaction=False)
            for (day, *names), values in rows.items():
                key, row = self._keys.ledger(day), SEP.join(names)
                for metric, value in zip(LEDGER_FIELDS, values, strict=True):
                    if value:
                        pipe.hincrby(key, f"{row}{SEP}{metric}", value)
            await pipe.execute()

        if rows:
            await self._do(run())

    async def read_usage(self, days: Sequence[str]) -> list[tuple[LedgerKey, list[int]]]:
        async def run() -> list[Any]:
            pipe = self._c.pipeline(transaction=False)
            for day in days:
                pipe.hgetall(self._keys.ledger(day))
            result: list[Any] = await pipe.execute()
            return result

        out: dict[LedgerKey, list[int]] = {}
        for day, raw in zip(days, await self._do(run()), strict=True):
            for field, value in raw.items():
                token, team, provider, model, metric = field.decode().split(SEP)
                row = out.setdefault((day, token, team, provider, model), [0] * len(LEDGER_FIELDS))
                row[LEDGER_FIELDS.index(metric)] = int(value)
        return list(out.items())

    # -- change notifications ----------------------------------------------------------------

    async def publish(self, message: str) -> None:
        await self._do(self._c.publish(self._keys.channel, message))

    async def listen(self, handler: MessageHandler) -> None:
        while True:
            try:
                await self._listen_until_moved(handler)
                continue  # the master moved: subscribe on the new one at once
            except (RedisError, StoreError, *UNREACHABLE) as exc:
                log.debug("store: subscription lost (%r); retrying", exc)
            await asyncio.sleep(1.0)

    async def _listen_until_moved(self, handler: MessageHandler) -> None:
        """Relay messages until the subscription breaks (raises) or its server is no longer
        the master (returns): after a Sentinel failover the old master, still up, does not
        see what is published on the new one."""
        topology = self._topology
        pubsub = await topology.pubsub() if topology is not None else self._c.pubsub()
        try:
            await pubsub.subscribe(self._keys.channel)
            while topology is None or topology.on_master(pubsub):
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.25)
                if message is not None and message["type"] == "message":
                    await handler(message["data"].decode())
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
