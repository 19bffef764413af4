"""Admission and settlement: the quota side of a request, start to end.

- ``authenticate`` reads the local registry cache: no store call.
- ``admit`` makes no store call for a token without limits, and one script call for a limited
  one: it carries the settlements waiting for that token, then checks the token's limits and
  its team's atomically (store/lua/quota.lua).
- ``settle`` queues a finished request's correction (real tokens, lease release).  It rides
  with the token's next admission, or travels on its own after ``SETTLE_DELAY_S``.
- Leases of requests in flight are renewed every ``RENEW_S``; a replica that dies stops
  renewing, and its leases expire ``LEASE_MS`` later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from service.errors import QuotaExceeded, Unauthorized, Unavailable
from service.observability.metrics import Metrics
from service.quotas.limits import Record, rate_limit_headers, refusal
from service.quotas.tokens import TokenRegistry, token_id
from service.store.backend import (
    ADMITTED,
    OVER_CONCURRENCY,
    OVER_RPM,
    AdmitRequest,
    Settlement,
    StoreError,
    StoreUnreachable,
)
from service.store.client import Store
from service.store.keys import QuotaKeys
from service.types import Headers

log = logging.getLogger("best.quotas")

LEASE_MS = 10_000
RENEW_S = 3.0
SETTLE_DELAY_S = 0.025
_KINDS = {OVER_RPM: "rpm", OVER_CONCURRENCY: "concurrency"}


@dataclass(slots=True)
class Admission:
    """One admitted request's hold on its quotas, until ``settle``."""

    token: Record | None
    entry: str
    cost: int = 0
    keys: QuotaKeys | None = None  # None: nothing in the store to settle
    second: int = 0
    headers: Headers = field(default_factory=list)
    settled: bool = False


class Quotas:
    def __init__(
        self, registry: TokenRegistry, store: Store, metrics: Metrics, *, refuse_degraded: bool
    ) -> None:
        self._registry = registry
        self._store = store
        self._metrics = metrics
        self._refuse_degraded = refuse_degraded
        self._pending: dict[str, tuple[QuotaKeys, list[Settlement]]] = {}
        self._flush: asyncio.TimerHandle | None = None
        self._in_flight: dict[str, Admission] = {}
        self._clock_offset_ms = 0  # store clock - local clock, from the last admission
        self._tasks: set[asyncio.Task[None]] = set()
        self._renewer: asyncio.Task[None] | None = None

    @property
    def auth_enabled(self) -> bool:
        return self._registry.auth_enabled

    async def start(self) -> None:
        self._renewer = asyncio.create_task(self._renew_loop())

    async def close(self) -> None:
        """Send every pending settlement, then stop."""
        if self._renewer is not None:
            self._renewer.cancel()
        await self.flush()

    async def flush(self) -> None:
        """Send the settlements waiting for a ride now, and wait until they are applied."""
        if self._flush is not None:
            self._flush.cancel()
        self._send_pending()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- who is calling ----------------------------------------------------------------------

    async def authenticate(self, bearer: str | None) -> Record | None:
        """The caller's token record (None when auth is off); raises Unauthorized."""
        if not self._registry.auth_enabled:
            return None
        if bearer is None:
            self._metrics.auth_failures.labels("missing").inc()
            raise Unauthorized("Missing bearer token: send 'Authorization: Bearer <token>'.")
        record = await self._registry.find(token_id(bearer))
        reason = refusal(record, int(time.time() * 1000))
        if reason is not None:
            self._metrics.auth_failures.labels(reason).inc()
            raise Unauthorized(f"The API token is {reason}.")
        return record

    # -- admission ---------------------------------------------------------------------------

    async def admit(self, token: Record | None, entry: str, cost: int) -> Admission:
        """Admit a request of ``token`` reserving ``cost`` tokens; raises QuotaExceeded."""
        if token is None:
            return Admission(None, entry)
        team = self._registry.team(token.team) if token.team else None
        if not token.limited and (team is None or not team.limited):
            return Admission(token, entry)
        keys = self._store.keys.quota(token.id, token.team)
        limits = (*token.limits(), *(team.limits() if team else (0, 0, 0)))
        leased = token.tpm > 0 or token.max_concurrency > 0
        leased = leased or (team is not None and (team.tpm > 0 or team.max_concurrency > 0))
        pending = self._pending.pop(keys.token_windows, None)
        request = AdmitRequest(entry, cost, LEASE_MS if leased else 0, limits)
        settle = pending[1] if pending else []
        try:
            decision = await self._store.quota(
                keys, settle, request, local_fallback=not self._refuse_degraded
            )
        except StoreError as exc:
            if pending is not None:  # keep them for the next try
                self._queue(keys, pending[1])
            if isinstance(exc, StoreUnreachable):
                self._metrics.quota_rejections.labels("store").inc()
                raise Unavailable(
                    "Quotas cannot be checked while the shared store is unreachable.",
                    retry_after_s=1.0,
                ) from None
            raise
        self._clock_offset_ms = decision.now_ms - int(time.time() * 1000)
        side = team if decision.team_side and team is not None else token
        if decision.status != ADMITTED:
            kind = _KINDS.get(decision.status, "tpm")
            self._metrics.quota_rejections.labels(kind).inc()
            owner = "team" if decision.team_side else "token"
            raise QuotaExceeded(
                f"Rate limit reached: {_WHAT[kind]} of this {owner}.",
                retry_after_s=decision.retry_ms / 1000.0,
                headers=rate_limit_headers(
                    side.rpm,
                    decision.rpm_remaining,
                    side.tpm,
                    decision.tpm_remaining,
                    decision.retry_ms,
                ),
            )
        rpm = token.rpm or (team.rpm if team else 0)
        tpm = token.tpm or (team.tpm if team else 0)
        admission = Admission(
            token,
            entry,
            cost,
            keys if leased else None,
            decision.now_ms // 1000,
            rate_limit_headers(rpm, decision.rpm_remaining, tpm, decision.tpm_remaining),
        )
        if leased:
            self._in_flight[entry] = admission
        return admission

    # -- settlement --------------------------------------------------------------------------

    def settle(self, admission: Admission, used: int) -> None:
        """Release the lease and replace the reservation by ``used`` tokens (-1 keeps it).
        Idempotent; never awaits: the correction is queued."""
        if admission.settled:
            return
        admission.settled = True
        if admission.keys is None:
            return
        self._in_flight.pop(admission.entry, None)
        settlement = Settlement(admission.entry, admission.second, admission.cost, used)
        self._queue(admission.keys, [settlement])

    def _queue(self, keys: QuotaKeys, settlements: Sequence[Settlement]) -> None:
        pending = self._pending.get(keys.token_windows)
        if pending is None:
            self._pending[keys.token_windows] = (keys, list(settlements))
        else:
            pending[1].extend(settlements)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(SETTLE_DELAY_S, self._send_pending)

    def _send_pending(self) -> None:
        """Settlements that found no admission to ride with travel on their own."""
        self._flush = None
        pending, self._pending = self._pending, {}
        for keys, settlements in pending.values():
            task = asyncio.ensure_future(self._send(keys, settlements))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, keys: QuotaKeys, settlements: list[Settlement]) -> None:
        try:
            await self._store.quota(keys, settlements, None)
        except StoreError as exc:
            # A lease not released expires on its own; a reservation stays (the safe side).
            log.warning("settlement of %d requests failed: %s", len(settlements), exc)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(RENEW_S)
            leases: dict[str, list[str]] = {}
            for admission in self._in_flight.values():
                if admission.keys is not None:
                    leases.setdefault(admission.keys.token_leases, []).append(admission.entry)
                    if admission.keys.team_leases is not None:
                        leases.setdefault(admission.keys.team_leases, []).append(admission.entry)
            if not leases:
                continue
            until = int(time.time() * 1000) + self._clock_offset_ms + LEASE_MS
            try:
                await self._store.renew(leases, until)
            except StoreError as exc:
                log.warning("lease renewal failed: %s", exc)


_WHAT = {
    "rpm": "requests per minute",
    "tpm": "tokens per minute",
    "concurrency": "concurrent requests",
}
