"""The store contract, on every backend: the same answers from memory and from Redis."""

from __future__ import annotations

from service.store.backend import (
    ADMITTED,
    OVER_CONCURRENCY,
    OVER_RPM,
    OVER_TPM,
    AdmitRequest,
    Backend,
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
