"""Budget periods: UTC calendar day, ISO week (from Monday 00:00), month, or the whole time.

Both store backends place a budget in its period with this arithmetic (lua/quota.lua holds
the same in Lua, on the store's clock): a period is named by its start, in ms since the epoch.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import IntEnum

DAY_MS = 86_400_000


class BudgetPeriod(IntEnum):
    """A budget's period kind (the numbers cross into lua/quota.lua)."""

    TOTAL = 0  # never resets
    DAY = 1
    WEEK = 2
    MONTH = 3


def bounds(period: int, now_ms: int) -> tuple[int, int]:
    """(start, end) in ms of the period holding ``now_ms``; end is -1 for TOTAL (no end)."""
    if period == BudgetPeriod.TOTAL:
        return 0, -1
    day = now_ms // DAY_MS
    if period == BudgetPeriod.DAY:
        return day * DAY_MS, (day + 1) * DAY_MS
    if period == BudgetPeriod.WEEK:
        monday = day - (day + 3) % 7  # 1970-01-01 was a Thursday
        return monday * DAY_MS, (monday + 7) * DAY_MS
    moment = datetime.fromtimestamp(day * 86_400, UTC)
    first = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    following = (
        datetime(moment.year + 1, 1, 1, tzinfo=UTC)
        if moment.month == 12
        else datetime(moment.year, moment.month + 1, 1, tzinfo=UTC)
    )
    return int(first.timestamp()) * 1000, int(following.timestamp()) * 1000
