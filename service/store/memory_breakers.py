"""Circuit breakers and provider cooldowns in process memory: the embedded store's twin of
``lua/breaker_*.lua`` (the same semantics; the contract tests in tests/store run against both).

``MemoryBackend`` holds one and hands it every breaker operation.  Nothing here awaits, so
each operation is atomic on the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from service.store.backend import BreakerResult, BreakerRule, BreakerState, CoolRule


def _now_ms() -> int:
    return int(time.time() * 1000)


class MemoryBreakers:
    def __init__(self) -> None:
        self._cooling: dict[str, int] = {}  # field -> cooling (or breaker open) until, ms
        self._failures: dict[str, tuple[int, int]] = {}  # field -> (count, expires ms)
        self._openings: dict[str, tuple[int, int]] = {}  # field -> (openings, expires ms)
        self._probes: dict[str, tuple[str, int]] = {}  # field -> (owner, until ms)

    def cool(self, field: str, rule: CoolRule) -> tuple[int, int]:
        """See lua/breaker_cool.lua."""
        now = _now_ms()
        count, expires = self._failures.get(field, (0, 0))
        count = (count if expires > now else 0) + 1
        self._failures[field] = (count, now + rule.cap_ms * 2)
        if rule.retry_after_ms is not None:
            duration = min(max(rule.retry_after_ms, rule.floor_ms), rule.ceiling_ms)
        elif rule.fixed_ms is not None:
            duration = rule.fixed_ms
        else:
            duration = min(rule.base_ms * 2 ** (count - 1), rule.cap_ms)
        until = max(now + duration, self._cooling.get(field, 0))
        self._cooling[field] = until
        self._drop_over(now)
        return until, now

    def state(self) -> BreakerState:
        """See lua/breaker_state.lua."""
        now = _now_ms()
        return BreakerState(
            cooling={f: u for f, u in self._cooling.items() if u > now},
            failing=frozenset(f for f, (_, expires) in self._failures.items() if expires > now),
            now_ms=now,
            tripped=frozenset(f for f, (_, expires) in self._openings.items() if expires > now),
        )

    def _openings_of(self, field: str, now: int) -> int:
        openings, expires = self._openings.get(field, (0, 0))
        return openings if expires > now else 0

    def fail(self, field: str, rule: BreakerRule, trip: bool) -> BreakerResult:
        """See lua/breaker_fail.lua."""
        now = _now_ms()
        current = self._cooling.get(field, 0)
        if current > now:
            return BreakerResult(open_until_ms=current, now_ms=now, opened=False)
        openings = self._openings_of(field, now)
        if trip:
            if openings > 0:
                return BreakerResult(open_until_ms=0, now_ms=now, opened=False)
        else:
            count, expires = self._failures.get(field, (0, 0))
            count = (count if expires > now else 0) + 1
            self._failures[field] = (count, now + rule.max_open_ms * 2)
            if openings == 0 and count < rule.threshold:
                return BreakerResult(open_until_ms=0, now_ms=now, opened=False)
        duration = min(rule.open_ms * 2**openings, rule.max_open_ms)
        if rule.retry_after_ms is not None:
            clamped = min(max(rule.retry_after_ms, rule.floor_ms), rule.ceiling_ms)
            duration = max(duration, clamped)
        until = now + duration
        self._cooling[field] = until
        self._openings[field] = (openings + 1, until + rule.max_open_ms * 2)
        self._probes.pop(field, None)
        self._drop_over(now)
        return BreakerResult(open_until_ms=until, now_ms=now, opened=True)

    def probe(self, field: str, owner: str, lease_ms: int) -> bool:
        """See lua/breaker_probe.lua."""
        now = _now_ms()
        if not self._openings_of(field, now):
            return True
        if self._cooling.get(field, 0) > now:
            return False
        holder, until = self._probes.get(field, ("", 0))
        if until > now and holder != owner:
            return False
        self._probes[field] = (owner, now + lease_ms)
        return True

    def release(self, field: str, owner: str) -> None:
        """See lua/breaker_release.lua."""
        if self._probes.get(field, ("", 0))[0] == owner:
            del self._probes[field]

    def close(self, fields: Sequence[str]) -> int:
        """See lua/breaker_close.lua."""
        now = _now_ms()
        closed = 0
        for field in fields:
            self._failures.pop(field, None)
            if self._openings.pop(field, (0, 0))[1] > now:
                self._cooling.pop(field, None)
                self._probes.pop(field, None)
                closed += 1
        return closed

    def _drop_over(self, now: int) -> None:
        for done in [f for f, u in self._cooling.items() if u <= now]:
            del self._cooling[done]
