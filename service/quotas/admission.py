"""Admission and settlement: the quota side of a request, start to end.

- ``authenticate`` reads the local registry cache: no store call.
- ``admit`` makes no store call for a token without limits, and one script call for a limited
  one: it carries the settlements waiting for that token, then checks the token's limits and
  its team's atomically (store/lua/quota.lua).
- A token or team with a budget also reserves the request's worst-case cost (its prompt
  estimate and completion cap at the highest price among its candidates) in that same call.
- ``settle`` queues a finished request's correction (real tokens and cost, lease release).
  It rides with the token's next admission, or travels on its own after ``SETTLE_DELAY_S``.
  Every served request, limited or not, is also written to the usage ledger (batched).
- Leases of requests in flight are renewed every ``RENEW_S``; a replica that dies stops
  renewing, and its leases expire ``LEASE_MS`` later.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from service.errors import BudgetExceeded, QuotaExceeded, Unauthorized, Unavailable
from service.observability.metrics import Metrics
from service.prices import Pair, Prices, to_micro, usd_to_pico
from service.quotas.ledger import Ledger
from service.quotas.limits import (
    MICRO,
    Estimate,
    Record,
    budget_headers,
    rate_limit_headers,
    refusal,
)
from service.quotas.tokens import TokenRegistry, token_id
from service.store.backend import (
    NO_BUDGET,
    NO_LIMITS,
    AdmitRequest,
    Charge,
    Settlement,
    Status,
    StoreError,
    StoreUnreachable,
)
from service.store.client import Store
from service.store.keys import QuotaKeys
from service.types import Headers
from service.upstream.usage import Usage

log = logging.getLogger("best.quotas")

LEASE_MS = 10_000
RENEW_S = 3.0
SETTLE_DELAY_S = 0.025
# A settlement of a request admitted far from its limits (a tenth of each, and at least ten
# requests' worth, still free; no budget) waits longer for a ride: holding its lease and
# reservation a little longer refuses nobody, and a token that comes back to this replica
# within that time costs Redis one visit per request instead of two.  A finished request's
# lease is no longer renewed and has at least LEASE_MS - RENEW_S left: the wait stays well
# inside it, so the settlement still finds its lease (and corrects the reservation).
SETTLE_PATIENT_S = 4.0
GAUGE_S = 15.0
_KINDS = {Status.OVER_RPM: "rpm", Status.OVER_CONCURRENCY: "concurrency"}


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
    budgeted: bool = False  # a budget holds a reservation: settle with the real cost
    patience: float = SETTLE_DELAY_S  # how long its settlement may wait for a ride


@dataclass(slots=True)
class _Waiting:
    """A token's settlements waiting for a ride, and when they travel alone."""

    keys: QuotaKeys
    settlements: list[Settlement]
    due: float  # event-loop time


class Quotas:
    def __init__(
        self,
        registry: TokenRegistry,
        store: Store,
        metrics: Metrics,
        *,
        refuse_degraded: bool,
        prices: Callable[[], Prices] = Prices,
        ledger: Ledger | None = None,
    ) -> None:
        self._registry = registry
        self._store = store
        self._metrics = metrics
        self._prices = prices  # the catalog's current prices (hot-reloaded)
        self.ledger = ledger or Ledger(store)
        self._refuse_degraded = refuse_degraded
        self._pending: dict[str, _Waiting] = {}  # by token windows key
        # (due, token windows key), soonest first; an entry whose settlements rode meanwhile,
        # or whose due was brought forward, is skipped when it comes up
        self._dues: list[tuple[float, str]] = []
        self._flush: asyncio.TimerHandle | None = None  # at the soonest due
        self._in_flight: dict[str, Admission] = {}
        self._clock_offset_ms = 0  # store clock - local clock, from the last admission
        self._tasks: set[asyncio.Task[None]] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._gauges: asyncio.Task[None] | None = None
        self._gauged: set[tuple[str, str]] = set()  # (team, period) with budget gauges

    @property
    def auth_enabled(self) -> bool:
        return self._registry.auth_enabled

    async def start(self) -> None:
        self._renewer = asyncio.create_task(self._renew_loop())
        self._gauges = asyncio.create_task(self._budget_gauge_loop())
        await self.ledger.start()

    async def close(self) -> None:
        """Send every pending settlement, then stop."""
        for task in (self._renewer, self._gauges):
            if task is not None:
                task.cancel()
        await self.flush()
        await self.ledger.close()

    async def flush(self) -> None:
        """Send the settlements waiting for a ride now, and wait until they are applied."""
        if self._flush is not None:
            self._flush.cancel()
        self._send_pending(everything=True)
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

    async def admit(
        self,
        token: Record | None,
        entry: str,
        estimate: Estimate,
        pairs: Sequence[Pair] = (),
    ) -> Admission:
        """Admit a request of ``token`` that may be served by any of ``pairs``; raises
        QuotaExceeded or BudgetExceeded."""
        cost = estimate.tokens
        if token is None:
            return Admission(None, entry, cost)
        team = self._registry.team(token.team) if token.team else None
        if not token.limited and (team is None or not team.limited):
            return Admission(token, entry, cost)
        keys = self._store.keys.quota(token.id, token.team)
        budgeted = token.budgeted or (team is not None and team.budgeted)
        reserve = 0
        if budgeted:
            worst = self._prices().worst_case(pairs, estimate.prompt_tokens, estimate.completion)
            reserve = to_micro(worst)
        leased = token.tpm > 0 or token.max_concurrency > 0 or budgeted
        leased = leased or (team is not None and (team.tpm > 0 or team.max_concurrency > 0))
        pending = self._pending.pop(keys.token_windows, None)
        request = AdmitRequest(
            entry=entry,
            cost=cost,
            lease_ms=LEASE_MS if leased else 0,
            limits=token.limits,
            team_limits=team.limits if team else NO_LIMITS,
            reserve=reserve,
            budget=token.budget,
            team_budget=team.budget if team else NO_BUDGET,
        )
        settle = pending.settlements if pending else []
        try:
            decision = await self._store.quota(
                keys, settle, request, local_fallback=not self._refuse_degraded
            )
        except StoreError as exc:
            if pending is not None:  # keep them for the next try
                self._queue(keys, pending.settlements)
            if isinstance(exc, StoreUnreachable):
                self._metrics.quota_rejections.labels("store").inc()
                raise Unavailable(
                    "Quotas cannot be checked while the shared store is unreachable.",
                    retry_after_s=1.0,
                ) from None
            raise
        self._clock_offset_ms = decision.now_ms - int(time.time() * 1000)
        side = team if decision.team_side and team is not None else token
        owner = "team" if decision.team_side else "token"
        spend = budget_headers(decision.budget_remaining) if budgeted else []
        if decision.status == Status.OVER_BUDGET:
            self._metrics.quota_rejections.labels("budget").inc()
            when = "until its period resets" if decision.retry_ms else "(it never resets)"
            if 0 < decision.retry_ms <= 1000:
                when = "until requests in flight settle"
            raise BudgetExceeded(
                f"Spend budget of this {owner} is used up {when}: "
                f"{(side.budget.micro or 0) / MICRO:.2f} USD per {_PERIOD[side.budget.period]}.",
                retry_after_s=decision.retry_ms / 1000.0 if decision.retry_ms else None,
                headers=spend,
            )
        if decision.status != Status.ADMITTED:
            kind = _KINDS.get(decision.status, "tpm")
            self._metrics.quota_rejections.labels(kind).inc()
            raise QuotaExceeded(
                f"Rate limit reached: {_WHAT[kind]} of this {owner}.",
                retry_after_s=decision.retry_ms / 1000.0,
                headers=rate_limit_headers(
                    side.rpm,
                    decision.rpm_remaining,
                    side.tpm,
                    decision.tpm_remaining,
                    decision.retry_ms,
                )
                + spend,
            )
        rpm = token.rpm or (team.rpm if team else 0)
        tpm = token.tpm or (team.tpm if team else 0)
        admission = Admission(
            token,
            entry,
            cost,
            keys if leased else None,
            decision.now_ms // 1000,
            rate_limit_headers(rpm, decision.rpm_remaining, tpm, decision.tpm_remaining) + spend,
            budgeted=budgeted,
        )
        tpms = (token.tpm, team.tpm if team else 0)
        slots = (token.max_concurrency, team.max_concurrency if team else 0)
        roomy = _roomy(decision.tpm_remaining, tpms, 10 * cost)
        if roomy and not budgeted and _roomy(decision.concurrency_remaining, slots, 10):
            admission.patience = SETTLE_PATIENT_S
        if leased:
            self._in_flight[entry] = admission
        return admission

    # -- settlement --------------------------------------------------------------------------

    def settle(self, admission: Admission, usage: Usage | None) -> None:
        """Release the lease and replace the reservations by what the request used (None:
        unknown, the reservations stand as charged); write it to the ledger.  Idempotent;
        never awaits: the correction is queued."""
        if admission.settled:
            return
        admission.settled = True
        cost = self._cost(admission, usage)
        if admission.keys is None:
            return
        self._in_flight.pop(admission.entry, None)
        settlement = Settlement(
            entry=admission.entry,
            second=admission.second,
            reserved=admission.cost,
            used=usage.tokens if usage is not None else None,
            cost=(
                Charge.NOTHING
                if not admission.budgeted
                else Charge.RESERVATION
                if cost is None
                else to_micro(cost)
            ),
        )
        self._queue(admission.keys, [settlement], admission.patience)

    def _cost(self, admission: Admission, usage: Usage | None) -> int | None:
        """What the request cost in pico-USD (None: unknown), hedges that lost included;
        each served answer goes to the ledger and the spend metrics, unpriced ones counted
        as such (at 0)."""
        if usage is None:
            return None
        token = admission.token
        token_id = token.id if token is not None else ""
        team = (token.team or "") if token is not None else ""
        total = 0
        for served in (usage, *usage.also):
            if not served.provider:
                continue
            if served.cost_usd is not None:
                cost: int | None = usd_to_pico(served.cost_usd)
            else:
                price = self._prices().of(served.provider, served.model)
                cost = price.cost(served.prompt_tokens, served.completion_tokens) if price else None
            self.ledger.record(token_id, team, served, cost)
            if cost is None:
                self._metrics.unpriced.labels(served.provider, served.model).inc()
                continue
            self._metrics.spend.labels(team, served.provider, served.model).inc(cost / 10**12)
            if self._metrics.token_spend is not None and token_id:
                per_token = self._metrics.token_spend.labels(
                    token_id, served.provider, served.model
                )
                per_token.inc(cost / 10**12)
            total += cost
        return total

    def _queue(
        self, keys: QuotaKeys, settlements: Sequence[Settlement], wait: float = SETTLE_DELAY_S
    ) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + wait
        waiting = self._pending.get(keys.token_windows)
        if waiting is None:
            self._pending[keys.token_windows] = _Waiting(keys, list(settlements), due)
        else:
            waiting.settlements.extend(settlements)
            if due >= waiting.due:
                return  # the timer is set for the earlier due already
            waiting.due = due
        heapq.heappush(self._dues, (due, keys.token_windows))
        if self._flush is None or due < self._flush.when():
            if self._flush is not None:
                self._flush.cancel()
            self._flush = loop.call_at(due, self._send_pending)

    def _send_pending(self, everything: bool = False) -> None:
        """Settlements whose wait for an admission of their token to ride with is over travel
        on their own (``everything``: all of them, now).  The others keep waiting: under load
        most ride, and cost no script call of their own."""
        self._flush = None
        loop = asyncio.get_running_loop()
        if everything:
            going = list(self._pending.values())
            self._pending.clear()
            self._dues.clear()
        else:
            now = loop.time() + 0.001  # a timer may fire a hair early
            going = []
            while self._dues and self._dues[0][0] <= now:
                key = heapq.heappop(self._dues)[1]
                waiting = self._pending.get(key)
                if waiting is not None and waiting.due <= now:
                    going.append(self._pending.pop(key))
            # The timer waits for the soonest due still waiting: most entries rode with an
            # admission meanwhile, and must not each cost a firing.
            while self._dues:
                due, key = self._dues[0]
                waiting = self._pending.get(key)
                if waiting is not None and waiting.due == due:
                    self._flush = loop.call_at(due, self._send_pending)
                    break
                heapq.heappop(self._dues)
        for waiting in going:
            task = asyncio.ensure_future(self._send(waiting.keys, waiting.settlements))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, keys: QuotaKeys, settlements: list[Settlement]) -> None:
        try:
            await self._store.quota(keys, settlements, None)
        except StoreError as exc:
            # A lease not released expires on its own; a reservation stays (the safe side).
            log.warning("settlement of %d requests failed: %s", len(settlements), exc)

    async def _budget_gauge_loop(self) -> None:
        """Export each budgeted team's limit and spend for the dashboard's burn panel (one
        read per team every ``GAUGE_S``; per-token budgets are not exported: unbounded)."""
        while True:
            await asyncio.sleep(GAUGE_S)
            try:
                await self.export_budgets()
            except StoreError as exc:
                log.debug("budget gauges: %s", exc)

    async def export_budgets(self) -> None:
        seen: set[tuple[str, str]] = set()
        for team in self._registry.cached("team"):
            if team.revoked or not team.budgeted:
                continue
            labels = (team.id, _PERIOD_LABEL[team.budget.period])
            keys = self._store.keys.quota("-", team.id)
            assert keys.team_budget is not None
            spend = await self._store.spend(keys.team_budget, team.budget.period)
            self._metrics.budget_limit.labels(*labels).set((team.budget.micro or 0) / MICRO)
            self._metrics.budget_spent.labels(*labels).set(spend.spent / MICRO)
            seen.add(labels)
        for labels in self._gauged - seen:
            self._metrics.budget_limit.remove(*labels)
            self._metrics.budget_spent.remove(*labels)
        self._gauged = seen

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


_PERIOD = {0: "all time", 1: "UTC day", 2: "ISO week", 3: "UTC month"}
_PERIOD_LABEL = {0: "total", 1: "day", 2: "week", 3: "month"}
_WHAT = {
    "rpm": "requests per minute",
    "tpm": "tokens per minute",
    "concurrency": "concurrent requests",
}


def _roomy(remaining: int | None, limits: Sequence[int], least: int) -> bool:
    """Far from a limit: none is set, or a tenth of the tightest one, and at least ``least``
    (ten requests' worth), is still free."""
    bound = min((n for n in limits if n > 0), default=0)
    return bound == 0 or remaining is None or remaining >= max(least, bound // 10)
