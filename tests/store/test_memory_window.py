"""The embedded store's rate window on a clock the test moves: a refused request's wait is
never longer than the 60-second window, and is exact (a request at the end of it is admitted,
one a millisecond earlier is not)."""

from __future__ import annotations

import asyncio

import pytest

from service.store import memory
from service.store.backend import AdmitRequest, RateLimits, Status
from service.store.keys import Keys
from service.store.memory import MemoryBackend


@pytest.mark.parametrize("into_second_ms", [0, 1, 500, 999])
def test_an_rpm_refusal_waits_exactly_until_the_request_leaves_the_window(
    monkeypatch: pytest.MonkeyPatch, into_second_ms: int
) -> None:
    clock = [1_800_000_000_000 + into_second_ms]
    monkeypatch.setattr(memory, "_now_ms", lambda: clock[0])
    limits = RateLimits(rpm=1)
    q = Keys("test").quota("tok", None)

    async def main() -> tuple[Status, Status, int, Status, Status]:
        backend = MemoryBackend()
        first = await backend.quota(q, [], AdmitRequest("a", 0, 0, limits))
        refused = await backend.quota(q, [], AdmitRequest("b", 0, 0, limits))
        start = clock[0]
        clock[0] = start + refused.retry_ms - 1
        early = await backend.quota(q, [], AdmitRequest("c", 0, 0, limits))
        clock[0] = start + refused.retry_ms
        on_time = await backend.quota(q, [], AdmitRequest("d", 0, 0, limits))
        return first.status, refused.status, refused.retry_ms, early.status, on_time.status

    first, refused, retry_ms, early, on_time = asyncio.run(main())
    assert (first, refused) == (Status.ADMITTED, Status.OVER_RPM)
    assert retry_ms == 60_000 - into_second_ms
    assert (early, on_time) == (Status.OVER_RPM, Status.ADMITTED)
