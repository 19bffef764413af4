"""Teams: a name, limits and a budget shared by every token of the team.

Team records live in the registry next to tokens (kind "team") and are cached and kept current
by the same ``TokenRegistry``; admission reads a token's team from that cache.  A deleted team
keeps its record, marked deleted, so that no replica's re-seed brings it back; a team that
still has tokens cannot be deleted (move or revoke them first).
"""

from __future__ import annotations

import secrets
import string
from datetime import UTC, datetime
from typing import Any

from service.errors import Conflict, NotFound
from service.quotas.limits import LIMITS, MICRO, Record
from service.quotas.tokens import (
    TokenError,
    TokenRegistry,
    budget_changes,
    budget_record,
    cache_ttl_record,
    iso_utc,
    limit_field,
    parse_cache_ttl,
    parse_limit,
)

ID_CHARS = set(string.ascii_lowercase + string.digits + "-_")
MAX_ID = 64


class TeamNotFound(NotFound):
    def __init__(self, team_id: str) -> None:
        super().__init__(f"No team with id {team_id!r}.", code="team_not_found")


def to_team(fields: dict[str, str]) -> dict[str, Any]:
    """The public team record (docs/teams-budgets.md)."""
    return {
        "id": fields["id"],
        "name": fields.get("name", ""),
        **{limit: int(fields[limit]) if fields.get(limit) else None for limit in LIMITS},
        **budget_record(fields),
        "cache_ttl_s": cache_ttl_record(fields),
        "created_at": fields.get("created_at") or None,
    }


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TokenError("name is required and must be a non-empty string", param="name")
    return value.strip()


def _team_id(value: Any) -> str:
    if value is None:
        return "team-" + secrets.token_hex(6)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID or not set(value) <= ID_CHARS:
        raise TokenError(f"id must be 1-{MAX_ID} characters of a-z, 0-9, '-' and '_'", param="id")
    return value


class Teams:
    def __init__(self, registry: TokenRegistry) -> None:
        self._registry = registry
        self._store = registry.store

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        _known(body, ("id", "name", *LIMITS, "budget_usd", "budget_period", "cache_ttl_s"))
        name = _name(body.get("name"))
        team_id = _team_id(body.get("id"))
        limits = {k: limit_field(parse_limit(k, body.get(k))) for k in LIMITS}
        budget = budget_changes(body, {})
        fields = {
            "id": team_id,
            "name": name,
            "created_at": iso_utc(datetime.now(UTC)),
            "deleted": "0",
            **limits,
            "budget_usd": budget.get("budget_usd", ""),
            "budget_period": budget.get("budget_period", ""),
            "cache_ttl_s": parse_cache_ttl(body.get("cache_ttl_s")),
        }
        existing = await self._store.get_record("team", team_id)
        if existing is not None:
            if existing.get("deleted") != "1":
                raise Conflict(f"A team with id {team_id!r} exists.", param="id")
            # A deleted team's id may be taken again: a new team, from a clean record.
            record = await self._registry.write("team", team_id, fields)
        else:
            record = await self._registry.write("team", team_id, fields, create=True)
        if record is None:
            raise Conflict(f"A team with id {team_id!r} exists.", param="id")
        return to_team(record.fields)

    async def get(self, team_id: str) -> dict[str, str]:
        fields = await self._store.get_record("team", team_id)
        if fields is None or fields.get("deleted") == "1":
            raise TeamNotFound(team_id)
        return fields

    async def update(self, team_id: str, body: dict[str, Any]) -> dict[str, Any]:
        _known(body, ("name", *LIMITS, "budget_usd", "budget_period", "cache_ttl_s"))
        fields = await self.get(team_id)
        changes = budget_changes(body, fields)
        for key, value in body.items():
            if key in LIMITS:
                changes[key] = limit_field(parse_limit(key, value))
            elif key == "name":
                changes["name"] = _name(value)
            elif key == "cache_ttl_s":
                changes["cache_ttl_s"] = parse_cache_ttl(value)
        record = await self._registry.write("team", team_id, {**fields, **changes})
        if record is None:
            raise TeamNotFound(team_id)
        return to_team(record.fields)

    async def delete(self, team_id: str) -> dict[str, Any]:
        fields = await self.get(team_id)
        members = [
            r["id"]
            for r in await self._store.all_records("token")
            # An identity's team follows its token's claim: it does not hold the team.
            if r.get("team") == team_id and r.get("revoked") != "1" and r.get("kind") != "identity"
        ]
        if members:
            raise Conflict(
                f"Team {team_id!r} still has {len(members)} active tokens "
                f"({', '.join(members[:5])}); move them to another team or revoke them first.",
                param="id",
            )
        record = await self._registry.write("team", team_id, {**fields, "deleted": "1"})
        if record is None:
            raise TeamNotFound(team_id)
        return {**to_team(record.fields), "deleted": True}

    async def list(self) -> list[dict[str, Any]]:
        rows = await self._store.all_records("team")
        tokens = await self._store.all_records("token")
        out = []
        for row in rows:
            if row.get("deleted") == "1":
                continue
            team = to_team(row)
            team["tokens"] = sum(
                1 for t in tokens if t.get("team") == row["id"] and t.get("revoked") != "1"
            )
            team.update(await self.spend(row))
            out.append(team)
        return out

    async def spend(self, fields: dict[str, str]) -> dict[str, float]:
        """The team's spend in its current budget period (empty without a budget)."""
        record = Record.parse(fields)
        if not record.budgeted:
            return {}
        keys = self._store.keys.quota("-", record.id)
        assert keys.team_budget is not None
        spend = await self._store.spend(keys.team_budget, record.budget.period)
        return {
            "budget_spent_usd": spend.spent / MICRO,
            "budget_reserved_usd": spend.reserved / MICRO,
        }


def _known(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in body:
        if key not in allowed:
            raise TokenError(f"{key} is not a team field; allowed: {', '.join(allowed)}", param=key)
