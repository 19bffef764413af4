"""An issuer's signing keys: fetched from its JWKS URL (or read from a file at load), cached.

- The cache lives as long as the answer's ``Cache-Control: max-age`` says (``DEFAULT_MAX_AGE_S``
  without one, clamped to ``MIN_MAX_AGE_S``..``MAX_MAX_AGE_S``); after that the next lookup
  refreshes it in the background and the cached keys keep serving meanwhile.
- A ``kid`` the cache does not hold refetches the set at once, at most once per
  ``REFETCH_S`` per issuer: a flood of forged kids costs the provider one request.
- Fetches are single-flight: concurrent lookups await the same fetch.
- A failed fetch keeps the cached keys (and is retried after ``REFETCH_S``).

``JwksFetcher`` is the one place that fetches keys; the HTTP client's failures become
``JwksUnavailable`` there.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from service.identities.config import Issuer, JwksSource
from service.upstream.client import UpstreamClient
from service.upstream.errors import UpstreamFailure

log = logging.getLogger("best.identities")

DEFAULT_MAX_AGE_S = 300.0
MIN_MAX_AGE_S = 10.0
MAX_MAX_AGE_S = 86_400.0
REFETCH_S = 30.0
FETCH_TIMEOUT_S = 5.0
MAX_JWKS_BYTES = 1024 * 1024
_MAX_AGE = re.compile(r"(?:^|[,\s])(?:s-)?max-age\s*=\s*\"?(\d+)")
_NO_CACHE = re.compile(r"(?:^|[,\s])(?:no-cache|no-store)(?:$|[,\s=])")


class JwksUnavailable(Exception):
    """The key set could not be fetched or is not a JWK Set (the message says why)."""


def max_age(cache_control: str | None) -> float:
    """How long an answer with this ``Cache-Control`` may be used, in seconds."""
    if not cache_control:
        return DEFAULT_MAX_AGE_S
    value = cache_control.lower()
    if _NO_CACHE.search(value):
        return MIN_MAX_AGE_S
    found = _MAX_AGE.search(value)
    if found is None:
        return DEFAULT_MAX_AGE_S
    return min(MAX_MAX_AGE_S, max(MIN_MAX_AGE_S, float(found.group(1))))


def parse_jwks(document: Any) -> dict[str, dict[str, Any]]:
    """The public keys of a JWK Set by ``kid`` (a key without one is stored under "")."""
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise JwksUnavailable("the answer is not a JWK Set (no list of keys)")
    found: dict[str, dict[str, Any]] = {}
    for key in keys:
        # Only public keys of asymmetric types: an "oct" (shared secret) key is never usable.
        if isinstance(key, dict) and key.get("kty") in ("RSA", "EC", "OKP") and "d" not in key:
            kid = key.get("kid")
            found[kid if isinstance(kid, str) else ""] = key
    return found


class JwksFetcher:
    """GETs a JWKS URL through the gateway's own HTTP client (service/upstream), with the
    issuer's TLS context; fetches are rare (minutes apart), so each has a client of its own."""

    def __init__(self, timeout_s: float = FETCH_TIMEOUT_S) -> None:
        self._timeout_s = timeout_s

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def fetch(self, issuer: Issuer) -> tuple[dict[str, dict[str, Any]], float]:
        """The keys at the issuer's URL and how long they may be cached (s)."""
        source = issuer.source
        assert source.url is not None
        headers = {"Accept": "application/json"}
        if source.token_file is not None:
            token = await asyncio.to_thread(_read_token, source.token_file)
            headers["Authorization"] = f"Bearer {token}"
        client = UpstreamClient(tls=issuer.ssl_context)
        await client.start()
        try:
            response = await client.request("GET", source.url, headers, None, self._timeout_s)
        except UpstreamFailure as failure:
            raise JwksUnavailable(f"{source.url}: {failure.message}") from None
        finally:
            await client.close()
        if response.status != 200:
            raise JwksUnavailable(f"{source.url} answered HTTP {response.status}")
        body = response.body
        if len(body) > MAX_JWKS_BYTES:
            raise JwksUnavailable(f"{source.url}: the key set is larger than {MAX_JWKS_BYTES} B")
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise JwksUnavailable(f"{source.url}: the answer is not JSON") from None
        return parse_jwks(document), max_age(response.cache_control)


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().strip()
    except OSError as exc:
        raise JwksUnavailable(f"jwks_token_file {path}: {exc.strerror}") from None


class KeySet:
    """One issuer's keys, kept current as the module docstring says."""

    def __init__(
        self,
        issuer: Issuer,
        fetcher: JwksFetcher,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self._fetcher = fetcher
        self._clock = clock
        self._keys: Mapping[str, dict[str, Any]] = {}
        self._expires = 0.0
        self._last_fetch = -REFETCH_S  # when the last fetch started
        self._fetching: asyncio.Future[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.fetches = 0  # fetches started (a test and a log line read it)
        if issuer.source.url is None:  # a jwks_file: read at load, never fetched
            self._keys = parse_jwks({"keys": list(issuer.source.keys)})
            self._expires = float("inf")

    @property
    def source(self) -> JwksSource:
        return self.issuer.source

    def cached(self) -> Mapping[str, dict[str, Any]]:
        return self._keys

    async def key(self, kid: str) -> dict[str, Any] | None:
        """The JWK of ``kid`` (None: not in the set, even after a refetch allowed now)."""
        now = self._clock()
        if now >= self._expires and self._fetching is None and self._keys:
            self._refresh_in_background()
        found = self._keys.get(kid)
        if found is not None:
            return found
        if self._fetching is None and now - self._last_fetch < REFETCH_S:
            return None
        await self.refresh()
        return self._keys.get(kid)

    async def only_key(self) -> dict[str, Any] | None:
        """The set's key when it holds exactly one (for a token without ``kid``)."""
        if not self._keys:
            await self.key("")
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None

    async def refresh(self) -> None:
        """Fetch the set now, or wait for the fetch under way; never raises."""
        if self._fetching is None:
            self._fetching = asyncio.get_running_loop().create_future()
            fetching = self._fetching
            try:
                await self._fetch()
            finally:
                self._fetching = None
                fetching.set_result(None)
        else:
            await asyncio.shield(self._fetching)

    def _refresh_in_background(self) -> None:
        task = asyncio.create_task(self.refresh())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _fetch(self) -> None:
        if self.issuer.source.url is None:
            return
        self._last_fetch = self._clock()
        self.fetches += 1
        try:
            keys, lifetime = await self._fetcher.fetch(self.issuer)
        except JwksUnavailable as exc:
            # Keep what we have; try again once REFETCH_S has passed.
            self._expires = self._clock() + REFETCH_S
            log.warning(
                "issuer %s: JWKS fetch failed, keeping %d cached keys: %s",
                self.issuer.name,
                len(self._keys),
                exc,
            )
            return
        if keys.keys() != self._keys.keys():
            log.info("issuer %s: %d signing keys (JWKS)", self.issuer.name, len(keys))
        self._keys = keys
        self._expires = self._clock() + lifetime

    def close(self) -> None:
        for task in self._background:
            task.cancel()
