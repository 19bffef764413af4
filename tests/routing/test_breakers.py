"""The error-rate check of the circuit breakers (``Breakers.check_error_rates``), fed the
fleet's figures as FleetStats hands them over, on the embedded store."""

from __future__ import annotations

import asyncio
import time

from service.config import Breaker
from service.observability.metrics import create_metrics
from service.routing.breakers import Breakers, FleetWindow
from service.routing.live import PairFigures
from service.store.client import Store
from service.store.keys import Keys, pair_field
from service.store.memory import MemoryBackend

PAIR = ("p", "m")
FIELD = pair_field(*PAIR)


def _breakers() -> Breakers:
    backend = MemoryBackend()
    store = Store(backend, backend, Keys("test"), timeout_s=1.0, metrics=create_metrics())
    return Breakers(store, lambda: Breaker(error_rate=0.5, min_attempts=10, open_s=30.0))


def test_a_pair_over_the_error_rate_is_opened_and_one_under_it_is_not() -> None:
    def fleet(attempts: int, failures: int) -> FleetWindow:
        return lambda window_s, since: {PAIR: PairFigures(attempts, failures, [])}

    async def main() -> tuple[str, str, str]:
        calm, busy = _breakers(), _breakers()
        await calm.check_error_rates(fleet(20, 9))
        await busy.check_error_rates(fleet(20, 10))
        few = _breakers()
        await few.check_error_rates(fleet(9, 9))
        return (
            "open" if FIELD in calm.tripped else "closed",
            "open" if FIELD in busy.tripped else "closed",
            "open" if FIELD in few.tripped else "closed",
        )

    assert asyncio.run(main()) == ("closed", "open", "closed")


def test_only_attempts_since_the_breaker_last_closed_count() -> None:
    """Failures that opened a breaker before its probe closed it are no evidence now: the
    check asks for the figures since it closed, and those decide."""
    asked: list[float] = []

    def fleet(window_s: float, since: float) -> dict[tuple[str, str], PairFigures]:
        asked.append(since)
        if since == 0.0:
            return {PAIR: PairFigures(20, 20, [])}  # the whole window: all failed
        return {PAIR: PairFigures(12, 1, [])}  # since it closed: healthy

    async def main() -> bool:
        breakers = _breakers()
        breakers.closed_at[FIELD] = time.monotonic()
        await breakers.check_error_rates(fleet)
        return FIELD in breakers.tripped

    assert asyncio.run(main()) is False
    assert len(asked) == 2 and asked[1] > 0
