"""Circuit breakers and provider cooldowns: which providers and pairs are out of rotation, as
every replica sees it.

Policy (docs/routing.md, "Circuit breakers" and "Cooldowns"):
- a provider's 429 cools the whole provider for its ``Retry-After`` (clamped to 1 s .. 1 h;
  without one 10 s, doubling per 429 in a row up to 5 minutes); 401/403 cool it 5 minutes;
- any other failure is evidence against the (provider, model) pair, never a verdict on its
  own: its breaker opens after ``failure_threshold`` consecutive failures, or when the fleet's
  error rate for the pair is over ``error_rate`` (``check_error_rates``, fed by the fleet's
  statistics).  Open for ``open_s``, doubling per reopening up to ``max_open_s``; then
  half-open: one probe at a time across the fleet (claimed in the store) decides; a success
  closes it.
The arithmetic runs atomically in the store (``store/lua/breaker_*.lua``; the embedded
store's twin is ``store/memory_breakers.py``), so replicas never race.

Each replica keeps the fleet's state in memory, so filtering candidates costs no store call:
a replica that changes something updates its copy at once and tells the others (a change
message); every replica also re-reads the whole state every second, the bound on staleness.
Only a half-open pair costs a store call before its attempt: the probe claim.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from service.config import Breaker
from service.routing.live import PairFigures
from service.routing.table import Candidate
from service.store.backend import BreakerRule, BreakerState, CoolRule, StoreError
from service.store.client import Store
from service.store.keys import pair_field
from service.upstream.errors import AUTH, UpstreamFailure

log = logging.getLogger("best.breakers")

BASE_MS = 10_000
CAP_MS = 300_000
AUTH_MS = 300_000
RETRY_AFTER_FLOOR_MS = 1_000
RETRY_AFTER_CEILING_MS = 3_600_000
REFRESH_S = 1.0

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"

# The fleet's figures per (provider, model) over the last ``window_s`` seconds, counting only
# attempts after ``since`` (monotonic; 0: all of the window).
FleetWindow = Callable[[float, float], Mapping[tuple[str, str], PairFigures]]


def rule_for(failure: UpstreamFailure) -> CoolRule:
    return CoolRule(
        retry_after_ms=_retry_after_ms(failure),
        fixed_ms=AUTH_MS if failure.reason == AUTH else None,
        base_ms=BASE_MS,
        cap_ms=CAP_MS,
        floor_ms=RETRY_AFTER_FLOOR_MS,
        ceiling_ms=RETRY_AFTER_CEILING_MS,
    )


def breaker_rule(config: Breaker, failure: UpstreamFailure | None = None) -> BreakerRule:
    return BreakerRule(
        threshold=config.failure_threshold,
        open_ms=int(config.open_s * 1000),
        max_open_ms=int(config.max_open_s * 1000),
        retry_after_ms=_retry_after_ms(failure) if failure is not None else None,
        floor_ms=RETRY_AFTER_FLOOR_MS,
        ceiling_ms=RETRY_AFTER_CEILING_MS,
    )


def _retry_after_ms(failure: UpstreamFailure) -> int | None:
    return None if failure.retry_after_s is None else int(failure.retry_after_s * 1000)


class Breakers:
    def __init__(self, store: Store, breaker: Callable[[], Breaker] = Breaker) -> None:
        self._store = store
        self._breaker = breaker  # the current configuration (it can be reloaded)
        self._cooling: dict[str, int] = {}  # field -> until, in local ms
        self._failing: set[str] = set()
        self._tripped: set[str] = set()  # pair breakers not closed
        self.closed_at: dict[str, float] = {}  # field -> monotonic time its breaker closed
        self._changed: dict[str, float] = {}  # field -> monotonic time of its last local change
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._store.subscribe("cool", self._on_message)
        await self.refresh()
        self._task = asyncio.create_task(self._refresh_loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _apply(self, state: BreakerState, asked: float) -> None:
        """Take the store's snapshot, read at ``asked`` (monotonic); a change this replica
        made or heard of after that is newer than the snapshot and stays."""
        skew = int(time.time() * 1000) - state.now_ms  # store ms -> local ms
        cooling = {f: until + skew for f, until in state.cooling.items()}
        tripped = set(state.tripped)
        for field, at in list(self._changed.items()):
            if at < asked:
                del self._changed[field]
                continue
            if field in self._cooling:
                cooling[field] = self._cooling[field]
            else:
                cooling.pop(field, None)
            if field in self._tripped:
                tripped.add(field)
            else:
                tripped.discard(field)
        now = time.monotonic()
        for field in self._tripped - tripped:
            self.closed_at[field] = now
        self._cooling = cooling
        self._failing = set(state.failing)
        self._tripped = tripped

    async def refresh(self) -> None:
        asked = time.monotonic()
        try:
            self._apply(await self._store.breaker_state(), asked)
        except StoreError as exc:
            log.warning("breakers: refresh failed: %s", exc)

    async def _on_message(self, message: str) -> None:
        """Another replica's change, applied without a store call: ``<kind> <until ms>
        <store now ms> <field>`` (kind: ``cool``, ``open`` or ``close``); anything else
        re-reads the whole state."""
        parts = message.split(" ", 3)
        if len(parts) != 4 or not parts[1].isdigit() or not parts[2].isdigit():
            await self.refresh()
            return
        kind, until, now, field = parts[0], int(parts[1]), int(parts[2]), parts[3]
        if kind == "close":
            self._closed_locally(field)
            return
        if kind == "open":
            self._tripped.add(field)
            self._changed[field] = time.monotonic()
        self._cool_locally(field, until, now)

    async def _announce(self, kind: str, until: int, now: int, field: str) -> None:
        """Tell the other replicas at once (they also re-read everything every second)."""
        try:
            await self._store.publish(f"cool:{kind} {until} {now} {field}")
        except StoreError as exc:
            log.warning("change of %s not announced: %s", field, exc)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            await self.refresh()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @property
    def tripped(self) -> frozenset[str]:
        """Pair fields whose breaker is not closed (open or half-open)."""
        return frozenset(self._tripped)

    # -- per request (no store call) ---------------------------------------------------------

    def until(self, candidate: Candidate, now_ms: int) -> int:
        """Local ms until which ``candidate`` cools or its breaker is open (0 when neither)."""
        cooling = self._cooling
        if not cooling:
            return 0
        until = max(cooling.get(candidate.provider_field, 0), cooling.get(candidate.pair_field, 0))
        return until if until > now_ms else 0

    def in_force(self) -> dict[str, int]:
        """Every cooldown in force: field -> until (local ms)."""
        now = time.time() * 1000
        return {f: u for f, u in self._cooling.items() if u > now}

    def until_provider(self, candidate: Candidate, now_ms: int) -> int:
        """Local ms until which ``candidate``'s whole provider cools (429s, bad keys), or 0."""
        until = self._cooling.get(candidate.provider_field, 0)
        return until if until > now_ms else 0

    def half_open(self, candidate: Candidate) -> bool:
        """The pair's breaker tripped and its open period is over: only a probe may try it."""
        return bool(self._tripped) and candidate.pair_field in self._tripped

    def available(self, candidates: list[Candidate]) -> tuple[list[Candidate], float]:
        """The candidates not cooling and without an open breaker (half-open ones included:
        they are tried only with the probe), and (when none is left) seconds until the first
        recovers."""
        if not self._cooling:
            return candidates, 0.0
        now = int(time.time() * 1000)
        free = [c for c in candidates if not self.until(c, now)]
        if free:
            return free, 0.0
        return [], (min(self.until(c, now) for c in candidates) - now) / 1000.0

    def breaker_state(self, candidate: Candidate) -> str:
        """``closed``, ``open`` or ``half_open`` (a provider-wide cooldown is not a breaker)."""
        if candidate.pair_field not in self._tripped:
            return CLOSED
        return (
            OPEN if self._cooling.get(candidate.pair_field, 0) > time.time() * 1000 else HALF_OPEN
        )

    def state(self, candidate: Candidate) -> int:
        """Cooling until (local ms); -1 when not cooling but recently failed; 0 when healthy."""
        until = self.until(candidate, int(time.time() * 1000))
        if until:
            return until
        failing = self._failing
        return -1 if candidate.pair_field in failing or candidate.provider_field in failing else 0

    # -- probes ------------------------------------------------------------------------------

    async def claim_probe(self, candidate: Candidate, owner: str, lease_s: float) -> bool:
        """Claim the fleet's one probe of a half-open pair; False: someone else probes."""
        try:
            return await self._store.breaker_probe(
                candidate.pair_field, owner, max(1, int(lease_s * 1000))
            )
        except StoreError as exc:
            log.warning("probe of %s not claimed: %s", candidate.pair_field, exc)
            return False

    def release_probe(self, candidate: Candidate, owner: str) -> None:
        """The probe's attempt ended without a verdict (cancelled): let another probe now."""
        self._spawn(self._release(candidate.pair_field, owner))

    async def _release(self, field: str, owner: str) -> None:
        try:
            await self._store.breaker_release(field, owner)
        except StoreError as exc:
            log.warning("probe of %s not released: %s", field, exc)

    # -- after an attempt --------------------------------------------------------------------

    async def failed(self, candidate: Candidate, failure: UpstreamFailure) -> None:
        """Record ``failure`` of ``candidate`` fleet-wide (a failure that depends on the
        request, not the provider, counts for nothing)."""
        if failure.scope == "none":
            return
        if failure.scope == "provider":
            field = candidate.provider_field
            try:
                until, now = await self._store.breaker_cool(field, rule_for(failure))
            except StoreError as exc:
                log.warning("cooldown of %s not recorded: %s", field, exc)
                return
            self._cool_locally(field, until, now)
            await self._announce("cool", until, now, field)
            return
        field = candidate.pair_field
        self._failing.add(field)
        try:
            result = await self._store.breaker_fail(
                field, breaker_rule(self._breaker(), failure), trip=False
            )
        except StoreError as exc:
            log.warning("failure of %s not recorded: %s", field, exc)
            return
        await self._opened(field, result.open_until_ms, result.now_ms, result.opened)

    async def check_error_rates(self, fleet: FleetWindow) -> None:
        """Open the breaker of a closed pair whose fleet-wide error rate is over the limit.
        Only attempts since the breaker last closed count: the failures that opened it
        before are no evidence against the pair the probe just proved."""
        rule = self._breaker()
        for (provider, model), fig in fleet(rule.window_s, 0.0).items():
            if fig.attempts < rule.min_attempts or fig.error_rate < rule.error_rate:
                continue
            field = pair_field(provider, model)
            closed_at = self.closed_at.get(field)
            if closed_at is not None:
                fig = fleet(rule.window_s, closed_at).get((provider, model), fig)
                if fig.attempts < rule.min_attempts or fig.error_rate < rule.error_rate:
                    continue
            if field in self._tripped:
                continue
            await self.trip(provider, model, field)

    async def trip(self, provider: str, model: str, field: str) -> None:
        """The fleet's error rate for a closed pair is over the limit: open its breaker."""
        try:
            result = await self._store.breaker_fail(field, breaker_rule(self._breaker()), trip=True)
        except StoreError as exc:
            log.warning("breaker of %s not tripped: %s", field, exc)
            return
        if result.opened:
            log.warning("breaker of %s/%s opened: error rate over the limit", provider, model)
        await self._opened(field, result.open_until_ms, result.now_ms, result.opened)

    async def _opened(self, field: str, until: int, now: int, opened: bool) -> None:
        if not until:
            return
        self._tripped.add(field)
        self._changed[field] = time.monotonic()
        self._cool_locally(field, until, now)
        if opened:
            # Announced before the failed request is answered: the client's next request,
            # whichever replica takes it, finds the breaker open.
            await self._announce("open", until, now, field)

    def _closed_locally(self, field: str) -> None:
        self._changed[field] = time.monotonic()
        if field in self._tripped:
            self._tripped.discard(field)
            self.closed_at[field] = time.monotonic()
        if field in self._cooling:
            self._cooling = {f: u for f, u in self._cooling.items() if f != field}

    def _cool_locally(self, field: str, until: int, now: int) -> None:
        local = until + int(time.time() * 1000) - now
        if local > self._cooling.get(field, 0):
            self._cooling = {**self._cooling, field: local}
            self._changed[field] = time.monotonic()

    def succeeded(self, candidate: Candidate) -> None:
        """A success resets the failure counts of what served it and closes its breaker."""
        failing, tripped = self._failing, self._tripped
        if not failing and not tripped:
            return
        fields = [
            f
            for f in (candidate.pair_field, candidate.provider_field)
            if f in failing or f in tripped
        ]
        if not fields:
            return
        failing.difference_update(fields)
        was_tripped = candidate.pair_field in tripped
        if was_tripped:
            self._closed_locally(candidate.pair_field)
        self._spawn(self._close(fields, candidate.pair_field if was_tripped else None))

    async def _close(self, fields: list[str], breaker: str | None) -> None:
        try:
            closed = await self._store.breaker_close(fields)
        except StoreError as exc:
            log.warning("failure counts of %s not reset: %s", fields, exc)
            return
        if closed and breaker is not None:
            await self._announce("close", 0, 0, breaker)
