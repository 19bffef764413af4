"""The store contract, on every backend: the same answers from memory and from Redis."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from service.store import periods
from service.store.backend import (
    NO_BUDGET,
    NO_LIMITS,
    AdmitRequest,
    Backend,
    BreakerRule,
    Charge,
    LedgerKey,
    RateLimits,
    Settlement,
    SpendBudget,
    Status,
)
from service.store.keys import Keys
from service.store.periods import BudgetPeriod
from service.store.scripts import load_sources
from tests.harness import RedisServer
from tests.store.conftest import BackendRunner


def test_rpm_admits_exactly_the_limit_then_refuses_with_a_wait(
    run_backend: BackendRunner,
) -> None:
    async def body(backend: Backend, keys: Keys) -> list[tuple[int, int]]:
        q = keys.quota("tok", None)
        out = []
        for i in range(7):
            d = await backend.quota(q, [], AdmitRequest(f"e{i}", 0, 0, RateLimits(5, 0, 0)))
            out.append((d.status, d.retry_ms))
        return out

    decisions = run_backend(body)
    assert [s for s, _ in decisions] == [Status.ADMITTED] * 5 + [Status.OVER_RPM] * 2
    assert all(55_000 <= retry <= 61_000 for _, retry in decisions[5:])


def test_concurrency_lease_is_released_by_settlement_once(run_backend: BackendRunner) -> None:
    async def body(backend: Backend, keys: Keys) -> list[int]:
        q = keys.quota("tok", None)
        limits = RateLimits(0, 0, 1)
        first = await backend.quota(q, [], AdmitRequest("a", 0, 10_000, limits))
        second = await backend.quota(q, [], AdmitRequest("b", 0, 10_000, limits))
        done = Settlement("a", first.now_ms // 1000, 0, 0)
        third = await backend.quota(q, [done], AdmitRequest("c", 0, 10_000, limits))
        # Settling "a" again must not free "c"'s lease.
        fourth = await backend.quota(q, [done], AdmitRequest("d", 0, 10_000, limits))
        return [first.status, second.status, third.status, fourth.status]

    assert run_backend(body) == [
        Status.ADMITTED,
        Status.OVER_CONCURRENCY,
        Status.ADMITTED,
        Status.OVER_CONCURRENCY,
    ]


def test_tpm_reservation_is_replaced_by_real_usage(run_backend: BackendRunner) -> None:
    async def body(backend: Backend, keys: Keys) -> list[int]:
        q = keys.quota("tok", None)
        limits = RateLimits(0, 100, 0)
        first = await backend.quota(q, [], AdmitRequest("a", 80, 10_000, limits))
        refused = await backend.quota(q, [], AdmitRequest("b", 30, 10_000, limits))
        used = Settlement("a", first.now_ms // 1000, 80, 10)
        admitted = await backend.quota(q, [used], AdmitRequest("c", 30, 10_000, limits))
        _, tokens, in_flight = await backend.usage(q)
        return [first.status, refused.status, admitted.status, tokens, in_flight]

    assert run_backend(body) == [Status.ADMITTED, Status.OVER_TPM, Status.ADMITTED, 40, 1]


def test_a_lease_that_expired_unsettled_is_not_in_flight(run_backend: BackendRunner) -> None:
    """A request whose replica died never settles: once its lease expires it is no longer
    counted in flight (`GET /admin/tokens`), on any backend."""

    async def body(backend: Backend, keys: Keys) -> list[int]:
        q = keys.quota("tok", None)
        limits = RateLimits(0, 100, 0)
        await backend.quota(q, [], AdmitRequest("orphan", 10, 150, limits))
        held = (await backend.usage(q))[2]
        await asyncio.sleep(0.3)
        await backend.quota(q, [], AdmitRequest("live", 10, 10_000, limits))
        return [held, (await backend.usage(q))[2]]

    assert run_backend(body) == [1, 1]


def test_team_limit_binds_every_token_of_the_team(run_backend: BackendRunner) -> None:
    async def body(backend: Backend, keys: Keys) -> list[tuple[int, bool]]:
        out = []
        for i in range(4):
            q = keys.quota(f"tok{i % 2}", "team")
            d = await backend.quota(
                q, [], AdmitRequest(f"e{i}", 0, 0, NO_LIMITS, RateLimits(3, 0, 0))
            )
            out.append((d.status, d.team_side))
        return out

    assert run_backend(body) == [(Status.ADMITTED, False)] * 3 + [(Status.OVER_RPM, True)]


def test_calls_of_several_owners_in_one_turn_are_each_answered_as_alone(
    run_backend: BackendRunner,
) -> None:
    """Calls made in one event-loop turn travel as one script call on Redis (owners with and
    without a team, admissions and lone settlements in one batch): each gets the answer it
    would get alone, on every backend."""

    async def body(backend: Backend, keys: Keys) -> list[object]:
        solo, mate, other = (
            keys.quota("solo", None),
            keys.quota("mate", "team"),
            keys.quota("o", None),
        )
        solo_limits, team_limits = RateLimits(2, 100, 0), RateLimits(3, 0, 0)
        calls = []
        for i in range(4):
            calls.append(backend.quota(solo, [], AdmitRequest(f"s{i}", 40, 10_000, solo_limits)))
            calls.append(
                backend.quota(mate, [], AdmitRequest(f"m{i}", 0, 0, NO_LIMITS, team_limits))
            )
        calls.append(backend.quota(other, [], AdmitRequest("o", 0, 0, RateLimits(1, 0, 0))))
        first = await asyncio.gather(*calls)
        second = first[0].now_ms // 1000
        # one turn again: the lone settlements of the two admitted, and an admission of another
        await asyncio.gather(
            backend.quota(solo, [Settlement("s0", second, 40, 10)], None),
            backend.quota(other, [], AdmitRequest("o2", 0, 0, RateLimits(1, 0, 0))),
            backend.quota(solo, [Settlement("s1", second, 40, 0)], None),
        )
        return [[(d.status, d.team_side) for d in first], await backend.usage(solo)]

    answers, usage = run_backend(body)
    solo_answers, mate_answers = answers[0:8:2], answers[1:8:2]
    assert solo_answers == [(Status.ADMITTED, False)] * 2 + [(Status.OVER_RPM, False)] * 2
    assert mate_answers == [(Status.ADMITTED, False)] * 3 + [(Status.OVER_RPM, True)]
    assert answers[8] == (Status.ADMITTED, False)
    assert usage == (2, 10, 0)  # 2 requests, their 80 tokens corrected to 10, none in flight


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
        long = CoolRule(60_000, None, 10_000, 300_000, 1_000, 3_600_000)
        short = CoolRule(2_000, None, 10_000, 300_000, 1_000, 3_600_000)
        first, now = await backend.breaker_cool("p|x", long)
        second, _ = await backend.breaker_cool("p|x", short)
        state = await backend.breaker_state()
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


def _rule(
    threshold: int = 3, open_ms: int = 10_000, retry_after_ms: int | None = None
) -> BreakerRule:
    return BreakerRule(threshold, open_ms, 300_000, retry_after_ms)


async def _until_half_open(backend: Backend, field: str) -> None:
    """Wait (store time passes) until the breaker's open period is over."""
    state = await backend.breaker_state()
    until = state.cooling.get(field)
    if until is not None:
        await asyncio.sleep((until - state.now_ms) / 1000 + 0.005)


def test_breaker_opens_on_the_threshold_th_consecutive_failure(run_backend: BackendRunner) -> None:
    async def body(backend: Backend, keys: Keys) -> list[object]:
        results = [await backend.breaker_fail(PAIR, _rule(), trip=False) for _ in range(3)]
        state = await backend.breaker_state()
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
        state = await backend.breaker_state()
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


def test_concurrent_registry_writes_all_reach_the_data_file(tmp_path: Path) -> None:
    """The embedded store writes its registry file at each change: writes that overlap must
    neither trip over each other's temporary file nor leave an older state on disk."""
    import orjson

    from service.store.memory import REGISTRY_FILE, MemoryBackend

    async def body() -> None:
        backend = MemoryBackend(tmp_path)
        written = await asyncio.gather(
            *(
                backend.put_record("team", f"team-{i}", {"name": f"t{i}"}, "create")
                for i in range(40)
            )
        )
        assert all(written)

    asyncio.run(body())
    saved = orjson.loads((tmp_path / REGISTRY_FILE).read_bytes())
    assert sorted(row["name"] for row in saved["team"]) == sorted(f"t{i}" for i in range(40))


# -- budgets ----------------------------------------------------------------------------------

DAY_BUDGET = SpendBudget(1000, BudgetPeriod.DAY)  # 1000 micro-USD a day on the token


def _spend_request(
    entry: str,
    reserve: int,
    budget: SpendBudget,
    team_budget: SpendBudget = NO_BUDGET,
    lease_ms: int = 10_000,
) -> AdmitRequest:
    return AdmitRequest(
        entry=entry,
        cost=0,
        lease_ms=lease_ms,
        limits=NO_LIMITS,
        reserve=reserve,
        budget=budget,
        team_budget=team_budget,
    )


def test_budget_reserves_the_worst_case_and_settles_the_real_cost(
    run_backend: BackendRunner,
) -> None:
    async def body(backend: Backend, keys: Keys) -> dict[str, object]:
        q = keys.quota("tok", None)
        admitted = [
            await backend.quota(q, [], _spend_request(f"e{i}", 300, DAY_BUDGET)) for i in range(3)
        ]
        refused = await backend.quota(q, [], _spend_request("e3", 300, DAY_BUDGET))
        held = await backend.spend(q.token_budget, BudgetPeriod.DAY)
        # e0 cost 100 (not 300): two thirds of its reservation come back.
        done = Settlement("e0", admitted[0].now_ms // 1000, 0, 0, 100)
        again = await backend.quota(q, [done, done], _spend_request("e4", 300, DAY_BUDGET))
        after = await backend.spend(q.token_budget, BudgetPeriod.DAY)
        full = await backend.quota(q, [], _spend_request("e5", 1, DAY_BUDGET))
        return {
            "admitted": [(d.status, d.budget_remaining) for d in admitted],
            "refused": (refused.status, refused.budget_remaining, refused.retry_ms),
            "held": (held.spent, held.reserved),
            "again": (again.status, again.budget_remaining),
            "after": (after.spent, after.reserved),
            "full": (full.status, full.retry_ms),
        }

    out = run_backend(body)
    assert out["admitted"] == [
        (Status.ADMITTED, 700),
        (Status.ADMITTED, 400),
        (Status.ADMITTED, 100),
    ]
    # Over budget only while requests are in flight: retry soon, not at the period's end.
    assert out["refused"] == (Status.OVER_BUDGET, 100, 1000)
    assert out["held"] == (0, 900)
    assert out["again"] == (Status.ADMITTED, 0)  # settled twice: charged once
    assert out["after"] == (100, 900)
    assert out["full"] == (Status.OVER_BUDGET, 1000)


def test_spent_budget_waits_for_its_period_to_end(run_backend: BackendRunner) -> None:
    async def body(backend: Backend, keys: Keys) -> list[tuple[int, int, int]]:
        out = []
        for period in (BudgetPeriod.DAY, BudgetPeriod.WEEK, BudgetPeriod.MONTH, BudgetPeriod.TOTAL):
            q = keys.quota(f"tok{period}", None)
            budget = SpendBudget(500, period)
            first = await backend.quota(q, [], _spend_request("a", 400, budget))
            # The provider reported more than the reservation: charged in full.
            done = Settlement("a", first.now_ms // 1000, 0, 0, 450)
            refused = await backend.quota(q, [done], _spend_request("b", 100, budget))
            _, end = periods.bounds(period, refused.now_ms)
            expected = 0 if end < 0 else end - refused.now_ms
            out.append((refused.status, refused.retry_ms - expected, refused.budget_remaining))
        return out

    assert run_backend(body) == [(Status.OVER_BUDGET, 0, 50)] * 4


def test_team_budget_binds_every_token_and_the_tighter_side_shows(
    run_backend: BackendRunner,
) -> None:
    async def body(backend: Backend, keys: Keys) -> list[tuple[int, bool, int]]:
        out = []
        for i in range(4):
            q = keys.quota(f"tok{i % 2}", "team")
            token_budget, team_budget = (
                SpendBudget(10_000, BudgetPeriod.TOTAL),
                SpendBudget(700, BudgetPeriod.MONTH),
            )
            d = await backend.quota(q, [], _spend_request(f"e{i}", 300, token_budget, team_budget))
            out.append((d.status, d.team_side, d.budget_remaining))
        return out

    assert run_backend(body) == [
        (Status.ADMITTED, False, 400),
        (Status.ADMITTED, False, 100),
        (Status.OVER_BUDGET, True, 100),
        (Status.OVER_BUDGET, True, 100),
    ]


def test_a_reservation_whose_lease_expired_is_charged_in_full(
    run_backend: BackendRunner,
) -> None:
    async def body(backend: Backend, keys: Keys) -> tuple[int, int, int, int]:
        q = keys.quota("tok", "team")
        budget = SpendBudget(1000, BudgetPeriod.TOTAL)
        first = await backend.quota(q, [], _spend_request("lost", 300, budget, budget, lease_ms=30))
        await asyncio.sleep(0.1)  # the replica that held "lost" died: nobody renews it
        second = await backend.quota(q, [], _spend_request("next", 300, budget, budget))
        # A late settlement of the lost request changes nothing: it was charged already.
        late = Settlement("lost", first.now_ms // 1000, 0, 0, 10)
        await backend.quota(q, [late], None)
        token = await backend.spend(q.token_budget, BudgetPeriod.TOTAL)
        assert q.team_budget is not None
        team = await backend.spend(q.team_budget, BudgetPeriod.TOTAL)
        return second.budget_remaining, token.spent, team.spent, team.reserved

    assert run_backend(body) == (400, 300, 300, 300)


def test_lua_calendar_matches_python(redis_server: RedisServer) -> None:
    """The period arithmetic of quota.lua, run by Redis at chosen times, equals periods.py."""
    source = load_sources()["quota"]
    calendar = source[source.index("-- Calendar arithmetic") : source.index("-- Bring budget")]
    script = (
        "local now = tonumber(ARGV[1]); local DAY = 86400000; local floor = math.floor\n"
        + calendar
        + "local s, e = period(tonumber(ARGV[2])); return {tostring(s), tostring(e)}"
    )
    moments = [
        datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC),
        datetime(2024, 3, 1, tzinfo=UTC),
        datetime(2023, 12, 31, 12, tzinfo=UTC),
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 11, 29, 2, 30, tzinfo=UTC),
        datetime(2000, 2, 29, tzinfo=UTC),
        datetime(2100, 3, 1, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
    ]

    async def run() -> list[tuple[int, int, int, int]]:
        client = Redis.from_url(redis_server.url)
        try:
            out = []
            for moment in moments:
                now = int(moment.timestamp() * 1000)
                for period in (
                    BudgetPeriod.DAY,
                    BudgetPeriod.WEEK,
                    BudgetPeriod.MONTH,
                    BudgetPeriod.TOTAL,
                ):
                    start, end = await client.eval(script, 0, now, int(period))  # type: ignore[misc]
                    out.append((int(float(start)), int(float(end)), *periods.bounds(period, now)))
            return out
        finally:
            await client.aclose()

    for lua_start, lua_end, start, end in asyncio.run(run()):
        assert (lua_start, lua_end) == (start, end)


def test_period_bounds_follow_the_utc_calendar() -> None:
    def ms(*parts: int) -> int:
        return int(datetime(*parts, tzinfo=UTC).timestamp() * 1000)

    leap = ms(2024, 2, 29, 13)
    assert periods.bounds(BudgetPeriod.DAY, leap) == (ms(2024, 2, 29), ms(2024, 3, 1))
    assert periods.bounds(BudgetPeriod.MONTH, leap) == (ms(2024, 2, 1), ms(2024, 3, 1))
    # 2024-02-29 was a Thursday: its ISO week began on Monday the 26th.
    assert periods.bounds(BudgetPeriod.WEEK, leap) == (ms(2024, 2, 26), ms(2024, 3, 4))
    assert periods.bounds(BudgetPeriod.MONTH, ms(2025, 12, 31, 23)) == (
        ms(2025, 12, 1),
        ms(2026, 1, 1),
    )
    assert periods.bounds(BudgetPeriod.TOTAL, leap) == (0, -1)


def test_usage_ledger_adds_up_rows_per_day(run_backend: BackendRunner) -> None:
    async def body(backend: Backend, keys: Keys) -> list[tuple[LedgerKey, list[int]]]:
        row = ("2026-11-29", "tok", "team", "groq", "org/model-1.5b")
        other = ("2026-11-30", "tok", "", "groq", "org/model-1.5b")
        await backend.add_usage({row: [1, 10, 20, 3_000_000, 0, 0]})
        await backend.add_usage({row: [2, 5, 5, 1, 1, 1], other: [1, 1, 1, 0, 1, 0]})
        await backend.add_usage({})
        return sorted(await backend.read_usage(["2026-11-28", "2026-11-29", "2026-11-30"]))

    assert run_backend(body) == [
        (("2026-11-29", "tok", "team", "groq", "org/model-1.5b"), [3, 15, 25, 3_000_001, 1, 1]),
        (("2026-11-30", "tok", "", "groq", "org/model-1.5b"), [1, 1, 1, 0, 1, 0]),
    ]


# -- the Redis script's bookkeeping -----------------------------------------------------------


def _redis_backend(url: str, keys: Keys) -> Backend:
    from service.store.connection import parse_redis_url
    from service.store.redis_backend import RedisBackend

    return RedisBackend(parse_redis_url(url), keys)


def test_a_lost_lease_count_is_recounted_never_undercounted(redis_server: RedisServer) -> None:
    """The script keeps the number of leases held beside the leases (so it need not count them
    per request); when that count is lost (the windows key expired or was evicted while long
    requests still hold their leases) it recounts, and never admits over the limit."""

    async def body() -> list[int]:
        keys = Keys("test-recount")
        backend = _redis_backend(redis_server.url, keys)
        await backend.ping()
        q = keys.quota("tok", None)
        limits = RateLimits(100, 0, 2)
        try:
            out = [
                (await backend.quota(q, [], AdmitRequest(f"e{i}", 0, 10_000, limits))).status
                for i in range(2)
            ]
            client = Redis.from_url(redis_server.url)
            try:
                await client.delete(q.token_windows)
                refused = await backend.quota(q, [], AdmitRequest("e2", 0, 10_000, limits))
                done = Settlement("e0", refused.now_ms // 1000, 0, 0)
                freed = await backend.quota(q, [done], AdmitRequest("e3", 0, 10_000, limits))
                full = await backend.quota(q, [], AdmitRequest("e4", 0, 10_000, limits))
                count = int(await client.hget(q.token_windows, "c") or -1)
            finally:
                await client.aclose()
            return [*out, refused.status, freed.status, full.status, count]
        finally:
            await backend.close()

    assert asyncio.run(body()) == [
        Status.ADMITTED,
        Status.ADMITTED,
        Status.OVER_CONCURRENCY,
        Status.ADMITTED,
        Status.OVER_CONCURRENCY,
        2,
    ]


def test_every_quota_key_expires_unless_it_guards_a_budget(redis_server: RedisServer) -> None:
    """Windows and leases keys carry an expiry although the script no longer sets it on
    every request.  A leases key outlives its last lease (it holds a member that is never a
    lease, so settling does not make it vanish and come back), and one that vanished anyway
    is given an expiry again by the admission that creates it."""

    async def body() -> tuple[int, int, int, int, int]:
        keys = Keys("test-expiry")
        backend = _redis_backend(redis_server.url, keys)
        await backend.ping()
        q = keys.quota("tok", None)
        limits = RateLimits(100, 1000, 5)
        client = Redis.from_url(redis_server.url)
        try:
            first = await backend.quota(q, [], AdmitRequest("a", 10, 10_000, limits))
            windows_ttl = await client.pttl(q.token_windows)
            done = Settlement("a", first.now_ms // 1000, 10, 10)
            await backend.quota(q, [done], None)
            emptied_ttl = await client.pttl(q.token_leases)
            _, _, in_flight = await backend.usage(q)
            await client.delete(q.token_leases)  # as if it expired: the windows still remember
            await backend.quota(q, [], AdmitRequest("b", 10, 10_000, limits))
            leases_ttl = await client.pttl(q.token_leases)
            return (
                windows_ttl,
                emptied_ttl,
                in_flight,
                leases_ttl,
                await client.pttl(q.token_windows),
            )
        finally:
            await client.aclose()
            await backend.close()

    windows_ttl, emptied_ttl, in_flight, leases_ttl, windows_after = asyncio.run(body())
    assert 61_000 <= windows_ttl <= 71_000
    assert 11_000 <= emptied_ttl <= 21_000
    assert in_flight == 0
    assert 11_000 <= leases_ttl <= 21_000
    assert 0 < windows_after <= 71_000


def test_usage_counts_the_window_of_an_idle_token(redis_server: RedisServer) -> None:
    """`GET /admin/tokens` counts what the window holds now, not what the token's last visit
    left: buckets that have left it since are not counted."""

    async def body() -> tuple[int, int, int]:
        keys = Keys("test-usage")
        backend = _redis_backend(redis_server.url, keys)
        await backend.ping()
        client = Redis.from_url(redis_server.url)
        try:
            now_s = int((await client.time())[0])
            q = keys.quota("idle", None)
            # 30 requests (300 tokens) 65 s ago, one (10 tokens) 30 s ago; a bucket is
            # requests * 2^33 + tokens, in the slot of its second modulo 60 (lua/quota.lua).
            old, recent = now_s - 65, now_s - 30
            await client.hset(
                q.token_windows,
                mapping={"o": old, "rs": 31, "ts": 310}
                | {f"b{old % 60}": 30 * 2**33 + 300, f"b{recent % 60}": 1 * 2**33 + 10},
            )
            return await backend.usage(q)
        finally:
            await client.aclose()
            await backend.close()

    assert asyncio.run(body()) == (1, 10, 0)


def test_a_request_that_would_fill_a_seconds_bucket_is_refused(redis_server: RedisServer) -> None:
    """A bucket holds a second's requests and tokens as one number (requests * 2^33 + tokens):
    a request that would take a second's tokens to 2^33 is refused as over tpm, even with no
    tpm limit, rather than spill into the request count."""

    async def body() -> list[int]:
        keys = Keys("test-full-bucket")
        backend = _redis_backend(redis_server.url, keys)
        await backend.ping()
        q = keys.quota("tok", None)
        limits = RateLimits(1000, 0, 0)  # rpm only: tokens are still counted
        try:
            huge = await backend.quota(q, [], AdmitRequest("a", 2**33, 0, limits))
            small = await backend.quota(q, [], AdmitRequest("b", 10, 0, limits))
            return [huge.status, small.status, small.rpm_remaining]
        finally:
            await backend.close()

    assert asyncio.run(body()) == [Status.OVER_TPM, Status.ADMITTED, 1000 - 1]


def test_calls_of_one_turn_decide_as_the_same_calls_one_at_a_time(
    run_backend: BackendRunner,
) -> None:
    """A replica sends the quota calls of one event-loop turn together (on Redis, those that
    share a slot as one script call reading each owner's windows once): every call must get
    the answer it would get alone, in order, and leave the same counts."""
    solo, team_ = RateLimits(5, 100, 3), RateLimits(8, 0, 4)
    budget = SpendBudget(100, BudgetPeriod.TOTAL)  # 100 micro-USD in total for token "d"
    Answer = tuple[int, bool, int, int, int, int]

    async def rounds(backend: Backend, keys: Keys, together: bool) -> list[Any]:
        owners = {
            "a": keys.quota("a", None),
            "b": keys.quota("b", "t"),
            "c": keys.quota("c", "t"),
            "d": keys.quota("d", None),
        }
        limits = {"a": solo, "b": NO_LIMITS, "c": NO_LIMITS, "d": NO_LIMITS}
        team_limits = {"b": team_, "c": team_}
        admitted: dict[str, list[tuple[str, int]]] = {owner: [] for owner in owners}

        async def run(
            calls: list[tuple[str, list[Settlement], AdmitRequest | None]],
        ) -> list[Answer]:
            coros = [backend.quota(owners[o], settle, admit) for o, settle, admit in calls]
            if together:
                decisions = await asyncio.gather(*coros)
            else:
                decisions = [await coro for coro in coros]
            out = []
            for (owner, _, admit), d in zip(calls, decisions, strict=True):
                if admit is not None and d.status == Status.ADMITTED:
                    admitted[owner].append((admit.entry, d.now_ms // 1000))
                out.append(
                    (
                        d.status,
                        d.team_side,
                        d.rpm_remaining,
                        d.tpm_remaining,
                        d.budget_remaining,
                        d.concurrency_remaining,
                    )
                )
            return out

        def admit(owner: str, n: int) -> AdmitRequest:
            if owner == "d":
                return _spend_request(f"{owner}{n}", 30, budget)
            return AdmitRequest(
                f"{owner}{n}", 10, 10_000, limits[owner], team_limits.get(owner, NO_LIMITS)
            )

        def done(owner: str, used: int) -> Settlement:
            entry, second = admitted[owner].pop(0)
            return Settlement(
                entry,
                second,
                10 if owner != "d" else 0,
                used,
                20 if owner == "d" else Charge.NOTHING,
            )

        first = await run([(o, [], admit(o, n)) for n in range(6) for o in owners])
        second = await run(
            [
                ("a", [done("a", 4)], admit("a", 6)),
                ("b", [done("b", 10)], admit("b", 6)),
                ("a", [done("a", 0)], admit("a", 7)),
                ("c", [done("c", 10)], None),
                ("d", [done("d", 0)], admit("d", 6)),
                ("c", [], admit("c", 7)),
                ("d", [done("d", 0)], admit("d", 7)),
                ("a", [], admit("a", 8)),
            ]
        )
        usage = [await backend.usage(q) for q in owners.values()]
        spend = await backend.spend(owners["d"].token_budget, 0)
        return [first, second, usage, (spend.spent, spend.reserved)]

    async def body(backend: Backend, keys: Keys) -> tuple[list[Any], list[Any]]:
        alone = await rounds(backend, Keys(keys.prefix + "-alone"), together=False)
        together = await rounds(backend, Keys(keys.prefix + "-together"), together=True)
        return alone, together

    alone, together = run_backend(body)
    assert together == alone
    # And the answers are the limits': a has 3 leases, the team 4, d's budget 3 reservations.
    first = alone[0]
    assert [s for s, *_ in first[0::4]] == [Status.ADMITTED] * 3 + [Status.OVER_CONCURRENCY] * 3
    assert [answer[5] for answer in first[0:12:4]] == [2, 1, 0]  # leases still free
    assert sum(s == Status.ADMITTED for s, *_ in first[1::4] + first[2::4]) == 4
    assert [s for s, *_ in first[3::4]] == [Status.ADMITTED] * 3 + [Status.OVER_BUDGET] * 3


def test_a_registry_written_again_after_a_loss_never_repeats_a_version(
    redis_server: RedisServer,
) -> None:
    """Replicas reconcile when the registry's version differs from the one they last saw.  After
    an empty restart, re-seeding N records must not bring the version back to a value a replica
    saw before the loss (it would skip its reconciliation and its newer copies be lost)."""

    async def body() -> tuple[int | None, int | None]:
        keys = Keys("test-version-loss")
        backend = _redis_backend(redis_server.url, keys)
        await backend.ping()
        try:
            for n in range(3):
                await backend.put_record("token", f"t{n}", {"id": f"t{n}"}, "create")
            before = await backend.registry_version()
            client = Redis.from_url(redis_server.url)
            try:
                await client.delete(*await client.keys("test-version-loss:*"))
            finally:
                await client.aclose()
            for n in range(3):
                await backend.put_record("token", f"t{n}", {"id": f"t{n}"}, "newest")
            return before, await backend.registry_version()
        finally:
            await backend.close()

    before, after = asyncio.run(body())
    assert before is not None and after is not None
    assert after != before
