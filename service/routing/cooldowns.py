"""Cooldowns: which providers and pairs are out of rotation, as every replica sees it.

Policy:
- ``Retry-After`` (any form) is honoured, clamped to 1 s .. 1 h;
- 401/403 cool the whole provider for 5 minutes;
- otherwise 10 s, doubling per consecutive failure, capped at 5 minutes; a success resets.
The arithmetic runs atomically in the store (``cool.lua``) so replicas never race.

Each replica keeps the fleet's cooldowns in memory, so filtering candidates costs no store
call: a replica that cools something updates its copy at once and tells the others (a change
message); every replica also re-reads the whole state every second, the bound on staleness.
"""

from __future__ import annotations

import asyncio
import logging
import time

from service.routing.table import Candidate
from service.store.backend import CoolRule, RoutingState, StoreError
from service.store.client import Store
from service.upstream.errors import AUTH, UpstreamFailure

log = logging.getLogger("best.cooldowns")

BASE_MS = 10_000
CAP_MS = 300_000
AUTH_MS = 300_000
RETRY_AFTER_FLOOR_MS = 1_000
RETRY_AFTER_CEILING_MS = 3_600_000
REFRESH_S = 1.0


def rule_for(failure: UpstreamFailure) -> CoolRule:
    return CoolRule(
        retry_after_ms=-1 if failure.retry_after_s is None else int(failure.retry_after_s * 1000),
        fixed_ms=AUTH_MS if failure.reason == AUTH else -1,
        base_ms=BASE_MS,
        cap_ms=CAP_MS,
        floor_ms=RETRY_AFTER_FLOOR_MS,
        ceiling_ms=RETRY_AFTER_CEILING_MS,
    )


class Cooldowns:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._cooling: dict[str, int] = {}  # field -> until, in local ms
        self._failing: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._store.subscribe("cool", self._on_message)
        await self.refresh()
        self._task = asyncio.create_task(self._refresh_loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _apply(self, state: RoutingState) -> None:
        skew = int(time.time() * 1000) - state.now_ms  # store ms -> local ms
        self._cooling = {f: until + skew for f, until in state.cooling.items()}
        self._failing = set(state.failing)

    async def refresh(self) -> None:
        try:
            self._apply(await self._store.routing_state())
        except StoreError as exc:
            log.warning("cooldowns: refresh failed: %s", exc)

    async def _on_message(self, _: str) -> None:
        await self.refresh()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            await self.refresh()

    # -- per request (no store call) ---------------------------------------------------------

    def until(self, candidate: Candidate, now_ms: int) -> int:
        """Local ms until which ``candidate`` cools (0 when it does not)."""
        cooling = self._cooling
        if not cooling:
            return 0
        until = max(cooling.get(candidate.provider_field, 0), cooling.get(candidate.pair_field, 0))
        return until if until > now_ms else 0

    def until_provider(self, candidate: Candidate, now_ms: int) -> int:
        """Local ms until which ``candidate``'s whole provider cools (429s, bad keys), or 0."""
        until = self._cooling.get(candidate.provider_field, 0)
        return until if until > now_ms else 0

    def available(self, candidates: list[Candidate]) -> tuple[list[Candidate], float]:
        """The candidates not cooling, and (when none is) seconds until the first recovers."""
        if not self._cooling:
            return candidates, 0.0
        now = int(time.time() * 1000)
        free = [c for c in candidates if not self.until(c, now)]
        if free:
            return free, 0.0
        return [], (min(self.until(c, now) for c in candidates) - now) / 1000.0

    def state(self, candidate: Candidate) -> int:
        """Cooling until (local ms); -1 when not cooling but recently failed; 0 when healthy."""
        until = self.until(candidate, int(time.time() * 1000))
        if until:
            return until
        failing = self._failing
        return -1 if candidate.pair_field in failing or candidate.provider_field in failing else 0

    # -- after an attempt --------------------------------------------------------------------

    async def failed(self, candidate: Candidate, failure: UpstreamFailure) -> None:
        """Record ``failure`` of ``candidate`` fleet-wide (a failure that depends on the
        request, not the provider, cools nothing)."""
        if failure.scope == "none":
            return
        field = candidate.provider_field if failure.scope == "provider" else candidate.pair_field
        try:
            until, now = await self._store.cool(field, rule_for(failure))
            await self._store.publish("cool:" + field)
        except StoreError as exc:
            log.warning("cooldown of %s not recorded: %s", field, exc)
            return
        local = until + int(time.time() * 1000) - now
        if local > self._cooling.get(field, 0):
            self._cooling = {**self._cooling, field: local}
        self._failing.add(field)

    def succeeded(self, candidate: Candidate) -> None:
        """A success resets the failure counts of what served it."""
        failing = self._failing
        if not failing:
            return
        fields = [f for f in (candidate.pair_field, candidate.provider_field) if f in failing]
        if not fields:
            return
        failing.difference_update(fields)
        task = asyncio.ensure_future(self._reset(fields))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reset(self, fields: list[str]) -> None:
        try:
            await self._store.reset_failures(fields)
        except StoreError as exc:
            log.warning("failure counts of %s not reset: %s", fields, exc)
