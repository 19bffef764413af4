"""The usage ledger: per UTC day, token, team, provider and model, the requests served, their
prompt and completion tokens, their cost, how many had no price and how many were answered
from the response cache (counted in the requests too, with no tokens and no cost).

Requests are added up in memory and written every ``FLUSH_S`` in one batch (a few commands per
replica and second, whatever the traffic).  A batch the store could not take is kept and sent
with the next one, so an outage delays rows, it does not lose them (up to ``MAX_PENDING``
distinct rows).  The ledger is durable like the registry: Redis with persistence, or the
embedded store's ``DATA_DIR``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal, get_args

from service.errors import BadRequest
from service.prices import PICO_PER_USD
from service.store.backend import LedgerKey, StoreError
from service.store.client import Store
from service.upstream.usage import Usage

log = logging.getLogger("best.ledger")

FLUSH_S = 1.0
MAX_PENDING = 100_000
# No ledger day precedes the first version of BEST that wrote one, and none follows today:
# a range is read only where days can hold rows, so any range is answered exactly, its cost
# bounded by the days since this epoch.
EPOCH = date(2024, 1, 1)
GroupBy = Literal["team", "token", "provider", "model", "day"]
GROUPS: tuple[GroupBy, ...] = get_args(GroupBy)
WIDTH = 6  # requests, prompt, completion, cost (pico-USD), unpriced, cached
_FIELD = {"day": 0, "token": 1, "team": 2, "provider": 3, "model": 4}


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _day(value: str | None, name: str, default: date) -> date:
    if value is None:
        return default
    try:
        if not _DATE.fullmatch(value):
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name} must be a date as YYYY-MM-DD", param=name) from None


class Ledger:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: dict[LedgerKey, list[int]] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._second = -1  # the last second whose day is known, and that day
        self._day = ""

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.flush()

    def _today(self) -> str:
        """Today's UTC date, ISO; worked out again only when the second changes."""
        second = int(time.time())
        if second != self._second:
            self._second, self._day = second, datetime.fromtimestamp(second, UTC).date().isoformat()
        return self._day

    def record(self, token: str, team: str, usage: Usage, cost_pico: int | None) -> None:
        """Count one served request (``cost_pico`` None: no price known)."""
        key = (self._today(), token, team, usage.provider, usage.model)
        row = self._pending.get(key)
        if row is None:
            if len(self._pending) >= MAX_PENDING:
                log.error("usage ledger: %d rows wait for the store; dropping one", MAX_PENDING)
                return
            row = self._pending[key] = [0] * WIDTH
        row[0] += 1
        row[1] += usage.prompt_tokens
        row[2] += usage.completion_tokens
        if cost_pico is None:
            row[4] += 1
        else:
            row[3] += cost_pico

    def record_cached(self, token: str, team: str, provider: str, model: str) -> None:
        """Count one request answered from the response cache (``provider`` and ``model``
        wrote the answer when it was stored)."""
        key = (self._today(), token, team, provider, model)
        row = self._pending.get(key)
        if row is None:
            if len(self._pending) >= MAX_PENDING:
                log.error("usage ledger: %d rows wait for the store; dropping one", MAX_PENDING)
                return
            row = self._pending[key] = [0] * WIDTH
        row[0] += 1
        row[5] += 1

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            await self.flush()

    async def flush(self) -> None:
        """Write what was counted; on failure keep it for the next flush."""
        async with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, {}
            try:
                await self._store.add_usage(batch)
            except StoreError as exc:
                log.warning("usage ledger: %d rows kept for later: %s", len(batch), exc)
                for key, row in batch.items():
                    mine = self._pending.setdefault(key, [0] * WIDTH)
                    for i, value in enumerate(row):
                        mine[i] += value

    async def query(
        self, group_by: str, start: str | None, end: str | None
    ) -> list[dict[str, Any]]:
        """Rows of the inclusive UTC days ``start``..``end`` (default: this month so far),
        grouped by ``group_by``, most expensive first; none when ``start`` is after ``end``."""
        if group_by not in GROUPS:
            raise BadRequest(f"group_by must be one of {', '.join(GROUPS)}", param="group_by")
        today = datetime.now(UTC).date()
        last = _day(end, "to", today)
        first = _day(start, "from", last.replace(day=1))
        first, last = max(first, EPOCH), min(last, today)
        if first > last:
            return []
        await self.flush()  # this replica's latest requests are in the answer
        days = [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
        return summarise(await self._store.read_usage(days), group_by)


def summarise(rows: Iterable[tuple[LedgerKey, list[int]]], group_by: str) -> list[dict[str, Any]]:
    index = _FIELD[group_by]
    totals: dict[str, list[int]] = {}
    for key, row in rows:
        total = totals.setdefault(key[index], [0] * WIDTH)
        for i, value in enumerate(row[:WIDTH]):
            total[i] += value
    ordered = sorted(totals.items(), key=lambda item: (-item[1][3], -item[1][0], item[0]))
    return [
        {
            group_by: name or None,
            "requests": t[0],
            "prompt_tokens": t[1],
            "completion_tokens": t[2],
            "cost_usd": t[3] / PICO_PER_USD,
            "unpriced_requests": t[4],
            "cached_requests": t[5],
        }
        for name, t in ordered
    ]
