"""The admission, settlement and cooldown scripts, on the embedded store and on real Redis.

Each test runs once per backend (see ``conftest.store_url``): the same Lua must give the same
answers on fakeredis and on redis-server.
"""

from __future__ import annotations

import asyncio
import time

from service.routing.cooldowns import (
    AUTH_MS,
    BASE_MS,
    CAP_MS,
    RETRY_AFTER_CEILING_MS,
    RETRY_AFTER_FLOOR_MS,
    cool_down,
)
from service.routing.scoring import Score
from service.routing.table import Candidate
from service.store.client import (
    ADMITTED,
    EXPIRED,
    OVER_CONCURRENCY,
    OVER_RPM,
    OVER_TPM,
    REVOKED,
    UNKNOWN,
    Admission,
    Store,
)
from service.upstream.errors import AUTH, CONTEXT_LENGTH, RATE_LIMITED, UpstreamFailure
from tests.store.conftest import StoreRunner

LEASE_MS = 60_000


def record(
    *,
    rpm: int | None = None,
    tpm: int | None = None,
    max_concurrency: int | None = None,
    revoked: bool = False,
    expires_ms: int | None = None,
) -> dict[str, str]:
    """A token record as the registry writes it ("" = no limit)."""

    def text(value: int | None) -> str:
        return "" if value is None else str(value)

    return {
        "revoked": "1" if revoked else "0",
        "expires_ms": text(expires_ms),
        "rpm": text(rpm),
        "tpm": text(tpm),
        "max_concurrency": text(max_concurrency),
    }


async def admit(
    store: Store, token: str | None, rid: str, cost: int = 0, lease_ms: int = LEASE_MS
) -> Admission:
    return await store.admit(token, rid, cost, lease_ms)


async def cool(
    store: Store,
    field: str,
    *,
    retry_after_ms: int = -1,
    fixed_ms: int = -1,
    base_ms: int = BASE_MS,
) -> int:
    """Cool ``field`` with the gateway's policy; returns the duration the store applied."""
    until, now = await store.cool(
        field,
        retry_after_ms=retry_after_ms,
        fixed_ms=fixed_ms,
        base_ms=base_ms,
        cap_ms=CAP_MS,
        floor_ms=RETRY_AFTER_FLOOR_MS,
        ceiling_ms=RETRY_AFTER_CEILING_MS,
    )
    return until - now


class TestAdmission:
    def test_without_token_check_admits_and_reads_cooldowns(self, run_store: StoreRunner) -> None:
        async def body(store: Store) -> None:
            until, _ = await store.cool(
                "p|groq",
                retry_after_ms=30_000,
                fixed_ms=-1,
                base_ms=BASE_MS,
                cap_ms=CAP_MS,
                floor_ms=RETRY_AFTER_FLOOR_MS,
                ceiling_ms=RETRY_AFTER_CEILING_MS,
            )
            result = await store.admit(None, "r1", 100, LEASE_MS)
            assert result.status == ADMITTED
            assert [result.state(f) for f in ("p|groq", "m|groq|llama", "x")] == [until, 0, 0]
            assert result.cooling == {"p|groq": until}
            assert until - result.now_ms > 29_000
            assert (result.rpm_limit, result.tpm_limit) == (-1, -1)
            assert abs(result.now_ms - time.time() * 1000) < 5_000

        run_store(body)

    def test_unknown_revoked_and_expired_tokens(self, run_store: StoreRunner) -> None:
        async def body(store: Store) -> None:
            now_ms = int(time.time() * 1000)
            await store.put_token("revoked", record(revoked=True), create=False)
            await store.put_token("expired", record(expires_ms=now_ms - 1_000), create=False)
            await store.put_token("valid", record(expires_ms=now_ms + 60_000), create=False)
            assert (await admit(store, "nobody", "r1")).status == UNKNOWN
            assert (await admit(store, "revoked", "r2")).status == REVOKED
            assert (await admit(store, "expired", "r3")).status == EXPIRED
            assert (await admit(store, "valid", "r4")).status == ADMITTED

        run_store(body)

    def test_refused_token_still_reads_cooldowns(self, run_store: StoreRunner) -> None:
        async def body(store: Store) -> None:
            await cool(store, "p|groq", retry_after_ms=5_000)
            result = await store.admit("nobody", "r1", 0, LEASE_MS)
            assert result.status == UNKNOWN
            assert result.cooling["p|groq"] > result.now_ms

        run_store(body)

    def test_revoking_takes_effect_on_the_next_admission(self, run_store: StoreRunner) -> None:
        async def body(store: Store) -> None:
            await store.put_token("t", record(), create=False)
            assert (await admit(store, "t", "r1")).status == ADMITTED
            await store.put_token("t", {"revoked": "1"}, create=False)
            assert (await admit(store, "t", "r2")).status == REVOKED

        run_store(body)

    def test_token_without_limits_reports_none(self, run_store: StoreRunner) -> None:
        async def body(store: Store) -> None:
            await store.put_token("t", record(), create=False)
            for i in range(20):
                result = await admit(store, "t", f"r{i}", cost=10**9)
                assert result.status == ADMITTED
            assert (result.rpm_limit, result.rpm_remaining) == (-1, -1)
            assert (result.tpm_limit, result.tpm_remaining) == (-1, -1)

        run_store(body)


class TestRpm:
    def test_exactly_n_back_to_back_then_refused(self, run_store: StoreRunner) -> None:
        async def body(store: Store) -> None:
            await store.put_token("t", record(rpm=5), create=False)
            results = [await admit(store, "t", f"r{i}") for i in range(7)]
            assert [r.status for r in results] == [ADMITTED] * 5 + [OVER_RPM] * 2
            assert [r.rpm_remaining for r in results[:5]] == [4, 3, 2, 1, 0]
            assert all(r.rpm_limit == 5 for r in results)
            refused = results[5]
            # The oldest admission leaves the window in just under 60 s.
            assert 55_000 < refused.retry_after_ms <= 60_000
            assert refused.rpm_reset_ms == refused.retry_after_ms
            assert refused.rpm_remaining == 0
            assert (await store.token_usage("t"))[0] == 5

        run_store(body)

    def test_each_token_has_its_own_window(self, run_store: StoreRunner) -> None:
        async def body(store: Store) -> None:
            await store.put_token("a", record(rpm=1), create=False)
            await store.put_token("b", record(rpm=1), create=False)
            assert (await admit(store, "a", "r1")).status == ADMITTED
            assert (await admit(store, "a", "r2")).status == OVER_RPM
            assert (await admit(store, "b", "r3")).status == ADMITTED

        run_store(body)

    def test_exact_under_contention(self, run_store: StoreRunner) -> None:
        async def body(store: Store) -> None:
            await store.put_token("t", record(rpm=10), create=False)
            results = await asyncio.gather(*(admit(store, "t", f"r{i}") for i in range(50)))
            statuses = [r.status for r in results]
            assert statuses.count(ADMITTED) == 10
            assert statuses.count(OVER_RPM) == 40

        run_store(body)


class TestTpm:
    def test_reservation_refusal_and_settlement(self, run_store: StoreRunner) -> None:
        async def body(store: Store) -> None:
            await store.put_token("t", record(tpm=1000), create=False)
            first = await admit(store, "t", "r1", cost=600)
            assert first.status == ADMITTED
            assert (first.tpm_limit, first.tpm_remaining) == (1000, 400)

            refused = await admit(store, "t", "r2", cost=500)
            assert refused.status == OVER_TPM
            assert 55_000 < refused.retry_after_ms <= 60_000
            assert refused.tpm_remaining == 400

            # The request used far less than it reserved: the difference is free again.
            await store.settle("t", "r1", 100, [])
            assert (await store.token_usage("t"))[1] == 100
            second = await admit(store, "t", "r3", cost=500)
            assert second.status == ADMITTED
            assert second.tpm_remaining == 400

        run_store(body)

    def test_settling_above_the_reservation_uses_more_budget(self, run_store: StoreRunner) -> None:
        async def body(store: Store) -> None:
            await store.put_token("t", record(tpm=1000), create=False)
            assert (await admit(store, "t", "r1", cost=100)).status == ADMITTED
            await store.settle("t", "r1", 900, [])
            assert (await store.token_usage("t"))[1] == 900
            assert (await admit(store, "t", "r2", cost=200)).status == OVER_TPM
            assert (await admit(store, "t", "r3", cost=100)).status == ADMITTED

        run_store(body)

    def test_keeping_the_reservation(self, run_store: StoreRunner) -> None:
        async def body(store: Store) -> None:
            await store.put_token("t", record(tpm=1000), create=False)
            await admit(store, "t", "r1", cost=700)
            await store.settle("t", "r1", -1, [])  # no usage reported: keep the estimate
            assert (await store.token_usage("t"))[1] == 700

        run_store(body)

    def test_request_bigger_than_the_whole_budget(self, run_store: StoreRunner) -> None:
        async def body(store: Store) -> None:
            await store.put_token("t", record(tpm=1000), create=False)
            refused = await admit(store, "t", "r1", cost=1001)
            assert refused.status == OVER_TPM
            assert refused.retry_after_ms == 60_000
            # Nothing was reserved by the refusal.
            assert (await admit(store, "t", "r2", cost=1000)).status == ADMITTED

        run_store(body)

    def test_tpm_refusal_does_not_use_rpm(self, run_store: StoreRunner) -> None:
        async def body(store: Store) -> None:
            await store.put_token("t", record(rpm=2, tpm=100), create=False)
            assert (await admit(store, "t", "big", cost=500)).status == OVER_TPM
            assert (await admit(store, "t", "r1", cost=10)).status == ADMITTED
            assert (await admit(store, "t", "r2", cost=10)).status == ADMITTED
            assert (await admit(store, "t", "r3", cost=10)).status == OVER_RPM

        run_store(body)

    def test_never_overspent_under_contention(self, run_store: StoreRunner) -> None:
        async def body(store: Store) -> None:
            await store.put_token("t", record(tpm=1000), create=False)
            results = await asyncio.gather(
                *(admit(store, "t", f"r{i}", cost=150) for i in range(30))
            )
            assert [r.status for r in results].count(ADMITTED) == 6
            assert (await store.token_usage("t"))[1] == 900

        run_store(body)


class TestConcurrency:
    def test_leases_are_counted_and_released_by_settle(self, run_store: StoreRunner) -> None:
        async def body(store: Store) -> None:
            await store.put_token("t", record(max_concurrency=2), create=False)
            assert (await admit(store, "t", "r1")).status == ADMITTED
            assert (await admit(store, "t", "r2")).status == ADMITTED
            refused = await admit(store, "t", "r3")
            assert refused.status == OVER_CONCURRENCY
            assert refused.retry_after_ms > 0
            assert (await store.token_usage("t"))[2] == 2
            await store.settle("t", "r1", -1, [])
            assert (await store.token_usage("t"))[2] == 1
            assert (await admit(store, "t", "r4")).status == ADMITTED

        run_store(body)

    def test_expired_leases_free_themselves(self, run_store: StoreRunner) -> None:
        async def body(store: Store) -> None:
            await store.put_token("t", record(max_concurrency=2), create=False)
            # A replica that dies holding its leases never settles them.
            assert (await admit(store, "t", "r1", lease_ms=50)).status == ADMITTED
            assert (await admit(store, "t", "r2", lease_ms=50)).status == ADMITTED
            assert (await admit(store, "t", "r3")).status == OVER_CONCURRENCY
            await asyncio.sleep(0.12)  # lease expiry is time itself: nothing to wait on
            assert (await admit(store, "t", "r4")).status == ADMITTED

        run_store(body)

    def test_a_short_lease_does_not_expire_the_longer_ones(self, run_store: StoreRunner) -> None:
        async def body(store: Store) -> None:
            # Replicas with different request timeouts use different lease lengths.
            await store.put_token("t", record(max_concurrency=2), create=False)
            assert (await admit(store, "t", "long", lease_ms=60_000)).status == ADMITTED
            assert (await admit(store, "t", "short", lease_ms=1)).status == ADMITTED
            await asyncio.sleep(1.1)  # past the short lease and its key's grace second
            assert (await store.token_usage("t"))[2] == 1
            assert (await admit(store, "t", "r3")).status == ADMITTED
            assert (await admit(store, "t", "r4")).status == OVER_CONCURRENCY

        run_store(body)

    def test_concurrency_is_exact_under_contention(self, run_store: StoreRunner) -> None:
        async def body(store: Store) -> None:
            await store.put_token("t", record(max_concurrency=3), create=False)
            results = await asyncio.gather(*(admit(store, "t", f"r{i}") for i in range(20)))
            assert [r.status for r in results].count(ADMITTED) == 3

        run_store(body)


class TestCool:
    def test_consecutive_failures_double_from_10s_capped_at_5_minutes(
        self, run_store: StoreRunner
    ) -> None:
        async def body(store: Store) -> None:
            durations = [await cool(store, "m|p|model") for _ in range(7)]
            assert durations == [10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000]
            active, now_ms = await store.cooldowns()
            assert active["m|p|model"] - now_ms > 295_000

        run_store(body)

    def test_retry_after_is_honoured_and_clamped(self, run_store: StoreRunner) -> None:
        async def body(store: Store) -> None:
            assert await cool(store, "p|a", retry_after_ms=30_000) == 30_000
            assert await cool(store, "p|b", retry_after_ms=1_500) == 1_500
            assert await cool(store, "p|c", retry_after_ms=0) == 1_000
            assert await cool(store, "p|d", retry_after_ms=7_200_000) == 3_600_000

        run_store(body)

    def test_fixed_cooldown_for_a_bad_key(self, run_store: StoreRunner) -> None:
        async def body(store: Store) -> None:
            assert await cool(store, "p|a", fixed_ms=AUTH_MS) == 300_000
            # Retry-After wins over the fixed duration when the upstream sends one.
            assert await cool(store, "p|b", retry_after_ms=20_000, fixed_ms=AUTH_MS) == 20_000

        run_store(body)

    def test_a_new_failure_extends_never_shortens(self, run_store: StoreRunner) -> None:
        async def body(store: Store) -> None:
            first, _ = await store.cool(
                "p|a",
                retry_after_ms=60_000,
                fixed_ms=-1,
                base_ms=BASE_MS,
                cap_ms=CAP_MS,
                floor_ms=RETRY_AFTER_FLOOR_MS,
                ceiling_ms=RETRY_AFTER_CEILING_MS,
            )
            shorter = await cool(store, "p|a", retry_after_ms=2_000)
            assert 55_000 < shorter <= 60_000  # the 60 s cooldown stays
            active, _ = await store.cooldowns()
            assert active["p|a"] == first
            assert await cool(store, "p|a", retry_after_ms=120_000) == 120_000
            active, _ = await store.cooldowns()
            assert active["p|a"] > first

        run_store(body)

    def test_success_resets_the_doubling(self, run_store: StoreRunner) -> None:
        async def body(store: Store) -> None:
            assert await cool(store, "m|p|x") == 10_000
            assert await cool(store, "m|p|x") == 20_000
            assert await cool(store, "m|p|y") == 10_000
            await store.settle(None, "r1", -1, ["m|p|x", "p|p"])
            # A longer base keeps the never-shorten rule out of the way: after the reset the
            # next failure counts as the first (1x base), not the third (4x base).
            assert await cool(store, "m|p|x", base_ms=100_000) == 100_000
            # Other fields keep their count.
            assert await cool(store, "m|p|y", base_ms=100_000) == 200_000

        run_store(body)

    def test_expired_cooldowns_are_not_reported(self, run_store: StoreRunner) -> None:
        async def body(store: Store) -> None:
            await cool(store, "p|short", retry_after_ms=0)  # floor: 1 s
            await cool(store, "p|long", retry_after_ms=60_000)
            active, now_ms = await store.cooldowns()
            assert set(active) == {"p|short", "p|long"}
            result = await store.admit(None, "r", 0, LEASE_MS)
            assert set(result.cooling) <= {"p|short", "p|long"}
            assert all(until > result.now_ms for until in result.cooling.values())
            assert now_ms <= result.now_ms
            await asyncio.sleep(1.05)  # the 1 s cooldown ends with time itself
            later = await store.admit(None, "r2", 0, LEASE_MS)
            assert set(later.cooling) == {"p|long"}

        run_store(body)

    def test_a_recent_failure_without_cooldown_is_reported_until_a_success(
        self, run_store: StoreRunner
    ) -> None:
        async def body(store: Store) -> None:
            await cool(store, "m|p|x", retry_after_ms=0)  # the 1 s floor
            await asyncio.sleep(1.05)  # a cooldown ends with time itself: nothing to wait on
            result = await store.admit(None, "r1", 0, LEASE_MS)
            # Not cooling any more, but its failure count must be reset by the next success.
            assert [result.state(f) for f in ("m|p|x", "m|p|never")] == [-1, 0]
            await store.settle(None, "r1", -1, ["m|p|x"])
            result = await store.admit(None, "r2", 0, LEASE_MS)
            assert result.state("m|p|x") == 0 and not result.failing

        run_store(body)

    def test_cooldown_policy_of_the_router(self, run_store: StoreRunner) -> None:
        candidate = Candidate.build(
            "groq", "llama", Score(0, 0, 0, 0, 1), "https://g/v1", "key", 60.0
        )

        async def body(store: Store) -> None:
            context = UpstreamFailure(CONTEXT_LENGTH, "too long", status=400)
            assert await cool_down(store, candidate, context) is None
            assert (await store.cooldowns())[0] == {}

            auth = UpstreamFailure(AUTH, "bad key", status=401)
            until = await cool_down(store, candidate, auth)
            active, now_ms = await store.cooldowns()
            assert until is not None and set(active) == {"p|groq"}
            assert 295_000 < until - now_ms <= 300_000

            limited = UpstreamFailure(RATE_LIMITED, "429", status=429, retry_after_s=0.0)
            await cool_down(store, candidate, limited)  # never shortens the auth cooldown
            assert (await store.cooldowns())[0]["p|groq"] == until

        run_store(body)
