"""``Backend`` in process memory: the embedded store of a single replica, and the local state
a replica falls back on while its Redis is unreachable.

It implements the same operations with the same semantics as the Lua scripts (the contract
tests in tests/store run against both), in plain Python: nothing here awaits, so each
operation is atomic on the event loop.  With a ``data_dir`` the registry is durable: every
change rewrites ``registry.json`` through a temporary file, fsync and rename, so a crash
mid-write leaves the last good file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from service.store.backend import (
    WINDOW_S,
    AdmitRequest,
    BreakerResult,
    BreakerRule,
    BreakerState,
    Charge,
    CoolRule,
    LedgerKey,
    MessageHandler,
    QuotaDecision,
    Settlement,
    Spend,
    Status,
    WindowUsage,
    WriteMode,
)
from service.store.keys import QuotaKeys
from service.store.memory_breakers import MemoryBreakers
from service.store.periods import BudgetPeriod, bounds

log = logging.getLogger("best.store")

SWEEP_MIN = 1024  # cached values held before the first sweep of expired ones
SAVE_DELAY_S = 1.0
REGISTRY_FILE = "registry.json"
LEDGER_FILE = "ledger.json"
SEP = "\x1f"  # joins a ledger row's token, team, provider and model
_ADMITTED, _NOTHING = Status.ADMITTED, Charge.NOTHING  # looked up once, not per call
LEGACY_TOKENS_FILE = "tokens.json"  # read when registry.json is absent (tokens only)


def _now_ms() -> int:
    return int(time.time() * 1000)


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


class _Window:
    """Per-second request and token buckets of one owner: the current second and the 59
    before it (see quota.lua), with running totals so a check costs O(1) amortised."""

    __slots__ = ("oldest", "request_total", "requests", "token_total", "tokens")

    def __init__(self, now_s: int) -> None:
        self.requests: dict[int, int] = {}
        self.tokens: dict[int, int] = {}
        self.request_total = 0
        self.token_total = 0
        self.oldest = now_s - WINDOW_S + 1

    def prune(self, now_s: int) -> tuple[int, int]:
        limit = now_s - WINDOW_S + 1  # the oldest second in the window
        if self.oldest < limit:
            if limit - self.oldest >= WINDOW_S:  # idle for a whole window: nothing is left
                self.requests.clear()
                self.tokens.clear()
                self.request_total = self.token_total = 0
            else:
                for second in range(self.oldest, limit):
                    self.request_total -= self.requests.pop(second, 0)
                    self.token_total -= self.tokens.pop(second, 0)
            self.oldest = limit
        return self.request_total, self.token_total

    def add(self, second: int, tokens: int) -> None:
        self.requests[second] = self.requests.get(second, 0) + 1
        self.request_total += 1
        if tokens:
            self.tokens[second] = self.tokens.get(second, 0) + tokens
            self.token_total += tokens

    def correct(self, second: int, delta: int) -> None:
        if second in self.tokens:
            self.tokens[second] += delta
            self.token_total += delta

    def wait_ms(self, buckets: dict[int, int], used: int, need: int, limit: int, now: int) -> int:
        if need > limit:
            return 60_000
        freed = 0
        for second in sorted(buckets):
            freed += buckets[second]
            if used - freed + need <= limit:
                return max(1, (second + WINDOW_S) * 1000 - now)  # when it leaves
        return 60_000


class _Budget:
    """One owner's budget: the spend of its current period and the reservations in flight."""

    __slots__ = ("holds", "period", "reserved", "spent", "start")

    def __init__(self, period: BudgetPeriod, start: int = -1, spent: int = 0) -> None:
        self.period = period
        self.start = start
        self.spent = spent
        self.reserved = 0
        self.holds: dict[str, int] = {}


class MemoryBackend:
    kind = "embedded"
    quota_bound_s: float | None = None  # answers in this process, at once

    def __init__(self, data_dir: Path | None = None) -> None:
        self._data_dir = data_dir
        self._windows: dict[str, _Window] = {}
        self._leases: dict[str, dict[str, int]] = {}
        self._breakers = MemoryBreakers()
        self._stats: dict[str, int] = {}
        self._values: dict[str, tuple[bytes, int]] = {}  # key -> (value, expires ms)
        self._sweep_at = SWEEP_MIN
        self._records: dict[str, dict[str, dict[str, str]]] = {"token": {}, "team": {}}
        self._version: int | None = None
        self._budgets: dict[str, _Budget] = {}
        self._ledger: dict[str, dict[str, list[int]]] = {}  # day -> row -> values
        self._ledger_dirty = False
        self._save_pending = False
        self._saving: set[asyncio.Future[None]] = set()
        self._writing = asyncio.Lock()
        if data_dir is not None:
            self._load(data_dir)

    # -- durability --------------------------------------------------------------------------

    def _load(self, data_dir: Path) -> None:
        path = data_dir / REGISTRY_FILE
        legacy = data_dir / LEGACY_TOKENS_FILE
        try:
            if path.exists():
                saved = orjson.loads(path.read_bytes())
                for kind in self._records:
                    self._records[kind] = {r["id"]: r for r in saved.get(kind, []) if "id" in r}
                for key, (period, start, spent) in saved.get("budgets", {}).items():
                    self._budgets[key] = _Budget(BudgetPeriod(int(period)), int(start), int(spent))
            elif legacy.exists():
                rows = orjson.loads(legacy.read_bytes())
                self._records["token"] = {
                    r["id"]: {k: str(v) for k, v in r.items()} for r in rows if "id" in r
                }
        except (OSError, orjson.JSONDecodeError, AttributeError, TypeError) as exc:
            log.error("store: %s is unreadable (%s); starting with an empty registry", path, exc)
            return
        try:
            ledger = data_dir / LEDGER_FILE
            if ledger.exists():
                self._ledger = orjson.loads(ledger.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            log.error("store: %s is unreadable (%s); the usage ledger starts empty", path, exc)
        if any(self._records.values()):
            self._version = 1
            log.info(
                "store: loaded %d tokens and %d teams from %s",
                len(self._records["token"]),
                len(self._records["team"]),
                data_dir,
            )

    async def _save(self) -> None:
        if self._data_dir is None:
            return
        # One write at a time, of the state as it is when that write starts: two writes at
        # once would share the temporary file (one moves it away under the other), and the
        # older state could land last.
        async with self._writing:
            saved: dict[str, Any] = {k: list(rows.values()) for k, rows in self._records.items()}
            # Budget spend is durable like the registry; reservations in flight are not (a
            # restart ends the requests that held them).
            saved["budgets"] = {k: (b.period, b.start, b.spent) for k, b in self._budgets.items()}
            if self._ledger_dirty:
                self._ledger_dirty = False
                ledger = orjson.dumps(self._ledger)
                await asyncio.to_thread(write_atomically, self._data_dir / LEDGER_FILE, ledger)
            await asyncio.to_thread(
                write_atomically, self._data_dir / REGISTRY_FILE, orjson.dumps(saved)
            )

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        if self._save_pending or self._saving:
            self._save_pending = False
            await asyncio.gather(*self._saving, return_exceptions=True)
            await self._save()

    # -- quotas ------------------------------------------------------------------------------

    async def quota(
        self, keys: QuotaKeys, settle: Sequence[Settlement], admit: AdmitRequest | None
    ) -> QuotaDecision:
        now = _now_ms()
        now_s = now // 1000
        in_team = keys.team_windows is not None
        token_leases = self._leases.setdefault(keys.token_leases, {})
        for s in settle:
            held = token_leases.pop(s.entry, None) is not None
            if held and s.correction:
                for name in (keys.token_windows, keys.team_windows):
                    window = self._windows.get(name) if name else None
                    if window is not None:
                        window.correct(s.second, s.correction)
            # Budgets: each side's reservation is its own proof (see quota.lua).
            if s.cost != _NOTHING:
                self._charge(keys.token_budget, s.entry, s.cost, now)
            if in_team and keys.team_leases is not None and keys.team_budget is not None:
                self._leases.get(keys.team_leases, {}).pop(s.entry, None)
                if s.cost != _NOTHING:
                    self._charge(keys.team_budget, s.entry, s.cost, now)
        if admit is None:
            return QuotaDecision(status=_ADMITTED, retry_ms=0, now_ms=now)

        sides = [
            (keys.token_windows, keys.token_leases, keys.token_budget, admit.limits, admit.budget)
        ]
        if in_team:
            assert keys.team_windows and keys.team_leases and keys.team_budget
            sides.append(
                (
                    keys.team_windows,
                    keys.team_leases,
                    keys.team_budget,
                    admit.team_limits,
                    admit.team_budget,
                )
            )
        rpm_left = tpm_left = budget_left = conc_left = None
        for team_side, side in enumerate(sides):
            windows_key, leases_key, budget_key, (rpm, tpm, conc), (budget, period) = side
            left: int | None = None
            if budget is not None:
                self._expire(leases_key, budget_key, now)
                state = self._roll(budget_key, period, now)
                left = budget - state.spent - state.reserved
                if admit.reserve > left:
                    retry = 1000
                    if budget - state.spent < admit.reserve:
                        _, stop = bounds(period, now)
                        retry = 0 if stop < 0 else stop - now
                    return QuotaDecision(
                        status=Status.OVER_BUDGET,
                        retry_ms=retry,
                        now_ms=now,
                        team_side=bool(team_side),
                        budget_remaining=max(0, left),
                    )
                left -= admit.reserve
            if rpm > 0 or tpm > 0:
                window = self._windows.get(windows_key)
                if window is None:
                    window = self._windows[windows_key] = _Window(now_s)
                requests, tokens = window.prune(now_s)
                if rpm > 0 and requests + 1 > rpm:
                    return QuotaDecision(
                        status=Status.OVER_RPM,
                        retry_ms=window.wait_ms(window.requests, requests, 1, rpm, now),
                        now_ms=now,
                        team_side=bool(team_side),
                        rpm_remaining=0,
                        budget_remaining=left,
                    )
                if tpm > 0 and tokens + admit.cost > tpm:
                    return QuotaDecision(
                        status=Status.OVER_TPM,
                        retry_ms=window.wait_ms(window.tokens, tokens, admit.cost, tpm, now),
                        now_ms=now,
                        team_side=bool(team_side),
                        tpm_remaining=max(0, tpm - tokens),
                        budget_remaining=left,
                    )
                if rpm > 0:
                    left_now = rpm - requests - 1
                    rpm_left = left_now if rpm_left is None else min(rpm_left, left_now)
                if tpm > 0:
                    left_now = tpm - tokens - admit.cost
                    tpm_left = left_now if tpm_left is None else min(tpm_left, left_now)
            if conc > 0:
                leases = self._leases.setdefault(leases_key, {})
                if budget is None:
                    for entry in [e for e, until in leases.items() if until <= now]:
                        del leases[entry]
                if len(leases) >= conc:
                    return QuotaDecision(
                        status=Status.OVER_CONCURRENCY,
                        retry_ms=1000,
                        now_ms=now,
                        team_side=bool(team_side),
                        budget_remaining=left,
                    )
                left_now = conc - len(leases) - 1
                conc_left = left_now if conc_left is None else min(conc_left, left_now)
            if left is not None:
                budget_left = left if budget_left is None else min(budget_left, left)

        for team_side, side in enumerate(sides):
            windows_key, leases_key, budget_key, (rpm, tpm, conc), (budget, _) = side
            if rpm > 0 or tpm > 0:
                self._windows[windows_key].add(now_s, admit.cost)
            if admit.lease_ms > 0 and (not team_side or conc > 0 or budget is not None):
                self._leases.setdefault(leases_key, {})[admit.entry] = now + admit.lease_ms
            if budget is not None:
                state = self._budgets[budget_key]
                state.holds[admit.entry] = admit.reserve
                state.reserved += admit.reserve
        return QuotaDecision(
            status=_ADMITTED,
            retry_ms=0,
            now_ms=now,
            rpm_remaining=rpm_left,
            tpm_remaining=tpm_left,
            budget_remaining=budget_left,
            concurrency_remaining=conc_left,
        )

    # -- budgets (see quota.lua) ---------------------------------------------------------------

    def _roll(self, key: str, period: BudgetPeriod | None, now: int) -> _Budget:
        state = self._budgets.get(key)
        if state is None:
            state = self._budgets[key] = _Budget(
                period if period is not None else BudgetPeriod.TOTAL
            )
        kind = state.period if period is None else period
        start, _ = bounds(kind, now)
        if state.period != kind or state.start != start:
            state.period, state.start, state.spent = kind, start, 0
            self._budgets_changed()
        return state

    def _charge(self, key: str, entry: str, cost: int, now: int) -> None:
        """Settle ``entry``'s reservation on budget ``key`` with ``cost`` (micro-USD, or
        Charge.RESERVATION: the reservation in full)."""
        state = self._budgets.get(key)
        if state is None or entry not in state.holds:
            return
        self._roll(key, None, now)
        held = state.holds.pop(entry)
        state.reserved -= held
        state.spent += held if cost == Charge.RESERVATION else cost
        self._budgets_changed()

    def _expire(self, leases_key: str, budget_key: str, now: int) -> None:
        leases = self._leases.get(leases_key, {})
        for entry in [e for e, until in leases.items() if until <= now]:
            del leases[entry]
            self._charge(budget_key, entry, Charge.RESERVATION, now)

    def _budgets_changed(self) -> None:
        """Spend is durable: saved at most once a second (and at close)."""
        if self._data_dir is None or self._save_pending:
            return
        self._save_pending = True
        asyncio.get_running_loop().call_later(SAVE_DELAY_S, self._save_soon)

    def _save_soon(self) -> None:
        self._save_pending = False
        task = asyncio.ensure_future(self._save())
        self._saving.add(task)
        task.add_done_callback(self._saving.discard)

    async def spend(self, budget_key: str, period: int) -> Spend:
        now = _now_ms()
        start, _ = bounds(period, now)
        state = self._budgets.get(budget_key)
        if state is None:
            return Spend(0, 0, start)
        current = state.period == period and state.start == start
        return Spend(state.spent if current else 0, state.reserved, start)

    async def renew(self, leases: Mapping[str, Sequence[str]], until_ms: int) -> None:
        for key, entries in leases.items():
            held = self._leases.get(key, {})
            for entry in entries:
                if entry in held:
                    held[entry] = until_ms

    async def usage(self, keys: QuotaKeys) -> WindowUsage:
        now = _now_ms()
        window = self._windows.get(keys.token_windows)
        requests, tokens = window.prune(now // 1000) if window else (0, 0)
        leases = self._leases.get(keys.token_leases, {})
        in_flight = sum(1 for until in leases.values() if until > now)
        return WindowUsage(requests=requests, tokens=tokens, in_flight=in_flight)

    # -- circuit breakers and cooldowns (memory_breakers.py) -------------------------------

    async def breaker_cool(self, field: str, rule: CoolRule) -> tuple[int, int]:
        return self._breakers.cool(field, rule)

    async def breaker_state(self) -> BreakerState:
        return self._breakers.state()

    async def breaker_fail(self, field: str, rule: BreakerRule, trip: bool) -> BreakerResult:
        return self._breakers.fail(field, rule, trip)

    async def breaker_probe(self, field: str, owner: str, lease_ms: int) -> bool:
        return self._breakers.probe(field, owner, lease_ms)

    async def breaker_release(self, field: str, owner: str) -> None:
        self._breakers.release(field, owner)

    async def breaker_close(self, fields: Sequence[str]) -> int:
        return self._breakers.close(fields)

    # -- statistics, caches, locks -----------------------------------------------------------

    async def add_stats(self, deltas: Mapping[str, int]) -> None:
        for field, delta in deltas.items():
            self._stats[field] = self._stats.get(field, 0) + delta

    async def read_stats(self) -> dict[str, int]:
        return dict(self._stats)

    def _live(self, key: str) -> bytes | None:
        found = self._values.get(key)
        if found is None:
            return None
        if found[1] <= _now_ms():
            del self._values[key]
            return None
        return found[0]

    async def get(self, key: str) -> bytes | None:
        return self._live(key)

    async def set(self, key: str, value: bytes, ttl_ms: int) -> None:
        now = _now_ms()
        self._values[key] = (value, now + max(1, ttl_ms))
        if len(self._values) >= self._sweep_at:
            # Values nobody reads again (response ids, old caches) go when they expire:
            # memory follows what is live, amortised O(1) per write.
            self._values = {k: v for k, v in self._values.items() if v[1] > now}
            self._sweep_at = max(SWEEP_MIN, 2 * len(self._values))

    async def try_lock(self, key: str, owner: str, ttl_ms: int) -> bool:
        if self._live(key) is not None:
            return False
        self._values[key] = (owner.encode(), _now_ms() + max(1, ttl_ms))
        return True

    async def unlock(self, key: str, owner: str) -> None:
        if self._live(key) == owner.encode():
            del self._values[key]

    # -- registry ----------------------------------------------------------------------------

    async def put_record(
        self, kind: str, record_id: str, fields: Mapping[str, str], mode: WriteMode
    ) -> bool:
        records = self._records[kind]
        stored = records.get(record_id)
        if mode == "create" and stored is not None:
            return False
        if mode == "update" and stored is None:
            return False
        if mode == "newest" and stored is not None:
            if int(stored.get("updated_ms") or 0) >= int(fields.get("updated_ms") or 0):
                return False
            stored = None
        records[record_id] = {**(stored or {}), **fields}
        self._version = (self._version or 0) + 1
        await self._save()
        return True

    async def get_record(self, kind: str, record_id: str) -> dict[str, str] | None:
        stored = self._records[kind].get(record_id)
        return dict(stored) if stored is not None else None

    async def all_records(self, kind: str) -> list[dict[str, str]]:
        records = self._records[kind]
        return [dict(records[i]) for i in sorted(records)]

    async def registry_version(self) -> int | None:
        return self._version

    # -- usage ledger: kept in DATA_DIR/ledger.json, saved at most once a second -------------

    async def add_usage(self, rows: Mapping[LedgerKey, Sequence[int]]) -> None:
        for (day, *names), values in rows.items():
            row = self._ledger.setdefault(day, {}).setdefault(SEP.join(names), [])
            if len(row) < len(values):  # a new row, or one saved before a column was added
                row.extend([0] * (len(values) - len(row)))
            for i, value in enumerate(values):
                row[i] += value
        if rows and self._data_dir is not None:
            self._ledger_dirty = True
            self._budgets_changed()

    async def read_usage(self, days: Sequence[str]) -> list[tuple[LedgerKey, list[int]]]:
        out: list[tuple[LedgerKey, list[int]]] = []
        for day in days:
            for names, values in self._ledger.get(day, {}).items():
                token, team, provider, model = names.split(SEP)
                out.append(((day, token, team, provider, model), list(values)))
        return out

    # -- change notifications: one process, nobody else to tell -------------------------------

    async def publish(self, message: str) -> None:
        return None

    async def listen(self, handler: MessageHandler) -> None:
        await asyncio.Event().wait()
