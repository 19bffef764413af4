"""The response cache at the edge: a route hands its request and the way it answers a miss to
``through_cache``, which answers from the cache, or lets the miss through and keeps its answer.

- A hit makes no upstream call: it is admitted like any request with nothing to reserve (one
  request for rpm and concurrency; no tokens, no spend), answers ``x-best-cache: hit`` and
  ``age``, and the ledger counts it as a cached request.  A stream request is served the
  stored answer replayed as its route's stream.
- A miss answers ``x-best-cache: miss`` (``bypass`` under Cache-Control no-cache or no-store)
  and, when it succeeds, is stored: a JSON answer as it came, a stream once it ended well
  (reassembled into the route's JSON answer).  Errors raise past this module and are never
  stored; a stream that breaks or whose client leaves is not stored either.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import orjson

from service.api.http import JSON_HEADERS, SSE_HEADERS, Request, Response, Routed, StreamResponse
from service.apis import Api
from service.caching.cache import Entry, Flight, ResponseCache
from service.caching.policy import CACHE_CONTROL, TTL_HEADER, Plan
from service.gateway import Gateway
from service.observability.tracing import RequestTrace
from service.quotas.admission import Admission
from service.quotas.limits import Estimate, Record
from service.routing.relay import Relay
from service.routing.router import OnOpen
from service.routing.table import Candidate
from service.types import Headers
from service.upstream.sse import DONE, DONE_FRAME, SSEDecoder
from service.upstream.usage import NOTHING_USED

# Answers a miss; with a tap for a stream the cache may keep (pass it to the router).
Miss = Callable[[OnOpen | None], Awaitable[Response | StreamResponse]]
NOTHING_TO_RESERVE = Estimate(0, 0, chat=False)
_CACHE = b"x-best-cache"


def through_cache(
    gw: Gateway,
    request: Request,
    token: Record | None,
    api: Api,
    body: dict[str, Any],
    stream: bool,
    wants_usage: bool,
    miss: Miss,
) -> Awaitable[Response | StreamResponse]:
    """The answer: from the cache, or from ``miss`` (then kept when the cache may keep it).
    A request the cache has nothing to do with is ``miss`` itself, awaited by the caller."""
    cache = gw.cache
    plan = cache.plan(api, token, request.header(TTL_HEADER), request.header(CACHE_CONTROL), body)
    if plan is None:
        return miss(None)
    return _with_cache(gw, request, token, plan, stream, wants_usage, miss)


async def _with_cache(
    gw: Gateway,
    request: Request,
    token: Record | None,
    plan: Plan,
    stream: bool,
    wants_usage: bool,
    miss: Miss,
) -> Response | StreamResponse:
    cache = gw.cache
    if plan.bypass:
        _verdict(cache, request, "bypass")
        return _marked(await miss(None), b"bypass")
    flight: Flight | None = None
    if plan.lookup:
        entry = await cache.lookup(plan)
        if entry is None:
            flight, leads = cache.join(plan)
            if not leads:
                entry = await cache.follow(flight, gw.settings.request_timeout_s)
                flight = None  # the leader's to land; if it shared nothing, go upstream alone
        if entry is not None:
            response = await _hit(gw, request, token, plan, entry, stream, wants_usage)
            _verdict(cache, request, "hit")
            return response
    _verdict(cache, request, plan.result)
    return await _fresh(cache, plan, flight, stream, miss)


def _verdict(cache: ResponseCache, request: Request, result: str) -> None:
    """Count the cache's verdict, and record it on the request's trace."""
    cache.count(result)
    if request.trace is not None:
        request.trace.cache(result)


async def _fresh(
    cache: ResponseCache, plan: Plan, flight: Flight | None, stream: bool, miss: Miss
) -> Response | StreamResponse:
    """The miss's own answer, kept when it may be; a leader's flight lands with it."""
    tap = _StreamTap(cache, plan, flight) if stream and cache.format(plan.api).assembler() else None
    try:
        response = await miss(tap.opened if tap is not None else None)
    except BaseException:
        if flight is not None:
            cache.land(plan, flight, None)
        raise
    if isinstance(response, StreamResponse) and tap is not None and response.status == 200:
        response.chunks = tap.wrap(response.chunks, response.call)
        if response.call is not None:
            response.call = _Landing(response.call, tap.abandon)
    else:
        entry = None
        if isinstance(response, Response) and response.status == 200:
            served = response.call.served_by if response.call is not None else None
            entry = cache.entry(plan, response.body, served)
            if entry is not None:
                cache.keep(plan, entry)
        if flight is not None:
            cache.land(plan, flight, entry)
    return _marked(response, plan.result.encode())


def _marked(response: Response | StreamResponse, result: bytes) -> Response | StreamResponse:
    response.headers = [*response.headers, (_CACHE, result)]
    return response


# -- hits ---------------------------------------------------------------------------------------


async def _hit(
    gw: Gateway,
    request: Request,
    token: Record | None,
    plan: Plan,
    entry: Entry,
    stream: bool,
    wants_usage: bool,
) -> Response | StreamResponse:
    admission = await gw.quotas.admit(token, gw.ids(), NOTHING_TO_RESERVE)
    call = _HitCall(partial(_settle_hit, gw, admission, token, entry), request.trace)
    headers: Headers = [(_CACHE, b"hit"), (b"age", str(entry.age_s()).encode())]
    if entry.provider:
        headers += [
            (b"x-best-provider", entry.provider.encode()),
            (b"x-best-model", entry.model.encode()),
        ]
    headers += admission.headers
    if not stream:
        return Response(200, entry.body, [*JSON_HEADERS, *headers], call=call)
    replay = gw.cache.format(plan.api).replay(orjson.loads(entry.body), wants_usage)
    final = DONE_FRAME if replay.endswith(DONE_FRAME) else b""
    return StreamResponse(200, _once(replay), [*SSE_HEADERS, *headers], call=call, final=final)


def _settle_hit(gw: Gateway, admission: Admission, token: Record | None, entry: Entry) -> None:
    """A hit used nothing: its lease goes, its (empty) reservations are settled at zero, and
    the ledger counts a cached request of the pair that wrote the answer."""
    gw.quotas.settle(admission, NOTHING_USED)
    token_id, team = (token.id, token.team or "") if token is not None else ("", "")
    gw.quotas.ledger.record_cached(token_id, team, entry.provider, entry.model)


async def _once(piece: bytes) -> AsyncIterator[bytes]:
    yield piece


class _HitCall:
    """A hit as the edge sees a routed call: no upstream, settled once when answered."""

    __slots__ = ("_settle", "finished", "trace")
    upstream_s = 0.0
    served_by = None

    def __init__(self, settle: Callable[[], None], trace: RequestTrace | None) -> None:
        self._settle = settle
        self.trace = trace
        self.finished = False

    def finish(self) -> None:
        if not self.finished:
            self.finished = True
            self._settle()


# -- keeping a streamed miss ------------------------------------------------------------------


class _StreamTap:
    """Reads a streamed miss as it goes to the client and rebuilds its JSON answer; keeps it
    when the stream ended well (the upstream finished, the client read to the end)."""

    def __init__(self, cache: ResponseCache, plan: Plan, flight: Flight | None) -> None:
        self._cache = cache
        self._plan = plan
        self._flight = flight
        assembler = cache.format(plan.api).assembler()
        assert assembler is not None
        self._assembler = assembler
        self._relay: Relay | None = None

    async def opened(self, candidate: Candidate, relay: Relay) -> None:
        self._relay = relay

    async def wrap(self, chunks: AsyncIterator[bytes], call: Routed | None) -> AsyncIterator[bytes]:
        decoder = SSEDecoder()
        feed = self._assembler.feed
        entry: Entry | None = None
        try:
            async for piece in chunks:
                for payload in decoder.feed(piece):
                    if payload != DONE:
                        try:
                            event = orjson.loads(payload)
                        except orjson.JSONDecodeError:
                            continue
                        if isinstance(event, dict):
                            feed(event)
                yield piece
            entry = self._ended(call)
        finally:
            self._land(entry)

    def _ended(self, call: Routed | None) -> Entry | None:
        relay = self._relay
        if relay is not None and relay.failure is not None:
            return None
        answer = self._assembler.result(relay.usage if relay is not None else None)
        if answer is None:
            return None
        served = call.served_by if call is not None else None
        entry = self._cache.entry(self._plan, orjson.dumps(answer), served, answer)
        if entry is not None:
            self._cache.keep(self._plan, entry)
        return entry

    def _land(self, entry: Entry | None) -> None:
        if self._flight is not None:
            self._cache.land(self._plan, self._flight, entry)
            self._flight = None

    def abandon(self) -> None:
        """The response is over: a stream never started shares nothing."""
        self._land(None)


class _Landing:
    """The routed call of a streamed miss, which also lands its flight when it finishes (the
    stream may end before its first piece, its client gone)."""

    __slots__ = ("_call", "_done")

    def __init__(self, call: Routed, done: Callable[[], None]) -> None:
        self._call = call
        self._done = done

    @property
    def upstream_s(self) -> float:
        return self._call.upstream_s

    @upstream_s.setter
    def upstream_s(self, value: float) -> None:
        self._call.upstream_s = value

    @property
    def served_by(self) -> tuple[str, str] | None:
        return self._call.served_by

    @property
    def trace(self) -> RequestTrace | None:
        return self._call.trace

    def finish(self) -> None:
        self._call.finish()
        self._done()
