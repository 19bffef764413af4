"""The token registry: static tokens from ``AUTH_TOKENS`` and managed ones, stored in the
store (durable), addressed by id = first 16 hex characters of the token's SHA-256.  Raw tokens
are never stored or logged.

Every replica holds the whole registry in memory, so authenticating a request costs no store
call.  It stays current through the store's change messages (at once) and a poll of the
registry's version counter every second (the bound on staleness, also when a message is
lost).  The cache is also what makes a Redis that restarted empty, or a promoted replica that
missed writes, harmless: each replica writes back what it knew, the newest copy of each record
winning, before it trusts the store's registry again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from datetime import UTC, datetime
from functools import partial
from typing import Any

from service.errors import BadRequest, Conflict, NotFound
from service.quotas.limits import LIMITS, MICRO, PERIODS, Record
from service.settings import MAX_CACHE_TTL_S, Settings
from service.store.backend import StoreError, StoreUnreachable, WriteMode
from service.store.client import Store

log = logging.getLogger("best.tokens")

POLL_S = 1.0
MISS_TTL_MS = 1000  # an unknown token is looked up in the store at most once a second
MAX_MISSES = 10_000
KINDS = ("token", "team")
MAX_BUDGET_USD = 1_000_000_000


class TokenError(BadRequest):
    """A token operation was asked with invalid input (message says which field)."""


class TokenNotFound(NotFound):
    def __init__(self, tid: str) -> None:
        super().__init__(f"No token with id {tid!r}.", code="token_not_found")


def token_id(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def iso_utc(moment: datetime) -> str:
    # isoformat, unlike strftime("%Y"), pads years below 1000 to the four digits ISO 8601 needs.
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def parse_expiry(value: Any) -> datetime | None:
    """An ``expires_at`` value as a UTC time; TokenError (a 400) when it is not one.  A time
    in the past is allowed: the token is expired from then on (how an admin ends a token's
    life at a given moment, now included)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TokenError("expires_at must be an ISO 8601 time or null", param="expires_at")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise TokenError(
            f"expires_at {value!r} is not an ISO 8601 time", param="expires_at"
        ) from None
    try:
        # An offset at the calendar's edges (year 1 or 9999) moves the time out of range.
        moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
        moment.timestamp()
    except (OverflowError, ValueError):
        raise TokenError(
            f"expires_at {value!r} is out of the supported range", param="expires_at"
        ) from None
    return moment


def parse_limit(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TokenError(f"{name} must be a non-negative integer or null", param=name)
    return value or None


def limit_field(value: int | None) -> str:
    return str(value) if value else ""


def parse_budget(value: Any) -> str:
    """A ``budget_usd`` as stored ("" for none); TokenError (a 400) when unusable."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError(
            "budget_usd must be a non-negative number of USD or null", param="budget_usd"
        )
    if not 0 <= value <= MAX_BUDGET_USD:  # also refuses NaN
        raise TokenError(
            f"budget_usd must be between 0 and {MAX_BUDGET_USD} USD", param="budget_usd"
        )
    return repr(round(float(value), 6))


def parse_cache_ttl(value: Any) -> str:
    """A ``cache_ttl_s`` as stored: "" for null (not set: the team's, or the default), else
    the seconds (0: no cache); TokenError (a 400) when unusable."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CACHE_TTL_S:
        raise TokenError(
            f"cache_ttl_s must be an integer from 0 to {MAX_CACHE_TTL_S} seconds, or null",
            param="cache_ttl_s",
        )
    return str(value)


def cache_ttl_record(fields: dict[str, str]) -> int | None:
    value = fields.get("cache_ttl_s")
    return int(value) if value else None


def parse_period(value: Any) -> str:
    if value is None:
        return ""
    if value not in PERIODS:
        raise TokenError(
            "budget_period must be one of day, week, month, total, or null", param="budget_period"
        )
    return str(value)


def budget_changes(body: dict[str, Any], current: dict[str, str]) -> dict[str, str]:
    """The stored budget fields after applying ``body``'s budget keys to ``current``: a
    budget needs its period (no silent default), and clearing the budget clears its period."""
    changes: dict[str, str] = {}
    if "budget_usd" in body:
        changes["budget_usd"] = parse_budget(body["budget_usd"])
    if "budget_period" in body:
        changes["budget_period"] = parse_period(body["budget_period"])
    if not changes:
        return changes
    budget = changes.get("budget_usd", current.get("budget_usd", ""))
    period = changes.get("budget_period", current.get("budget_period", ""))
    if budget and not period:
        raise TokenError(
            "budget_period is required with budget_usd: day, week, month or total",
            param="budget_period",
        )
    if period and not budget:
        if "budget_usd" in body:  # the budget was cleared: its period goes with it
            changes["budget_period"] = ""
        else:
            raise TokenError("budget_period needs a budget_usd", param="budget_period")
    return changes


def budget_record(fields: dict[str, str]) -> dict[str, Any]:
    budget = fields.get("budget_usd")
    return {
        "budget_usd": float(budget) if budget else None,
        "budget_period": fields.get("budget_period") or None,
    }


def to_record(fields: dict[str, str]) -> dict[str, Any]:
    """The public record (docs/api/admin.md) of stored fields."""
    return {
        "id": fields["id"],
        "name": fields.get("name", ""),
        "kind": fields.get("kind", "managed"),
        "team": fields.get("team") or None,
        **{limit: int(fields[limit]) if fields.get(limit) else None for limit in LIMITS},
        **budget_record(fields),
        "cache_ttl_s": cache_ttl_record(fields),
        "created_at": fields.get("created_at") or None,
        "expires_at": fields.get("expires_at") or None,
        "revoked": fields.get("revoked") == "1",
    }


def _now_ms() -> int:
    return int(time.time() * 1000)


class TokenRegistry:
    def __init__(self, settings: Settings, store: Store) -> None:
        self._settings = settings
        self._store = store
        self.store = store
        self._static_ids = {token_id(raw) for raw in settings.auth_tokens}
        self._tokens: dict[str, Record] = {}
        self._teams: dict[str, Record] = {}
        self._records = {"token": self._tokens, "team": self._teams}
        self._misses: dict[str, int] = {}  # unknown id -> looked up until (ms)
        self._version: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.auth_enabled = not settings.auth_disabled_by_env
        store.on_recover(self.reconcile)

    async def start(self) -> None:
        try:
            await self.seed_static()
            await self.reconcile()
        except StoreError as exc:
            log.warning("token registry: %s", exc)
        self._tasks = [asyncio.create_task(self._poll())]
        for kind in KINDS:
            self._store.subscribe(kind, partial(self._on_message, kind))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()

    # -- the local cache ---------------------------------------------------------------------

    def _cache(self, fields: dict[str, str], kind: str = "token") -> Record:
        """Keep ``fields`` unless the cache holds a newer copy: a change message's read can
        come back after this replica's own later write, and must not undo it."""
        record = Record.parse(fields)
        held = self._records[kind].get(record.id)
        if held is not None and held.updated_ms > record.updated_ms:
            return held
        self._records[kind][record.id] = record
        if kind == "token":
            self._misses.pop(record.id, None)
            if record.fields.get("kind") == "managed" and not record.revoked:
                self.auth_enabled = True
        return record

    async def find(self, tid: str) -> Record | None:
        """A token's record: from the cache; from the store only if the id is unknown here
        (a token created on another replica a moment ago)."""
        record = self._tokens.get(tid)
        return record if record is not None else await self._look_up(tid)

    async def load(self, kind: str, record_id: str) -> Record | None:
        """A record read from the store now, and cached (None: the store has none)."""
        fields = await self._store.get_record(kind, record_id)
        return self._cache(fields, kind) if fields is not None else None

    def team(self, team_id: str) -> Record | None:
        """A team's record from the cache; a deleted team is no team (its limits are gone)."""
        record = self._teams.get(team_id)
        return record if record is not None and not record.revoked else None

    def cached(self, kind: str) -> list[Record]:
        return list(self._records[kind].values())

    async def _look_up(self, tid: str) -> Record | None:
        """Raises ``StoreError`` (503) when the store cannot say: a token this replica has not
        seen may have been created on another one a moment ago, so "unknown" is not "invalid"
        while the store is away."""
        now = _now_ms()
        if self._misses.get(tid, 0) > now:
            return None
        if self._store.degraded:
            raise StoreUnreachable("the shared store is unreachable: this token cannot be checked")
        fields = await self._store.get_record("token", tid)
        if fields is None:
            if len(self._misses) >= MAX_MISSES:
                self._misses.clear()
            self._misses[tid] = now + MISS_TTL_MS
            return None
        record = self._cache(fields)
        if record.team and record.team not in self._teams:
            # A team created a moment ago on another replica, with this token.
            await self._on_message("team", record.team)
        return record

    async def _on_message(self, kind: str, record_id: str) -> None:
        """Another replica changed a record: fetch it at once."""
        try:
            fields = await self._store.get_record(kind, record_id)
        except StoreError:
            return
        if fields is not None:
            self._cache(fields, kind)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            if self._store.degraded:
                continue  # recovery reconciles before the store is used again
            try:
                if await self._store.registry_version() != self._version:
                    await self.reconcile()
            except StoreError as exc:
                log.warning("token registry refresh failed: %s", exc)

    async def reconcile(self) -> None:
        """Merge the store's registry with this replica's: the newest copy of each record wins
        on both sides, and records the store lacks are written back (teams and tokens)."""
        version = await self._store.registry_version(primary=True)
        for kind in KINDS:
            if await self._reconcile(kind, version):
                version = await self._store.registry_version(primary=True)
        self._version = version
        self.auth_enabled = not self._settings.auth_disabled_by_env or any(
            r.fields.get("kind") == "managed" and not r.revoked for r in self._tokens.values()
        )

    async def _reconcile(self, kind: str, version: int | None) -> bool:
        """Reconcile one kind of record; True when records were written back."""
        stored = (
            {}
            if version is None
            else {
                r["id"]: r for r in await self._store.all_records(kind, primary=True) if "id" in r
            }
        )
        cache = self._records[kind]
        missing = []
        for record_id, record in cache.items():
            theirs = stored.get(record_id)
            if theirs is None or int(theirs.get("updated_ms") or 0) < record.updated_ms:
                missing.append(record.fields)
        if missing:
            written = await self._store.reseed(kind, missing)
            log.warning("registry: wrote back %d %s records the store lacked", written, kind)
        for fields in stored.values():
            mine = cache.get(fields["id"])
            if mine is None or int(fields.get("updated_ms") or 0) >= mine.updated_ms:
                self._cache(fields, kind)
        return bool(missing)

    async def seed_static(self) -> None:
        """Create the records of static tokens; follow DEFAULT_* unless a PATCH set limits."""
        s = self._settings
        defaults = {
            "rpm": limit_field(s.default_rpm),
            "tpm": limit_field(s.default_tpm),
            "max_concurrency": limit_field(s.default_max_concurrency),
        }
        for tid in sorted(self._static_ids):
            fields = {
                "id": tid,
                "name": f"static-{tid[:6]}",
                "kind": "static",
                "team": "",
                "created_at": iso_utc(datetime.now(UTC)),
                "expires_at": "",
                "expires_ms": "0",
                "revoked": "0",
                "limits_source": "default",
                "updated_ms": "0",  # any stored copy (a PATCH, a revocation) is newer
                **defaults,
            }
            if tid not in self._tokens:
                self._cache(fields)  # static tokens work even before the store answers
            existing = await self._store.get_record("token", tid)
            if existing is None:
                if await self._store.put_record("token", tid, fields, "create"):
                    self._cache(fields)
            elif existing.get("limits_source") == "default" and any(
                existing.get(k, "") != v for k, v in defaults.items()
            ):
                await self._write(tid, {**existing, **defaults})
            else:
                self._cache(existing)

    async def write(
        self, kind: str, record_id: str, fields: dict[str, str], create: bool = False
    ) -> Record | None:
        """Store a record, cache it and tell the fleet; None when ``create`` found it taken or
        an update found it missing."""
        # Strictly after the copy it replaces, even within the same millisecond: after an
        # empty restart the newest copy wins, and two copies must never tie.
        previous = int(fields.get("updated_ms") or 0)
        fields = {**fields, "updated_ms": str(max(_now_ms(), previous + 1))}
        mode: WriteMode = "create" if create else "update"
        if not await self._store.put_record(kind, record_id, fields, mode):
            return None
        record = self._cache(fields, kind)
        await self._store.publish(f"{kind}:{record_id}")
        return record

    async def _write(self, tid: str, fields: dict[str, str], create: bool = False) -> Record:
        record = await self.write("token", tid, fields, create)
        if record is None:
            raise TokenNotFound(tid) if not create else TokenError("token id collision; retry")
        return record

    async def _team_field(self, value: Any) -> str:
        """A token's ``team`` as stored: an existing team's id, or "" for none."""
        if value is None:
            return ""
        if not isinstance(value, str) or not value:
            raise TokenError("team must be a team id or null", param="team")
        if self.team(value) is None:
            fields = await self._store.get_record("team", value)
            if fields is None or fields.get("deleted") == "1":
                # A well-formed id the registry does not hold now: the request contradicts
                # the current state (a 409), it is not malformed.
                raise Conflict(f"no team with id {value!r}", param="team", code="team_not_found")
            self._cache(fields, "team")
        return value

    # -- admin operations --------------------------------------------------------------------

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise TokenError("name is required and must be a non-empty string", param="name")
        limits = {k: parse_limit(k, body.get(k)) for k in LIMITS}
        budget = budget_changes(body, {})
        team = await self._team_field(body.get("team"))
        expires = parse_expiry(body.get("expires_at"))
        raw = "sk-best-" + secrets.token_urlsafe(32)
        tid = token_id(raw)
        fields = {
            "id": tid,
            "name": name.strip(),
            "kind": "managed",
            "team": team,
            "created_at": iso_utc(datetime.now(UTC)),
            "expires_at": iso_utc(expires) if expires else "",
            "expires_ms": str(int(expires.timestamp() * 1000)) if expires else "0",
            "revoked": "0",
            "limits_source": "custom",
            **{k: limit_field(v) for k, v in limits.items()},
            "budget_usd": budget.get("budget_usd", ""),
            "budget_period": budget.get("budget_period", ""),
            "cache_ttl_s": parse_cache_ttl(body.get("cache_ttl_s")),
        }
        record = await self._write(tid, fields, create=True)
        return {**to_record(record.fields), "token": raw}

    async def get(self, tid: str) -> dict[str, str]:
        fields = await self._store.get_record("token", tid)
        if fields is None:
            raise TokenNotFound(tid)
        return fields

    async def update(self, tid: str, body: dict[str, Any]) -> dict[str, Any]:
        fields = await self.get(tid)
        changes = budget_changes(body, fields)
        if changes:
            changes["limits_source"] = "custom"
        for key, value in body.items():
            if key in ("budget_usd", "budget_period"):
                continue
            if key == "team":
                changes["team"] = await self._team_field(value)
            elif key in LIMITS:
                changes[key] = limit_field(parse_limit(key, value))
                changes["limits_source"] = "custom"
            elif key == "name":
                if not isinstance(value, str) or not value.strip():
                    raise TokenError("name must be a non-empty string", param="name")
                changes["name"] = value.strip()
            elif key == "cache_ttl_s":
                changes["cache_ttl_s"] = parse_cache_ttl(value)
            elif key == "expires_at":
                expires = parse_expiry(value)
                changes["expires_at"] = iso_utc(expires) if expires else ""
                changes["expires_ms"] = str(int(expires.timestamp() * 1000)) if expires else "0"
            else:
                raise TokenError(
                    f"{key} cannot be changed; allowed: name, team, expires_at, "
                    f"{', '.join(LIMITS)}, budget_usd, budget_period, cache_ttl_s",
                    param=key,
                )
        record = await self._write(tid, {**fields, **changes})
        return to_record(record.fields)

    async def revoke(self, tid: str) -> dict[str, Any]:
        fields = await self.get(tid)
        record = await self._write(tid, {**fields, "revoked": "1"})
        return to_record(record.fields)

    async def list(self) -> list[dict[str, Any]]:
        rows = await self._store.all_records("token")
        records = []
        for row in rows:
            record = to_record(row)
            keys = self._store.keys.quota(row["id"], row.get("team") or None)
            usage = await self._store.usage(keys)
            record["usage"] = {
                "requests_last_minute": usage.requests,
                "tokens_last_minute": usage.tokens,
                "in_flight": usage.in_flight,
            }
            parsed = Record.parse(row)
            if parsed.budgeted:
                spend = await self._store.spend(keys.token_budget, parsed.budget.period)
                record["usage"]["budget_spent_usd"] = spend.spent / MICRO
                record["usage"]["budget_reserved_usd"] = spend.reserved / MICRO
            records.append(record)
        return records
