"""Who caches what: the opt-in (token, team, static default, request headers), the scope of an
answer and the key it is stored under.

A request whose token has no cache TTL and that sends no cache header costs a few attribute
reads here, and nothing else: no hashing, no store call.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson

from service import errors
from service.apis import Api
from service.quotas.limits import Record
from service.quotas.tokens import TokenRegistry
from service.settings import MAX_CACHE_TTL_S

TTL_HEADER = b"x-best-cache-ttl"
CACHE_CONTROL = b"cache-control"
# Fields that do not change the answer: how it is delivered, and who the client says it is.
IGNORED = frozenset({"stream", "stream_options", "user", "metadata"})
NO_SCOPE = "-"  # auth is off: one tenant


@dataclass(frozen=True, slots=True)
class Plan:
    """What the cache does for one request that opted in."""

    api: Api
    ttl_s: int  # how long a fresh answer is kept; 0: it is not stored
    lookup: bool  # False: Cache-Control no-cache or no-store, the cache is not read
    digest: str = ""  # the key: "" when nothing is read or stored
    scope: str = NO_SCOPE

    @property
    def bypass(self) -> bool:
        """Neither read nor written (no-store, or a TTL of 0 asked for this request)."""
        return not self.lookup and self.ttl_s == 0

    @property
    def result(self) -> str:
        """The ``x-best-cache`` value of a request not answered from the cache."""
        return "miss" if self.lookup else "bypass"


def requested_ttl(value: bytes) -> int:
    """``x-best-cache-ttl``: whole seconds, 0 (no cache for this request) to 30 days."""
    text = value.strip()
    if not text.isdigit() or int(text) > MAX_CACHE_TTL_S:
        raise errors.bad_request(
            f"Header 'x-best-cache-ttl' must be whole seconds from 0 to {MAX_CACHE_TTL_S}.",
            param="x-best-cache-ttl",
        )
    return int(text)


def directives(value: bytes | None) -> tuple[bool, bool]:
    """(no-cache, no-store) of a ``Cache-Control`` header."""
    if value is None:
        return False, False
    names = {part.split(b"=", 1)[0].strip().lower() for part in value.split(b",")}
    return b"no-cache" in names, b"no-store" in names


def cache_key(api: Api, scope: str, body: dict[str, object]) -> str:
    """SHA-256 of the route, the scope and the body's canonical JSON (sorted keys, without
    the fields that do not change the answer): equal requests of one tenant, one key."""
    canonical = orjson.dumps(
        {k: v for k, v in body.items() if k not in IGNORED}, option=orjson.OPT_SORT_KEYS
    )
    digest = hashlib.sha256(f"{api}\0{scope}\0".encode())
    digest.update(canonical)
    return digest.hexdigest()


def scope_of(token: Record | None) -> str:
    """Whose answers a request may see: its team's, else its token's (or identity's) own."""
    if token is None:
        return NO_SCOPE
    return f"team:{token.team}" if token.team else f"token:{token.id}"


class CachePolicy:
    """The cache TTL of a caller and the plan of each request."""

    def __init__(self, registry: TokenRegistry, default_ttl_s: int) -> None:
        self._registry = registry
        self._default_ttl_s = default_ttl_s

    def ttl_of(self, token: Record | None) -> int:
        """The token's own TTL, else its team's, else (a static token, or auth off) the
        default; 0 = no cache."""
        if token is None:
            return self._default_ttl_s
        if token.cache_ttl_s is not None:
            return token.cache_ttl_s
        if token.team:
            team = self._registry.team(token.team)
            if team is not None and team.cache_ttl_s is not None:
                return team.cache_ttl_s
        return self._default_ttl_s if token.fields.get("kind") == "static" else 0

    def plan(
        self,
        api: Api,
        token: Record | None,
        ttl_header: bytes | None,
        cache_control: bytes | None,
        body: dict[str, object],
    ) -> Plan | None:
        """None when the request does not use the cache at all; raises BadRequest for an
        unusable ``x-best-cache-ttl``."""
        if ttl_header is None:
            ttl = self.ttl_of(token)
            if ttl == 0:
                return None
        else:
            ttl = requested_ttl(ttl_header)
        no_cache, no_store = directives(cache_control)
        if ttl == 0 or no_store:
            return Plan(api, 0, lookup=False)
        scope = scope_of(token)
        return Plan(api, ttl, not no_cache, cache_key(api, scope, body), scope)
