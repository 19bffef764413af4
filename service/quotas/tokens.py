"""The token registry: static tokens from ``AUTH_TOKENS`` and managed ones, stored in the
store (durable), addressed by id = first 16 hex characters of the token's SHA-256.  Raw tokens
are never stored or logged.

The admission script reads a token's record on every request, so a revocation or a limit
change is in force on every replica at the next request.  The registry also keeps a local
snapshot (refreshed every few seconds) used when the shared store is unreachable and to
restore records after Redis lost its data.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from service.settings import Settings
from service.store.client import Store, StoreError

log = logging.getLogger("best.tokens")

SNAPSHOT_REFRESH_S = 5.0
LIMITS = ("rpm", "tpm", "max_concurrency")


class TokenError(ValueError):
    """A token operation was asked with invalid input (message says which field)."""


class TokenNotFound(LookupError):
    pass


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def token_id(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def iso_utc(moment: datetime) -> str:
    # isoformat, unlike strftime("%Y"), pads years below 1000 to the four digits ISO 8601 needs.
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def parse_expiry(value: Any, now: datetime | None = None) -> datetime | None:
    """An ``expires_at`` value as a UTC time in the future; TokenError (a 400) otherwise."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TokenError("expires_at must be an ISO 8601 time or null")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise TokenError(f"expires_at {value!r} is not an ISO 8601 time") from None
    try:
        # An offset at the calendar's edges (year 1 or 9999) moves the time out of range.
        moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
        moment.timestamp()
    except (OverflowError, ValueError):
        raise TokenError(f"expires_at {value!r} is out of the supported range") from None
    if moment <= (now or datetime.now(UTC)):
        raise TokenError(f"expires_at {value!r} is already in the past")
    return moment


def parse_limit(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TokenError(f"{name} must be a non-negative integer or null")
    return value or None


def _limit_field(value: int | None) -> str:
    return str(value) if value else ""


def to_record(fields: dict[str, str]) -> dict[str, Any]:
    """The public record (SPEC section 5) of stored fields."""
    return {
        "id": fields["id"],
        "name": fields.get("name", ""),
        "kind": fields.get("kind", "managed"),
        **{limit: int(fields[limit]) if fields.get(limit) else None for limit in LIMITS},
        "created_at": fields.get("created_at") or None,
        "expires_at": fields.get("expires_at") or None,
        "revoked": fields.get("revoked") == "1",
    }


class TokenRegistry:
    def __init__(self, settings: Settings, store: Store) -> None:
        self._settings = settings
        self._store = store
        self._static_ids = {token_id(raw) for raw in settings.auth_tokens}
        self._snapshot: dict[str, dict[str, str]] = {}
        self._task: asyncio.Task[None] | None = None
        self.auth_enabled = not settings.auth_disabled_by_env
        store.on_degrade(self._mirror_to_local)
        store.on_recover(self._restore)

    async def start(self) -> None:
        try:
            if not self._store.shared:
                await self._load_file()
            await self.seed_static()
            await self.refresh()
        except StoreError as exc:
            log.warning("token registry: %s", exc)
        self._task = asyncio.create_task(self._refresh_loop())
        self._store.subscribe(self._on_change)

    async def _on_change(self, tid: str) -> None:
        """Another replica changed a token: refresh it in the local snapshot at once."""
        try:
            fields = await self._store.get_token(tid)
        except StoreError:
            return
        if fields is not None:
            self._snapshot[tid] = fields

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def seed_static(self) -> None:
        """Create the records of static tokens; follow DEFAULT_* unless a PATCH set limits."""
        s = self._settings
        defaults = {
            "rpm": _limit_field(s.default_rpm),
            "tpm": _limit_field(s.default_tpm),
            "max_concurrency": _limit_field(s.default_max_concurrency),
        }
        for tid in sorted(self._static_ids):
            existing = await self._store.get_token(tid)
            if existing is None:
                await self._store.put_token(
                    tid,
                    {
                        "id": tid,
                        "name": f"static-{tid[:6]}",
                        "kind": "static",
                        "created_at": iso_utc(datetime.now(UTC)),
                        "expires_at": "",
                        "expires_ms": "0",
                        "revoked": "0",
                        "limits_source": "default",
                        **defaults,
                    },
                    create=True,
                )
            elif existing.get("limits_source") == "default" and any(
                existing.get(k, "") != v for k, v in defaults.items()
            ):
                await self._store.put_token(tid, defaults, create=False)

    async def refresh(self) -> None:
        rows = await self._store.all_tokens()
        self._snapshot = {row["id"]: row for row in rows if "id" in row}
        self.auth_enabled = not self._settings.auth_disabled_by_env or any(
            row.get("kind") == "managed" and row.get("revoked") != "1" for row in rows
        )

    # -- durability of the embedded store ---------------------------------------------------

    @property
    def _file(self) -> Path:
        return self._settings.data_dir / "tokens.json"

    async def _load_file(self) -> None:
        """The embedded store keeps the registry in DATA_DIR/tokens.json across restarts."""
        try:
            raw = await asyncio.to_thread(self._file.read_bytes)
        except FileNotFoundError:
            return
        try:
            rows = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.error("token registry file %s is not valid JSON; ignored", self._file)
            return
        for row in rows:
            if isinstance(row, dict) and isinstance(row.get("id"), str):
                await self._store.put_token(row["id"], {k: str(v) for k, v in row.items()}, False)
        log.info("token registry: loaded %d tokens from %s", len(rows), self._file)

    async def _changed(self, tid: str) -> None:
        """Announce a change to the fleet; persist the registry when the store is embedded
        (Redis persists itself)."""
        if self._store.shared:
            await self._store.publish(tid)
            return
        rows = await self._store.all_tokens()
        await asyncio.to_thread(_write_atomically, self._file, orjson.dumps(rows))

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_REFRESH_S)
            try:
                await self.refresh()
            except StoreError as exc:
                log.warning("token registry refresh failed: %s", exc)

    async def _mirror_to_local(self) -> None:
        await self._store.put_local_tokens(list(self._snapshot.values()))

    async def _restore(self) -> None:
        """After an outage: re-create records Redis lost (it may have restarted empty)."""
        for tid, fields in self._snapshot.items():
            await self._store.put_token(tid, fields, create=True)
        await self.seed_static()

    # -- admin operations --------------------------------------------------------------------

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise TokenError("name is required and must be a non-empty string")
        limits = {k: parse_limit(k, body.get(k)) for k in LIMITS}
        expires = parse_expiry(body.get("expires_at"))
        raw = "sk-best-" + secrets.token_urlsafe(32)
        tid = token_id(raw)
        fields = {
            "id": tid,
            "name": name.strip(),
            "kind": "managed",
            "created_at": iso_utc(datetime.now(UTC)),
            "expires_at": iso_utc(expires) if expires else "",
            "expires_ms": str(int(expires.timestamp() * 1000)) if expires else "0",
            "revoked": "0",
            "limits_source": "custom",
            **{k: _limit_field(v) for k, v in limits.items()},
        }
        await self._store.put_token(tid, fields, create=True)
        self._snapshot[tid] = fields
        self.auth_enabled = True
        await self._changed(tid)
        return {**to_record(fields), "token": raw}

    async def get(self, tid: str) -> dict[str, str]:
        fields = await self._store.get_token(tid)
        if fields is None:
            raise TokenNotFound(tid)
        return fields

    async def update(self, tid: str, body: dict[str, Any]) -> dict[str, Any]:
        fields = await self.get(tid)
        changes: dict[str, str] = {}
        for key, value in body.items():
            if key in LIMITS:
                changes[key] = _limit_field(parse_limit(key, value))
                changes["limits_source"] = "custom"
            elif key == "name":
                if not isinstance(value, str) or not value.strip():
                    raise TokenError("name must be a non-empty string")
                changes["name"] = value.strip()
            elif key == "expires_at":
                expires = parse_expiry(value)
                changes["expires_at"] = iso_utc(expires) if expires else ""
                changes["expires_ms"] = str(int(expires.timestamp() * 1000)) if expires else "0"
            else:
                raise TokenError(f"{key} cannot be changed; allowed: name, expires_at, {LIMITS}")
        if changes:
            await self._store.put_token(tid, changes, create=False)
            fields.update(changes)
        self._snapshot[tid] = fields
        await self._changed(tid)
        return to_record(fields)

    async def revoke(self, tid: str) -> dict[str, Any]:
        fields = await self.get(tid)
        await self._store.put_token(tid, {"revoked": "1"}, create=False)
        fields["revoked"] = "1"
        self._snapshot[tid] = fields
        await self._changed(tid)
        return to_record(fields)

    async def list(self) -> list[dict[str, Any]]:
        rows = await self._store.all_tokens()
        records = []
        for row in rows:
            record = to_record(row)
            requests, tokens, in_flight = await self._store.token_usage(row["id"])
            record["usage"] = {
                "requests_last_minute": requests,
                "tokens_last_minute": tokens,
                "in_flight": in_flight,
            }
            records.append(record)
        return records
