"""Admission: the quota side of a request, start to end, and the one object the edge uses
(``gw.quotas``: ``authenticate``, ``admit``, ``settle``).  Settlement batching lives in
``settlement.py``, pricing and the ledger in ``spend.py``, lease renewal in ``leases.py``.

- ``authenticate`` reads the local registry cache: no store call.
- ``admit`` makes no store call for a token without limits, and one script call for a limited
  one: it carries the settlements waiting for that token, then checks the token's limits and
  its team's atomically (store/lua/quota.lua).
- A token or team with a budget also reserves the request's worst-case cost (its prompt
  estimate and completion cap at the highest price among its candidates) in that same call.
- ``settle`` queues a finished request's correction (real tokens and cost, lease release).
  It rides with the token's next admission, or travels on its own after a short wait.
  Every served request, limited or not, is also written to the usage ledger (batched).
- Leases of requests in flight are renewed until they settle (``leases.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from service.errors import BudgetExceeded, QuotaExceeded, Unauthorized, Unavailable
from service.observability.metrics import Metrics
from service.prices import Pair, Prices, to_micro
from service.quotas.leases import LEASE_MS, Leases
from service.quotas.ledger import Ledger
from service.quotas.limits import (
    MICRO,
    Estimate,
    Record,
    budget_headers,
    rate_limit_headers,
    refusal,
)
from service.quotas.settlement import SETTLE_DELAY_S, SETTLE_PATIENT_S, Settlements
from service.quotas.spend import Spending
from service.quotas.tokens import TokenRegistry, token_id
from service.store.backend import (
    NO_BUDGET,
    NO_LIMITS,
    AdmitRequest,
    Charge,
    QuotaDecision,
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

_KINDS = {Status.OVER_RPM: "rpm", Status.OVER_CONCURRENCY: "concurrency"}
# Looked up once: an enum member's lookup on its class costs an attribute search per request.
_ADMITTED = Status.ADMITTED
_NOTHING, _RESERVATION = Charge.NOTHING, Charge.RESERVATION


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
        self._refuse_degraded = refuse_degraded
        self.settlements = Settlements(store)
        self.leases = Leases(store)
        self.spending = Spending(registry, store, metrics, prices, ledger or Ledger(store))

    @property
    def ledger(self) -> Ledger:
        return self.spending.ledger

    @property
    def auth_enabled(self) -> bool:
        return self._registry.auth_enabled

    async def start(self) -> None:
        await self.leases.start()
        await self.spending.start()

    async def close(self) -> None:
        """Send every pending settlement, then stop."""
        await self.leases.close()
        await self.settlements.flush()
        await self.spending.close()

    async def flush(self) -> None:
        """Send the settlements waiting for a ride now, and wait until they are applied."""
        await self.settlements.flush()

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
        limits, team_limits = token.limits, team.limits if team is not None else NO_LIMITS
        rpm, tpm, concurrency = limits
        team_rpm, team_tpm, team_concurrency = team_limits
        budgeted = token.budgeted or (team is not None and team.budgeted)
        reserve = 0
        if budgeted:
            worst = self._prices().worst_case(pairs, estimate.prompt_tokens, estimate.completion)
            reserve = to_micro(worst)
        leased = tpm > 0 or concurrency > 0 or budgeted or team_tpm > 0 or team_concurrency > 0
        settle = self.settlements.ride(keys)
        request = AdmitRequest(
            entry=entry,
            cost=cost,
            lease_ms=LEASE_MS if leased else 0,
            limits=limits,
            team_limits=team_limits,
            reserve=reserve,
            budget=token.budget,
            team_budget=team.budget if team is not None else NO_BUDGET,
        )
        try:
            decision = await self._store.quota(
                keys, settle, request, local_fallback=not self._refuse_degraded
            )
        except StoreError as exc:
            self.settlements.queue(keys, settle)  # kept for the next try
            if isinstance(exc, StoreUnreachable):
                self._metrics.quota_rejections.labels("store").inc()
                raise Unavailable(
                    "Quotas cannot be checked while the shared store is unreachable.",
                    retry_after_s=1.0,
                ) from None
            raise
        self.leases.clock_offset_ms = decision.now_ms - int(time.time() * 1000)
        spend = budget_headers(decision.budget_remaining) if budgeted else []
        if decision.status is not _ADMITTED:
            self._refuse(decision, token, team, spend)
        admission = Admission(
            token,
            entry,
            cost,
            keys if leased else None,
            decision.now_ms // 1000,
            rate_limit_headers(
                rpm or team_rpm, decision.rpm_remaining, tpm or team_tpm, decision.tpm_remaining
            )
            + spend,
            budgeted=budgeted,
        )
        roomy = _roomy(decision.tpm_remaining, (tpm, team_tpm), 10 * cost)
        slots = (concurrency, team_concurrency)
        if roomy and not budgeted and _roomy(decision.concurrency_remaining, slots, 10):
            admission.patience = SETTLE_PATIENT_S
        if leased:
            self.leases.hold(entry, keys)
        return admission

    def _refuse(
        self, decision: QuotaDecision, token: Record, team: Record | None, spend: Headers
    ) -> NoReturn:
        """Raise the refusal ``decision`` says, with the limiting side's figures."""
        side = team if decision.team_side and team is not None else token
        owner = "team" if decision.team_side else "token"
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

    # -- settlement --------------------------------------------------------------------------

    def settle(self, admission: Admission, usage: Usage | None) -> None:
        """Release the lease and replace the reservations by what the request used (None:
        unknown, the reservations stand as charged); write it to the ledger.  Idempotent;
        never awaits: the correction is queued."""
        if admission.settled:
            return
        admission.settled = True
        cost = self.spending.cost(admission.token, usage)
        if admission.keys is None:
            return
        self.leases.release(admission.entry)
        settlement = Settlement(
            entry=admission.entry,
            second=admission.second,
            reserved=admission.cost,
            used=usage.tokens if usage is not None else None,
            cost=(
                _NOTHING
                if not admission.budgeted
                else _RESERVATION
                if cost is None
                else to_micro(cost)
            ),
        )
        self.settlements.queue(admission.keys, [settlement], admission.patience)


_PERIOD = {0: "all time", 1: "UTC day", 2: "ISO week", 3: "UTC month"}
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
