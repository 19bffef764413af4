"""Settlement batching: finished requests' corrections wait, per token, for a ride.

A settlement (lease release, real tokens and cost) rides with its token's next admission on
this replica (one script call for both), or travels on its own when its wait is over:
``SETTLE_DELAY_S`` near a limit, ``SETTLE_PATIENT_S`` far from every limit.  One timer, set
for the soonest due, sends what is due; a heap of dues finds it.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from service.store.backend import Settlement, StoreError
from service.store.client import Store
from service.store.keys import QuotaKeys

log = logging.getLogger("best.quotas")

SETTLE_DELAY_S = 0.025
# A settlement of a request admitted far from its limits (a tenth of each, and at least ten
# requests' worth, still free; no budget) waits longer for a ride: holding its lease and
# reservation a little longer refuses nobody, and a token that comes back to this replica
# within that time costs Redis one visit per request instead of two.  A finished request's
# lease is no longer renewed and has at least LEASE_MS - RENEW_S left (leases.py): the wait
# stays well inside it, so the settlement still finds its lease (and corrects the
# reservation).
SETTLE_PATIENT_S = 4.0


@dataclass(slots=True)
class _Waiting:
    """A token's settlements waiting for a ride, and when they travel alone."""

    keys: QuotaKeys
    settlements: list[Settlement]
    due: float  # event-loop time


class Settlements:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: dict[str, _Waiting] = {}  # by token windows key
        # (due, token windows key), soonest first; an entry whose settlements rode meanwhile,
        # or whose due was brought forward, is skipped when it comes up
        self._dues: list[tuple[float, str]] = []
        self._flush: asyncio.TimerHandle | None = None  # at the soonest due
        self._tasks: set[asyncio.Task[None]] = set()

    def ride(self, keys: QuotaKeys) -> list[Settlement]:
        """The settlements of ``keys``'s token waiting for a ride: its admission takes them
        along (give them back with ``queue`` if that admission fails)."""
        waiting = self._pending.pop(keys.token_windows, None)
        return waiting.settlements if waiting is not None else []

    def queue(
        self, keys: QuotaKeys, settlements: Sequence[Settlement], wait: float = SETTLE_DELAY_S
    ) -> None:
        """Hold ``settlements`` for a ride, at most ``wait`` seconds."""
        if not settlements:
            return
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

    async def flush(self) -> None:
        """Send the settlements waiting for a ride now, and wait until they are applied."""
        if self._flush is not None:
            self._flush.cancel()
        self._send_pending(everything=True)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

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
