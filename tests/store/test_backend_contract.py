"""The store contract, on every backend: the same answers from memory and from Redis."""

from __future__ import annotations

import asyncio

from service.store.backend import (
    ADMITTED,
    OVER_CONCURRENCY,
    OVER_RPM,
    OVER_TPM,
    AdmitRequest,
    Backend,
    BreakerRule,
    Settlement,
)
from service.store.keys import Keys
from tests.store.conftest import BackendRunner


def test_rpm_admits_exactly_the_limit_then_refuses_with_a_wait(
    run_backend: BackendRunner,
) -> None:
    async def body(backend: Backend, keys: Keys) -> list[tuple[int, int]]:
        q = keys.quota("tok", None)
        out = []
        for i in range(7):
            d = await backend.quota(q, [], AdmitRequest(f"e{i}", 0, 0, (5, 0, 0, 0, 0, 0)))
            out.append((d.status, d.retry_ms))
        return out

    decisions = run_backend(body)
    assert [s for s, _ in decisions] == [ADMITTED] * 5 + [OVER_RPM] * 2
    assert all(55_000 <= retry <= 61_000 for _, retry in decisions[5:])


def test_concurrency_lease_is_released_by_settlement_once(run_backend: BackendRunner) -> None:
    async def body(backend: Backend, keys: Keys) -> list[int]:
        q = keys.quota("tok", None)
        limits = (0, 0, 1, 0, 0, 0)
        first = await backend.quota(q, [], AdmitRequest("a", 0, 10_000, limits))
        second = await backend.quota(q, [], AdmitRequest("b", 0, 10_000, limits))
        done = Settlement("a", first.now_ms // 1000, 0, 0)
        third = await backend.quota(q, [done], AdmitRequest("c", 0, 10_000, limits))
        # Settling "a" again must not free "c"'s lease.
        fourth = await backend.quota(q, [done], AdmitRequest("d", 0, 10_000, limits))
        return [first.status, second.status, third.status, fourth.status]

    assert run_backend(body) == [ADMITTED, OVER_CONCURRENCY, ADMITTED, OVER_CONCURRENCY]


def test_tpm_reservation_is_replaced_by_real_usage(run_backend: BackendRunner) -> None:
    async def body(backend: Backend, keys: Keys) -> list[int]:
        q = keys.quota("tok", None)
        limits = (0, 100, 0, 0, 0, 0)
        first = await backend.quota(q, [], AdmitRequest("a", 80, 10_000, limits))
        refused = await backend.quota(q, [], AdmitRequest("b", 30, 10_000, limits))
        used = Settlement("a", first.now_ms // 1000, 80, 10)
        admitted = await backend.quota(q, [used], AdmitRequest("c", 30, 10_000, limits))
        _, tokens, in_flight = await backend.usage(q)
        return [first.status, refused.status, admitted.status, tokens, in_flight]

    assert run_backend(body) == [ADMITTED, OVER_TPM, ADMITTED, 40, 1]


def test_team_limit_binds_every_token_of_the_team(run_backend: BackendRunner) -> None:
    async def body(backend: Backend, keys: Keys) -> list[tuple[int, bool]]:
        out = []
        for i in range(4):
            q = keys.quota(f"tok{i % 2}", "team")
            d = await backend.quota(q, [], AdmitRequest(f"e{i}", 0, 0, (0, 0, 0, 3, 0, 0)))
            out.append((d.status, d.team_side))
        return out

    assert run_backend(body) == [(ADMITTED, False)] * 3 + [(OVER_RPM, True)]


def test_registry_modes_and_version(run_backend: BackendRunner) -> None:
    async def body(backend: Backend, keys: Keys) -> list[object]:
        before = await backend.registry_version()
        created = await backend.put_record("token", "t1", {"id": "t1", "updated_ms": "5"}, "create")
        again = await backend.put_record("token", "t1", {"id": "t1", "updated_ms": "9"}, "create")
        older = await backend.put_record("token", "t1", {"id": "t1", "updated_ms": "4"}, "newest")
        newer = await backend.put_record(
            "token", "t1", {"id": "t1", "name": "n", "updated_ms": "6"}, "newest"
        )
        missing = await backend.put_record("token", "t2", {"id": "t2"}, "update")
        record = await backend.get_record("token", "t1")
        return [
            before,
            created,
            again,
            older,
            newer,
            missing,
            record,
            await backend.all_records("token"),
        ]

    before, created, again, older, newer, missing, record, rows = run_backend(body)
    assert before is None
    assert (created, again, older, newer, missing) == (True, False, False, True, False)
    assert record == {"id": "t1", "name": "n", "updated_ms": "6"}
    assert rows == [record]


def test_cooldowns_extend_never_shorten(run_backend: BackendRunner) -> None:
    from service.store.backend import CoolRule

    async def body(backend: Backend, keys: Keys) -> tuple[int, int, int]:
        long = CoolRule(60_000, -1, 10_000, 300_000, 1_000, 3_600_000)
        short = CoolRule(2_000, -1, 10_000, 300_000, 1_000, 3_600_000)
        first, now = await backend.cool("p|x", long)
        second, _ = await backend.cool("p|x", short)
        state = await backend.routing_state()
        return first - now, second - first, state.cooling["p|x"] - first

    duration, extension, stored = run_backend(body)
    assert 59_000 <= duration <= 60_000
    assert extension == 0 and stored == 0


def test_response_affinity_is_kept_for_thirty_days_under_its_own_key(
    run_backend: BackendRunner,
) -> None:
    """What routing/conversations.py stores: id -> provider and model, 30 days, one key per
    id (its own hash tag, so ids spread over a Cluster's shards)."""
    from service.routing.conversations import TTL_S

    async def body(backend: Backend, keys: Keys) -> tuple[bytes | None, bytes | None, str]:
        key = keys.response("resp_abc-1")
        await backend.set(key, b'["beta","m"]', TTL_S * 1000)
        other = await backend.get(keys.response("resp_abc-2"))
        return await backend.get(key), other, key

    stored, other, key = run_backend(body)
    assert stored == b'["beta","m"]' and other is None
    assert key.endswith(":{resp:resp_abc-1}")
    assert TTL_S == 30 * 86400


# -- circuit breakers ------------------------------------------------------------------------

PAIR = "m|prov|model"


def _rule(threshold: int = 3, open_ms: int = 10_000, retry_after_ms: int = -1) -> BreakerRule:
    return BreakerRule(threshold, open_ms, 300_000, retry_after_ms)


async def _until_half_open(backend: Backend, field: str) -> None:
    """Wait (store time passes) until the breaker's open period is over."""
    state = await backend.routing_state()
    until = state.cooling.get(field)
    if until is not None:
        await asyncio.sleep((until - state.now_ms) / 1000 + 0.005)


def test_breaker_opens_on_the_threshold_th_consecutive_failure(run_backend: BackendRunner) -> None:
    async def body(backend: Backend, keys: Keys) -> list[object]:
        results = [await backend.breaker_fail(PAIR, _rule(), trip=False) for _ in range(3)]
        state = await backend.routing_state()
        # A failure of an attempt that began before the opening changes nothing.
        late = await backend.breaker_fail(PAIR, _rule(), trip=False)
        return [results, state, late]

    (first, second, third), state, late = run_backend(body)
    assert (first.open_until_ms, second.open_until_ms) == (0, 0)
    assert not first.opened and not second.opened
    assert third.opened and 9_000 <= third.open_until_ms - third.now_ms <= 10_000
    assert state.cooling[PAIR] == third.open_until_ms
    assert PAIR in state.tripped and PAIR in state.failing
    assert not late.opened and late.open_until_ms == third.open_until_ms


def test_a_success_resets_the_consecutive_count(run_backend: BackendRunner) -> None:
    async def body(backend: Backend, keys: Keys) -> tuple[bool, int]:
        for _ in range(2):
            await backend.breaker_fail(PAIR, _rule(), trip=False)
        closed = await backend.breaker_close([PAIR])
        after = [await backend.breaker_fail(PAIR, _rule(), trip=False) for _ in range(2)]
        return any(r.opened for r in after), closed

    opened, closed = run_backend(body)
    assert not opened
    assert closed == 0  # it was never open: nothing to close


def test_half_open_allows_one_probe_then_a_failure_reopens_twice_as_long(
    run_backend: BackendRunner,
) -> None:
    async def body(backend: Backend, keys: Keys) -> list[object]:
        rule = _rule(threshold=1, open_ms=100)
        first = await backend.breaker_fail(PAIR, rule, trip=False)
        blocked_while_open = await backend.breaker_probe(PAIR, "a", 5_000)
        await _until_half_open(backend, PAIR)
        claims = [
            await backend.breaker_probe(PAIR, "a", 5_000),
            await backend.breaker_probe(PAIR, "b", 5_000),
            await backend.breaker_probe(PAIR, "a", 5_000),  # the holder may ask again
        ]
        # The rate evidence predates the opening: no trip while half-open.
        tripped = await backend.breaker_fail(PAIR, rule, trip=True)
        reopened = await backend.breaker_fail(PAIR, rule, trip=False)
        return [first, blocked_while_open, claims, tripped, reopened]

    first, blocked_while_open, claims, tripped, reopened = run_backend(body)
    assert first.opened and 90 <= first.open_until_ms - first.now_ms <= 100
    assert blocked_while_open is False
    assert claims == [True, False, True]
    assert not tripped.opened and tripped.open_until_ms == 0
    assert reopened.opened and 190 <= reopened.open_until_ms - reopened.now_ms <= 200


def test_released_probe_can_be_claimed_by_another(run_backend: BackendRunner) -> None:
    async def body(backend: Backend, keys: Keys) -> list[bool]:
        rule = _rule(threshold=1, open_ms=50)
        await backend.breaker_fail(PAIR, rule, trip=False)
        await _until_half_open(backend, PAIR)
        held = await backend.breaker_probe(PAIR, "a", 5_000)
        await backend.breaker_release(PAIR, "b")  # not b's: stays with a
        still_held = not await backend.breaker_probe(PAIR, "b", 5_000)
        await backend.breaker_release(PAIR, "a")
        taken = await backend.breaker_probe(PAIR, "b", 5_000)
        return [held, still_held, taken]

    assert run_backend(body) == [True, True, True]


def test_expired_probe_lease_frees_the_probe(run_backend: BackendRunner) -> None:
    async def body(backend: Backend, keys: Keys) -> list[bool]:
        await backend.breaker_fail(PAIR, _rule(threshold=1, open_ms=50), trip=False)
        await _until_half_open(backend, PAIR)
        held = await backend.breaker_probe(PAIR, "a", 50)
        refused = await backend.breaker_probe(PAIR, "b", 5_000)
        await asyncio.sleep(0.1)
        taken = await backend.breaker_probe(PAIR, "b", 5_000)
        return [held, refused, taken]

    assert run_backend(body) == [True, False, True]


def test_a_success_closes_a_half_open_breaker(run_backend: BackendRunner) -> None:
    async def body(backend: Backend, keys: Keys) -> list[object]:
        rule = _rule(threshold=1, open_ms=50)
        await backend.breaker_fail(PAIR, rule, trip=False)
        await _until_half_open(backend, PAIR)
        await backend.breaker_probe(PAIR, "a", 5_000)
        closed = await backend.breaker_close([PAIR, "p|prov"])
        state = await backend.routing_state()
        probe_after_close = await backend.breaker_probe(PAIR, "b", 5_000)
        # Closed resets the doubling: the next opening is the first period again.
        again = await backend.breaker_fail(PAIR, rule, trip=False)
        return [closed, state, probe_after_close, again]

    closed, state, probe_after_close, again = run_backend(body)
    assert closed == 1
    assert PAIR not in state.tripped and PAIR not in state.failing and PAIR not in state.cooling
    assert probe_after_close is True
    assert again.opened and 40 <= again.open_until_ms - again.now_ms <= 50


def test_trip_opens_a_closed_breaker_at_once(run_backend: BackendRunner) -> None:
    async def body(backend: Backend, keys: Keys) -> list[object]:
        tripped = await backend.breaker_fail(PAIR, _rule(), trip=True)
        again = await backend.breaker_fail(PAIR, _rule(), trip=True)
        return [tripped, again]

    tripped, again = run_backend(body)
    assert tripped.opened and 9_000 <= tripped.open_until_ms - tripped.now_ms <= 10_000
    assert not again.opened and again.open_until_ms == tripped.open_until_ms


def test_retry_after_lengthens_an_opening_never_shortens_it(run_backend: BackendRunner) -> None:
    async def body(backend: Backend, keys: Keys) -> list[int]:
        long = await backend.breaker_fail("m|a|x", _rule(threshold=1, retry_after_ms=30_000), False)
        short = await backend.breaker_fail("m|b|x", _rule(threshold=1, retry_after_ms=2_000), False)
        return [long.open_until_ms - long.now_ms, short.open_until_ms - short.now_ms]

    long, short = run_backend(body)
    assert 29_000 <= long <= 30_000
    assert 9_000 <= short <= 10_000


def test_open_period_is_capped(run_backend: BackendRunner) -> None:
    async def body(backend: Backend, keys: Keys) -> int:
        rule = BreakerRule(1, 40, 100)
        result = await backend.breaker_fail(PAIR, rule, trip=False)
        for _ in range(4):  # 40, 80, 100 (capped), 100
            await _until_half_open(backend, PAIR)
            result = await backend.breaker_fail(PAIR, rule, trip=False)
        return result.open_until_ms - result.now_ms

    assert 90 <= run_backend(body) <= 100


def test_expired_values_do_not_accumulate_in_memory() -> None:
    import asyncio

    from service.store.memory import SWEEP_MIN, MemoryBackend

    async def body() -> int:
        backend = MemoryBackend()
        for i in range(SWEEP_MIN * 4):
            await backend.set(f"short:{i}", b"x", ttl_ms=1)
            await asyncio.sleep(0) if i % 512 else await asyncio.sleep(0.002)
        await backend.set("live", b"y", ttl_ms=60_000)
        assert await backend.get("live") == b"y"
        return len(backend._values)

    # Values written 1 ms apart expire while later ones are written: the store keeps only a
    # bounded number of them, never all 4096.
    assert asyncio.run(body()) < SWEEP_MIN * 2
