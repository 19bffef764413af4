"""The store's seam: the operations the gateway needs from shared state, whatever holds it.

Two backends implement ``Backend``: ``RedisBackend`` (standalone, Sentinel or Cluster; each
atomic operation is one Lua script) and ``MemoryBackend`` (in-process, for one replica and for
a replica whose Redis is unreachable).  The same contract tests run against both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal, NamedTuple, Protocol

from service.errors import Unavailable
from service.store.keys import QuotaKeys
from service.store.periods import BudgetPeriod

WriteMode = Literal["create", "update", "newest"]
# A usage ledger row: (UTC day "YYYY-MM-DD", token id, team id, provider, model); its values
# are [requests, prompt tokens, completion tokens, cost in pico-USD, unpriced requests, cached
# requests].
LedgerKey = tuple[str, str, str, str, str]

# rpm and tpm count the requests of the current second and the WINDOW_S - 1 before it: a
# request counts until WINDOW_S seconds after its second began, never longer.
WINDOW_S = 60


class StoreError(Unavailable):
    """A store operation failed (the edge answers 503)."""


class StoreUnreachable(StoreError):
    """The store did not answer within ``STORE_TIMEOUT_MS``, or the connection failed."""


class Status(IntEnum):
    """What an admission decided (the numbers are lua/quota.lua's answers)."""

    ADMITTED = 0
    OVER_RPM = 1
    OVER_TPM = 2
    OVER_CONCURRENCY = 3
    OVER_BUDGET = 4


class Charge(IntEnum):
    """What a settlement charges its budgets when it carries no real cost (the numbers cross
    into lua/quota.lua as they are)."""

    RESERVATION = -1  # the cost is unknown: the reservation is charged in full
    NOTHING = -2  # its admission reserved no budget: no budget is read or charged


class RateLimits(NamedTuple):
    """One side's rate limits (a token's, or its team's); 0 = no limit."""

    rpm: int = 0
    tpm: int = 0
    max_concurrency: int = 0


class SpendBudget(NamedTuple):
    """One side's spend budget: micro-USD per ``period``; ``micro`` None: no budget."""

    micro: int | None = None
    period: BudgetPeriod = BudgetPeriod.TOTAL


NO_LIMITS = RateLimits()
NO_BUDGET = SpendBudget()


class Settlement(NamedTuple):
    """A finished request's correction: its lease is released, its reservation replaced."""

    entry: str
    second: int  # the store second of its admission (names its window bucket)
    reserved: int  # tokens reserved at admission
    used: int | None  # real tokens; None (unknown) keeps the reservation
    cost: int | Charge = Charge.RESERVATION  # real cost in micro-USD, or what to charge

    @property
    def correction(self) -> int:
        """Tokens to add to its admission's bucket: real less reserved (0: the reservation
        stands)."""
        return 0 if self.used is None else self.used - self.reserved


class AdmitRequest(NamedTuple):
    """A request to admit against a token's limits and budget, and its team's."""

    entry: str  # unique across the fleet; names the lease
    cost: int  # tokens to reserve
    lease_ms: int  # 0: no lease (nothing to settle); a budget needs one
    limits: RateLimits  # the token's
    team_limits: RateLimits = NO_LIMITS  # its team's (keys without a team: not read)
    reserve: int = 0  # worst-case cost in micro-USD, held on each budget until settled
    budget: SpendBudget = NO_BUDGET  # the token's
    team_budget: SpendBudget = NO_BUDGET


class QuotaDecision(NamedTuple):
    """What an admission decided, with the room left on the tighter side."""

    status: Status
    retry_ms: int  # 0 with OVER_BUDGET: the budget never resets ("total")
    now_ms: int
    team_side: bool = False  # the team's limit refused (or is the tighter one)
    rpm_remaining: int | None = None  # None: unlimited
    tpm_remaining: int | None = None
    budget_remaining: int | None = None  # micro-USD of the tighter budget after this request
    concurrency_remaining: int | None = None  # leases still free after this one (tighter side)


class WindowUsage(NamedTuple):
    """The token side of an owner group in the current window."""

    requests: int
    tokens: int
    in_flight: int  # leases held and not expired


@dataclass(frozen=True, slots=True)
class Spend:
    """A budget's state: spend of the current period and reservations in flight (micro-USD)."""

    spent: int
    reserved: int
    period_start_ms: int


@dataclass(frozen=True, slots=True)
class BreakerState:
    cooling: dict[str, int]  # field -> cooling (or breaker open) until (ms), those in force
    failing: frozenset[str]  # fields with recent failures that a success resets
    now_ms: int
    tripped: frozenset[str] = frozenset()  # pair breakers not closed (open or half-open)


@dataclass(frozen=True, slots=True)
class CoolRule:
    """How long a failure cools its field (see routing/breakers.py)."""

    retry_after_ms: int | None  # the upstream's Retry-After
    fixed_ms: int | None  # a fixed duration
    base_ms: int  # without either: doubles per consecutive failure...
    cap_ms: int  # ...up to this
    floor_ms: int  # Retry-After is clamped to [floor, ceiling]
    ceiling_ms: int


@dataclass(frozen=True, slots=True)
class BreakerRule:
    """When a pair's breaker opens and for how long (see lua/breaker_fail.lua)."""

    threshold: int  # consecutive failures that open a closed breaker
    open_ms: int  # first open period; doubles per reopening...
    max_open_ms: int  # ...up to this
    retry_after_ms: int | None = None  # the upstream's Retry-After
    floor_ms: int = 1_000  # Retry-After is clamped to [floor, ceiling]
    ceiling_ms: int = 3_600_000


@dataclass(frozen=True, slots=True)
class BreakerResult:
    open_until_ms: int  # 0: still closed
    now_ms: int
    opened: bool  # this call opened it


MessageHandler = Callable[[str], Awaitable[None]]


class Backend(Protocol):
    """Every operation is atomic on its own; none blocks the event loop."""

    kind: str  # "embedded", "standalone", "sentinel" or "cluster"
    # The bound the backend itself puts on each quota call, if it has one (then the Store
    # puts none of its own around it).
    quota_bound_s: float | None

    async def ping(self) -> None: ...

    async def close(self) -> None: ...

    # -- quotas (one owner group per call) ---------------------------------------------------

    async def quota(
        self, keys: QuotaKeys, settle: Sequence[Settlement], admit: AdmitRequest | None
    ) -> QuotaDecision:
        """Apply ``settle``, then admit or refuse ``admit`` (see lua/quota.lua).  With no
        ``admit`` the answer is ADMITTED, and nothing else in it counts."""
        ...

    async def renew(self, leases: Mapping[str, Sequence[str]], until_ms: int) -> None:
        """Extend held leases (key -> entry ids) to ``until_ms`` (store clock)."""
        ...

    async def usage(self, keys: QuotaKeys) -> WindowUsage:
        """The token side's requests, tokens and leases in flight in the current window."""
        ...

    async def spend(self, budget_key: str, period: int) -> Spend:
        """A budget's spend in the current ``period`` (0 when a new period began)."""
        ...

    # -- circuit breakers and provider cooldowns (lua/breaker_*.lua) -------------------------

    async def breaker_cool(self, field: str, rule: CoolRule) -> tuple[int, int]:
        """Start or extend a cooldown; returns (cooling until ms, store now ms)."""
        ...

    async def breaker_state(self) -> BreakerState:
        """The cooldowns in force, the fields failing, the pair breakers not closed."""
        ...

    async def breaker_fail(self, field: str, rule: BreakerRule, trip: bool) -> BreakerResult:
        """Count a failure of a pair (``trip``: the fleet's error rate says open it now);
        opens its breaker on evidence (see lua/breaker_fail.lua)."""
        ...

    async def breaker_probe(self, field: str, owner: str, lease_ms: int) -> bool:
        """Claim the half-open probe of ``field`` for ``owner``; True when it may be tried."""
        ...

    async def breaker_release(self, field: str, owner: str) -> None:
        """Give back ``owner``'s probe claim (its attempt ended without a verdict)."""
        ...

    async def breaker_close(self, fields: Sequence[str]) -> int:
        """A success: reset the failure counts of ``fields`` and close their breakers;
        returns how many breakers closed."""
        ...

    # -- statistics, caches, locks -----------------------------------------------------------

    async def add_stats(self, deltas: Mapping[str, int]) -> None: ...

    async def read_stats(self) -> dict[str, int]: ...

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_ms: int) -> None: ...

    async def try_lock(self, key: str, owner: str, ttl_ms: int) -> bool: ...

    async def unlock(self, key: str, owner: str) -> None: ...

    # -- registry (durable) ------------------------------------------------------------------

    async def put_record(
        self, kind: str, record_id: str, fields: Mapping[str, str], mode: WriteMode
    ) -> bool:
        """Write a token's or team's record; returns whether it was written.

        ``create``: only if absent.  ``update``: merge into an existing record.  ``newest``:
        replace unless the stored record's ``updated_ms`` is newer (re-seeding converges on
        the newest copy whichever replica writes first)."""
        ...

    async def get_record(self, kind: str, record_id: str) -> dict[str, str] | None: ...

    async def all_records(self, kind: str) -> list[dict[str, str]]: ...

    async def registry_version(self) -> int | None:
        """Bumped by every registry write; None when the store has no registry (it restarted
        empty, or was never seeded)."""
        ...

    # -- usage ledger (durable) --------------------------------------------------------------

    async def add_usage(self, rows: Mapping[LedgerKey, Sequence[int]]) -> None:
        """Add each row's values to the ledger."""
        ...

    async def read_usage(self, days: Sequence[str]) -> list[tuple[LedgerKey, list[int]]]:
        """Every row of ``days``."""
        ...

    # -- change notifications ----------------------------------------------------------------

    async def publish(self, message: str) -> None: ...

    async def listen(self, handler: MessageHandler) -> None:
        """Call ``handler`` for each message published by any replica, until cancelled."""
        ...
