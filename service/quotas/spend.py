"""Spend: what a served request cost (the provider's reported cost, or the catalog's price),
written to the usage ledger (``ledger.py``) and the spend metrics; and the budget gauges of
the dashboard's burn panel."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter

from service.observability.metrics import Metrics
from service.prices import Prices, usd_to_pico
from service.quotas.ledger import Ledger
from service.quotas.limits import MICRO, Record
from service.quotas.tokens import TokenRegistry
from service.store.backend import StoreError
from service.store.client import Store
from service.upstream.usage import Usage

log = logging.getLogger("best.quotas")

GAUGE_S = 15.0
PERIOD_LABEL = {0: "total", 1: "day", 2: "week", 3: "month"}
_SERIES_MAX = 10_000  # (team, provider, model) whose counters are remembered


@dataclass(frozen=True, slots=True)
class _SpendSeries:
    spend: Counter
    unpriced: Counter


class Spending:
    def __init__(
        self,
        registry: TokenRegistry,
        store: Store,
        metrics: Metrics,
        prices: Callable[[], Prices],
        ledger: Ledger,
    ) -> None:
        self._registry = registry
        self._store = store
        self._metrics = metrics
        self._prices = prices  # the catalog's current prices (hot-reloaded)
        self.ledger = ledger
        self._gauges: asyncio.Task[None] | None = None
        self._gauged: set[tuple[str, str]] = set()  # (team, period) with budget gauges
        self._series: dict[tuple[str, str, str], _SpendSeries] = {}

    async def start(self) -> None:
        self._gauges = asyncio.create_task(self._budget_gauge_loop())
        await self.ledger.start()

    async def close(self) -> None:
        if self._gauges is not None:
            self._gauges.cancel()
        await self.ledger.close()

    def cost(self, token: Record | None, usage: Usage | None) -> int | None:
        """What the request cost in pico-USD (None: unknown), hedges that lost included;
        each served answer goes to the ledger and the spend metrics, unpriced ones counted
        as such (at 0)."""
        if usage is None:
            return None
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
            series = self._series_of(team, served.provider, served.model)
            if cost is None:
                series.unpriced.inc()
                continue
            series.spend.inc(cost / 10**12)
            if self._metrics.token_spend is not None and token_id:
                per_token = self._metrics.token_spend.labels(
                    token_id, served.provider, served.model
                )
                per_token.inc(cost / 10**12)
            total += cost
        return total

    def _series_of(self, team: str, provider: str, model: str) -> _SpendSeries:
        """The spend counters of a (team, provider, model), resolved once."""
        key = (team, provider, model)
        series = self._series.get(key)
        if series is None:
            series = _SpendSeries(
                self._metrics.spend.labels(team, provider, model),
                self._metrics.unpriced.labels(provider, model),
            )
            if len(self._series) < _SERIES_MAX:
                self._series[key] = series
        return series

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
            labels = (team.id, PERIOD_LABEL[team.budget.period])
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
