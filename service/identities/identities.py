"""Identities: callers known by a JWT of a trusted issuer (an OIDC provider, a Kubernetes
cluster), each a quota owner like a token.

- A bearer token shaped as a JWT whose (unverified) ``iss`` is a configured issuer is verified
  (``verifier.py``); any failure is a 401 naming its cause.  A JWT of another issuer, and every
  other bearer token, is left to the token registry: a JWT of an unknown issuer is answered
  exactly as an unknown token.
- The identity's id is the first 16 hex of SHA-256 of ``issuer`` NUL ``id claim``.  Its record
  lives in the token registry (kind ``identity``, name ``<issuer name>:<claim>``, the issuer's
  limits, the team its claim names), so admission, budgets, the ledger, ``GET /admin/tokens``
  and revocation (``DELETE /admin/tokens/{id}``, fleet-wide through the registry) treat it as
  a token.  The record is written when a replica first sees the identity, and again when the
  issuer's limits or the token's team claim change.
- A verified token is remembered (``MAX_VERIFIED`` tokens, least recently used out first, each
  until its ``exp`` plus leeway): a request with it costs a hash and two dict lookups, not a
  signature check.
- ``auth.yaml`` is reloaded when it changes (polled every ``POLL_S``); a bad file is reported
  and the last good one stays in force.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple

from service.config import ConfigError
from service.errors import Forbidden, Unauthorized
from service.identities.config import AuthConfig, Issuer, auth_fingerprint, load_auth
from service.identities.jwks import JwksFetcher, KeySet
from service.identities.verifier import Verified, Verifier, looks_like_jwt, unverified_issuer
from service.observability.metrics import Metrics
from service.quotas.limits import Record, refusal
from service.quotas.tokens import TokenRegistry, iso_utc
from service.settings import Settings

log = logging.getLogger("best.identities")

POLL_S = 2.0
MAX_VERIFIED = 4096
KIND = "identity"
LIMITS_FROM_ISSUER = "issuer"


def identity_id(issuer: str, subject: str) -> str:
    return hashlib.sha256(f"{issuer}\0{subject}".encode()).hexdigest()[:16]


class _Known(NamedTuple):
    identity: str  # the identity's id
    until: float  # Unix seconds: the token's exp plus the issuer's leeway


def _source_key(issuer: Issuer) -> tuple[str, str | None, str | None, str | None]:
    source = issuer.source
    return issuer.name, source.url, source.ca_file, source.token_file


class Identities:
    def __init__(
        self,
        settings: Settings,
        registry: TokenRegistry,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Raises ConfigError when auth.yaml is invalid."""
        self._dir = settings.config_dir
        self._registry = registry
        self._metrics = metrics
        self._clock = clock
        self._fetcher = JwksFetcher()
        self._verifiers: dict[str, Verifier] = {}  # by issuer (the iss value)
        self._known: OrderedDict[bytes, _Known] = OrderedDict()  # by SHA-256 of the token
        self._resolving: dict[str, asyncio.Task[Record]] = {}  # identity id -> its record
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self.config = AuthConfig()
        self._apply(load_auth(self._dir))

    @property
    def configured(self) -> bool:
        """Whether any issuer is trusted."""
        return bool(self._verifiers)

    def verifier(self, name: str) -> Verifier | None:
        return next((v for v in self._verifiers.values() if v.issuer.name == name), None)

    async def start(self) -> None:
        self._started = True
        self._tasks = [asyncio.create_task(self._watch())]
        self._prefetch()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for verifier in self._verifiers.values():
            verifier.keys.close()
        await self._fetcher.close()

    # -- who is calling ----------------------------------------------------------------------

    async def authenticate(self, raw: str | None) -> Record | None:
        """The identity's record when ``raw`` is a JWT of a trusted issuer; None when it is
        not one (a static or managed token: the registry decides).  Raises Unauthorized (the
        token is refused, or the identity blocked) or Forbidden (its team is unknown)."""
        if raw is None or not self._verifiers:
            self._other(raw)
            return None
        digest = hashlib.sha256(raw.encode()).digest()
        known = self._known.get(digest)
        if known is not None and known.until > time.time():
            self._known.move_to_end(digest)
            record = await self._registry.find(known.identity)
            if record is not None:
                return self._admitted(record)
        if not looks_like_jwt(raw):
            self._other(raw)
            return None
        iss = unverified_issuer(raw)
        verifier = self._verifiers.get(iss) if iss is not None else None
        if verifier is None:
            self._other(raw)
            return None
        try:
            verified = await verifier.verify(raw)
        except Unauthorized as exc:
            code = exc.code or "invalid_signature"
            self._metrics.identity_verifications.labels(verifier.issuer.name, code).inc()
            self._metrics.auth_failures.labels(code).inc()
            raise
        self._metrics.identity_verifications.labels(verifier.issuer.name, "ok").inc()
        team = self._team(verified)
        record = await self._record(verified, team)
        self._known[digest] = _Known(record.id, verified.expires + verified.issuer.leeway_s)
        if len(self._known) > MAX_VERIFIED:
            self._known.popitem(last=False)
        return self._admitted(record)

    def refuse_as_token(self, record: Record | None) -> None:
        """Only a verified JWT calls as an identity: a bearer token whose hash happens to be
        an identity's id (the issuer, NUL and the subject, sent as a token) is unknown."""
        if record is not None and record.fields.get("kind") == KIND:
            self._metrics.auth_failures.labels("unknown").inc()
            raise Unauthorized("The API token is unknown.")

    def _other(self, raw: str | None) -> None:
        """Not an identity.  With issuers trusted and no token configured, nothing else may
        call: refuse here what the registry (auth off) would let through."""
        if self._registry.auth_enabled or not self._verifiers:
            return None
        if raw is None:
            self._metrics.auth_failures.labels("missing").inc()
            raise Unauthorized("Missing bearer token: send 'Authorization: Bearer <token>'.")
        self._metrics.auth_failures.labels("unknown").inc()
        raise Unauthorized("The API token is unknown.")

    def _admitted(self, record: Record) -> Record:
        reason = refusal(record, int(time.time() * 1000))
        if reason is not None:
            self._metrics.auth_failures.labels(reason).inc()
            raise Unauthorized(f"This identity is {reason}.")
        if record.team and self._registry.team(record.team) is None:
            self._metrics.auth_failures.labels("unknown_team").inc()
            raise _unknown_team(record.team)
        return record

    def _team(self, verified: Verified) -> str | None:
        """The id of the BEST team the token's team claim names (by id or by name)."""
        value = verified.team
        if value is None:
            return None
        if self._registry.team(value) is not None:
            return value
        for team in self._registry.cached("team"):
            if not team.revoked and team.fields.get("name") == value:
                return team.id
        self._metrics.auth_failures.labels("unknown_team").inc()
        raise _unknown_team(value)

    async def _record(self, verified: Verified, team: str | None) -> Record:
        """The identity's record, created or brought up to date (one at a time per id)."""
        identity = identity_id(verified.issuer.issuer, verified.subject)
        task = self._resolving.get(identity)
        if task is None:
            task = asyncio.create_task(self._resolve(identity, verified, team))
            self._resolving[identity] = task
            task.add_done_callback(lambda _: self._resolving.pop(identity, None))
        return await asyncio.shield(task)

    async def _resolve(self, identity: str, verified: Verified, team: str | None) -> Record:
        issuer = verified.issuer
        wanted = {"name": f"{issuer.name}:{verified.subject}", "kind": KIND, "team": team or ""}
        record = await self._registry.find(identity)
        if record is None:
            fields = {
                "id": identity,
                "issuer": issuer.name,
                "created_at": iso_utc(datetime.now(UTC)),
                "expires_at": "",
                "expires_ms": "0",
                "revoked": "0",
                "limits_source": LIMITS_FROM_ISSUER,
                **issuer.limits.fields(),
                **wanted,
            }
            record = await self._registry.write("token", identity, fields, create=True)
            if record is None:  # another replica created it a moment ago
                record = await self._registry.load("token", identity)
            if record is None:
                raise Unauthorized("This identity cannot be recorded now; retry.")
            return record
        if record.fields.get("limits_source") == LIMITS_FROM_ISSUER:
            wanted.update(issuer.limits.fields())
        if all(record.fields.get(k, "") == v for k, v in wanted.items()):
            return record
        updated = await self._registry.write("token", identity, {**record.fields, **wanted})
        return updated or record

    # -- configuration -----------------------------------------------------------------------

    def _apply(self, config: AuthConfig) -> None:
        """Trust ``config``'s issuers; an issuer whose key source is unchanged keeps its cache."""
        held = {_source_key(v.issuer): v.keys for v in self._verifiers.values()}
        verifiers: dict[str, Verifier] = {}
        for issuer in config.issuers:
            keys = held.pop(_source_key(issuer), None)
            if keys is None:
                keys = KeySet(issuer, self._fetcher, self._clock)
            else:
                keys.issuer = issuer
            verifiers[issuer.issuer] = Verifier(issuer, keys)
        for retired in held.values():
            retired.close()
        self.config = config
        self._verifiers = verifiers
        self._known.clear()  # audiences, claims or limits may have changed: verify again

    def _prefetch(self) -> None:
        """Fetch the keys of every issuer that has none yet, without waiting for them."""
        for verifier in self._verifiers.values():
            if verifier.issuer.source.url is not None and not verifier.keys.cached():
                task = asyncio.create_task(verifier.keys.refresh())
                self._tasks.append(task)

    async def _watch(self) -> None:
        last_bad: str | None = None
        while True:
            await asyncio.sleep(POLL_S)
            fingerprint = await asyncio.to_thread(auth_fingerprint, self._dir)
            if fingerprint in (self.config.fingerprint, last_bad):
                continue
            try:
                config = await asyncio.to_thread(load_auth, self._dir)
            except ConfigError as exc:
                last_bad = fingerprint
                self._metrics.config_reloads.labels("error").inc()
                log.error("auth.yaml reload failed, keeping the last good one: %s", exc)
                continue
            last_bad = None
            self._apply(config)
            self._metrics.config_reloads.labels("ok").inc()
            log.info("auth.yaml reloaded: %d trusted issuers", len(config.issuers))
            self._prefetch()


def _unknown_team(value: str) -> Forbidden:
    return Forbidden(
        f"The team {value[:64]!r} named by the token's team claim is not a team of this gateway.",
        code="unknown_team",
    )
