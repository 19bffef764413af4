"""The Redis window's ring of one-second slots (lua/quota.lua): seconds leave the window
exactly, and an owner visited about once a second ages its window without a command of its own;
a settlement travelling alone touches only what it changes; leases that expired unsettled go.

These windows are written directly, as they would stand after a token's earlier visits: a test
cannot wait a minute for Redis's clock.  Slot i holds the bucket (requests * 2^33 + tokens) of
the one second in [o, o + 59] that is i modulo 60: the window is [now - 59, now]."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from service.store.backend import (
    AdmitRequest,
    Charge,
    RateLimits,
    Settlement,
    Status,
)
from service.store.connection import parse_redis_url
from service.store.keys import Keys, QuotaKeys
from service.store.redis_backend import RedisBackend
from tests.harness import RedisServer

PACK = 2**33


def bucket(requests: int, tokens: int) -> int:
    return requests * PACK + tokens


def slot(second: int) -> str:
    return f"b{second % 60}"


async def _early_in_a_second(client: Redis) -> int:
    """Redis's current second, with most of it still ahead (so a test's calls share it)."""
    while True:
        seconds, micros = (int(v) for v in await client.time())
        if micros < 600_000:
            return seconds
        await asyncio.sleep((1_000_000 - micros) / 1e6 + 0.01)


async def _run(
    server: RedisServer, prefix: str, body: Any
) -> tuple[Any, dict[str, int], dict[str, int]]:
    """Run ``body(backend, client, keys, now_s)``; return its answer, the window's fields after
    it and the commands Redis ran meanwhile (by name)."""
    keys = Keys(prefix)
    backend = RedisBackend(parse_redis_url(server.url), keys)
    client = Redis.from_url(server.url)
    try:
        await backend.ping()
        now_s = await _early_in_a_second(client)
        q = keys.quota("tok", None)
        answer = await body(backend, client, q, now_s)
        fields = {k.decode(): int(v) for k, v in (await client.hgetall(q.token_windows)).items()}
        stats = await client.info("commandstats")
        ran = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
        return answer, fields, ran
    finally:
        await client.aclose()
        await backend.close()


async def _stale_slot(client: Redis, q: QuotaKeys, now: int) -> Settlement:
    """A window whose o is 61 s old, its only bucket (2 requests, 200 tokens) that of now - 61,
    in the slot of now - 1; and the settlement, its lease held, of a request of now - 1."""
    await client.hset(
        q.token_windows,
        mapping={"o": now - 61, "rs": 2, "ts": 200, "c": 1, slot(now - 61): bucket(2, 200)},
    )
    await client.zadd(q.token_leases, {"~": float("inf"), "e1": (now + 60) * 1000})
    return Settlement("e1", now - 1, 100, 10, Charge.NOTHING)


def test_a_window_visited_once_a_second_ages_without_a_command(
    redis_server: RedisServer,
) -> None:
    """The second that leaves is the one in now's slot, read with the window anyway: its counts
    leave the window, and the slot takes now's bucket in the one HSET that writes it back;
    a settlement of the second before is corrected in its own slot."""
    limits = RateLimits(2, 0, 10)  # rpm 2: the 5 requests of 60 s ago must have left

    async def body(backend: RedisBackend, client: Redis, q: QuotaKeys, now: int) -> Any:
        await client.hset(
            q.token_windows,
            mapping={
                "o": now - 60,
                "rs": 6,
                "ts": 600,
                "c": 1,
                slot(now - 60): bucket(5, 500),  # now's slot, holding now - 60
                slot(now - 1): bucket(1, 100),
            },
        )
        await client.zadd(q.token_leases, {"~": float("inf"), "e1": (now + 60) * 1000})
        await client.config_resetstat()
        done = Settlement("e1", now - 1, 100, 40, Charge.NOTHING)
        return await backend.quota(q, [done], AdmitRequest("e2", 30, 10_000, limits))

    decision, fields, ran = asyncio.run(_run(redis_server, "test-ring-steady", body))
    assert (decision.status, decision.rpm_remaining) == (Status.ADMITTED, 0)
    assert fields["o"] == fields["x"] - 59  # now - 59
    assert (fields["rs"], fields["ts"]) == (2, 40 + 30)
    now = fields["x"]
    assert fields[slot(now)] == bucket(1, 30)
    assert fields[slot(now - 1)] == bucket(1, 40)
    assert "hdel" not in ran
    assert ran["hmget"] == 1  # the window's one read
    assert ran["hset"] == 1  # and its one write


def test_seconds_left_behind_by_a_gap_leave_the_window_and_their_slots_empty(
    redis_server: RedisServer,
) -> None:
    """After a gap every second older than the window leaves it, whichever slot it sat in; the
    next refusal's wait counts only what is left, and usage (`GET /admin/tokens`) agrees."""
    limits = RateLimits(2, 0, 0)

    async def body(backend: RedisBackend, client: Redis, q: QuotaKeys, now: int) -> Any:
        await client.hset(
            q.token_windows,
            mapping={
                "o": now - 70,
                "rs": 6,
                "ts": 60,
                slot(now - 70): bucket(3, 30),
                slot(now - 62): bucket(2, 20),
                slot(now - 12): bucket(1, 10),  # leaves when now + 48 begins
            },
        )
        first = await backend.quota(q, [], AdmitRequest("a", 5, 0, limits))
        second = await backend.quota(q, [], AdmitRequest("b", 5, 0, limits))
        return first, second, await backend.usage(q)

    (first, second, usage), fields, _ = asyncio.run(_run(redis_server, "test-ring-gap", body))
    assert first.status == Status.ADMITTED
    assert second.status == Status.OVER_RPM
    now = second.now_ms // 1000
    assert 47_000 < second.retry_ms <= 48_000  # the bucket of now - 12, not the emptied slots
    assert (fields["o"], fields["rs"], fields["ts"]) == (now - 59, 2, 15)
    assert fields[slot(now - 70)] == 0 and fields[slot(now - 62)] == 0
    assert fields[slot(now - 12)] == bucket(1, 10)
    assert fields[slot(now)] == bucket(1, 5)
    assert usage == (2, 15, 0)


def test_a_slot_whose_second_left_is_not_corrected_as_its_new_second(
    redis_server: RedisServer,
) -> None:
    """A settlement names its admission second; when that second's slot still holds an older
    second that leaves now, the correction is not applied to it (nor counted): a bucket the
    window no longer holds has nothing left to correct."""
    limits = RateLimits(100, 1000, 10)

    async def body(backend: RedisBackend, client: Redis, q: QuotaKeys, now: int) -> Any:
        done = await _stale_slot(client, q, now)
        return await backend.quota(q, [done], AdmitRequest("e2", 7, 10_000, limits))

    decision, fields, _ = asyncio.run(_run(redis_server, "test-ring-stale", body))
    now = decision.now_ms // 1000
    assert decision.status == Status.ADMITTED
    assert (fields["rs"], fields["ts"], fields["c"]) == (1, 7, 1)
    assert fields[slot(now - 1)] == 0


def test_a_settlement_alone_reads_and_writes_only_what_it_changes(
    redis_server: RedisServer,
) -> None:
    """A token's settlement that travels alone releases its lease and corrects its bucket and
    the window's tokens with one ZREM, one HMGET and one HSET; the window is not aged by it (the
    next admission does that).  Sent again, it finds no lease and changes nothing."""

    async def body(backend: RedisBackend, client: Redis, q: QuotaKeys, now: int) -> Any:
        # o is a second behind (an admission would age the window), and now - 1's bucket is
        # in its slot
        await client.hset(
            q.token_windows,
            mapping={"o": now - 60, "rs": 1, "ts": 100, "c": 2, "x": now},
        )
        await client.hset(q.token_windows, slot(now - 1), bucket(1, 100))
        await client.zadd(q.token_leases, {"~": float("inf"), "e1": (now + 60) * 1000})
        await client.config_resetstat()
        done = Settlement("e1", now - 1, 100, 40, Charge.NOTHING)
        first = await backend.quota(q, [done], None)
        after_first = await client.hgetall(q.token_windows)
        second = await backend.quota(q, [done], None)
        return first, second, after_first

    (first, second, after_first), fields, ran = asyncio.run(
        _run(redis_server, "test-ring-alone", body)
    )
    now = first.now_ms // 1000
    assert first.status == second.status == Status.ADMITTED  # 0: only settled
    assert (fields["ts"], fields[slot(now - 1)], fields["c"]) == (40, bucket(1, 40), 1)
    assert (fields["o"], fields["rs"]) == (now - 60, 1)  # not aged
    assert {k.decode(): int(v) for k, v in after_first.items()} == fields  # the retry: nothing
    assert (ran["zrem"], ran["hmget"], ran["hset"]) == (2, 1, 1)
    assert "pexpire" not in ran and "zmscore" not in ran


def test_a_settlement_alone_leaves_a_stale_slot_and_a_missing_window_alone(
    redis_server: RedisServer,
) -> None:
    """Alone, a settlement corrects its slot only when the window's o shows the slot holds its
    second's bucket (o >= second - 59), and writes nothing when the window is gone: no key is
    made without an expiry."""

    async def body(backend: RedisBackend, client: Redis, q: QuotaKeys, now: int) -> Any:
        await backend.quota(q, [await _stale_slot(client, q, now)], None)
        other = Keys("test-ring-gone").quota("gone", None)
        await client.zadd(other.token_leases, {"~": float("inf"), "e2": (now + 60) * 1000})
        await backend.quota(other, [Settlement("e2", now, 100, 10, Charge.NOTHING)], None)
        return await client.exists(other.token_windows), await client.zcard(other.token_leases)

    (gone, leases), fields, _ = asyncio.run(_run(redis_server, "test-ring-alone-stale", body))
    now = fields["o"] + 61
    assert (fields["rs"], fields["ts"], fields[slot(now - 1)]) == (2, 200, bucket(2, 200))
    assert fields["c"] == 0  # its lease was released all the same
    assert (gone, leases) == (0, 1)  # no window made; the lease released (LIVE stays)


def test_leases_that_expired_unsettled_are_dropped_with_the_windows_refresh(
    redis_server: RedisServer,
) -> None:
    """A token without a concurrency limit or a budget never recounts its leases; the ones that
    expired unsettled are dropped when its windows' expiry is pushed out (every 10 s), so they
    do not pile up while it stays busy.  In between, no command looks for them."""
    limits = RateLimits(0, 1000, 0)

    async def body(backend: RedisBackend, client: Redis, q: QuotaKeys, now: int) -> Any:
        first = await backend.quota(q, [], AdmitRequest("a", 10, 10_000, limits))
        expired = {f"dead{i}": first.now_ms - 1000 for i in range(5)}
        await client.zadd(q.token_leases, expired)  # five requests whose replica died
        await client.hset(q.token_windows, "c", 7)  # counted with them (never below)
        await client.config_resetstat()
        await backend.quota(q, [], AdmitRequest("b", 10, 10_000, limits))
        between = await client.zcard(q.token_leases)
        ran = await client.info("commandstats")
        await client.hset(q.token_windows, "x", now - 10)  # as if 10 s later
        await backend.quota(q, [], AdmitRequest("c", 10, 10_000, limits))
        return between, ran, await client.zcard(q.token_leases)

    (between, ran, after), fields, _ = asyncio.run(_run(redis_server, "test-orphans", body))
    assert between == 1 + 2 + 5  # LIVE, a and b, the five expired ones
    assert "cmdstat_zrangebyscore" not in ran and "cmdstat_zremrangebyscore" not in ran
    assert after == 1 + 3  # LIVE, a, b and c
    assert fields["c"] == 7 + 1 - 5 + 1  # the five dropped from the count as well
