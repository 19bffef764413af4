"""Cooldown policy: how long a failure keeps a provider or a pair out of rotation.

- ``Retry-After`` (any form) is honoured, clamped to 1 s .. 1 h;
- 401/403 cool the whole provider for 5 minutes;
- otherwise 10 s, doubling per consecutive failure, capped at 5 minutes; a success resets.
The arithmetic runs atomically in the store (``cool.lua``) so replicas never race.
"""

from __future__ import annotations

from service.routing.table import Candidate
from service.store.client import Store
from service.upstream.errors import AUTH, UpstreamFailure

BASE_MS = 10_000
CAP_MS = 300_000
AUTH_MS = 300_000
RETRY_AFTER_FLOOR_MS = 1_000
RETRY_AFTER_CEILING_MS = 3_600_000


async def cool_down(store: Store, candidate: Candidate, failure: UpstreamFailure) -> int | None:
    """Record ``failure`` of ``candidate``; returns the cooling-until time (ms) or None when
    the failure cools nothing (it depended on the request, not the provider)."""
    if failure.scope == "none":
        return None
    field = candidate.provider_field if failure.scope == "provider" else candidate.pair_field
    retry_ms = -1 if failure.retry_after_s is None else int(failure.retry_after_s * 1000)
    until, _ = await store.cool(
        field,
        retry_after_ms=retry_ms,
        fixed_ms=AUTH_MS if failure.reason == AUTH else -1,
        base_ms=BASE_MS,
        cap_ms=CAP_MS,
        floor_ms=RETRY_AFTER_FLOOR_MS,
        ceiling_ms=RETRY_AFTER_CEILING_MS,
    )
    return until
