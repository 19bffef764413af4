"""Failover: from a requested model to an answer.

``complete`` and ``stream`` try the candidates in order, at most ``MAX_ATTEMPTS`` within one
deadline, cooling what fails.  A stream can fail over until its first event is sent; after
that a failure ends it with an error event.  Quotas are not this module's business: the
caller hands each ``Call`` a ``settle`` callback, and the router calls it exactly once, with
what the upstreams reported they used (``Usage``: provider, model, tokens, reported cost; a
hedge that lost but answered rides along in ``Usage.also``; None when unknown), when the
request is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from prometheus_client import Histogram

from service import errors
from service.apis import Api
from service.errors import GatewayError
from service.ids import IdGenerator
from service.observability.metrics import Metrics
from service.observability.tracing import LOST, WON, AttemptSpan, RequestTrace
from service.routing.breakers import Breakers
from service.routing.catalog import Catalog
from service.routing.exchange import Exchange, ForwardExchange, Outgoing, UsableAnswer
from service.routing.fleet_stats import FleetStats
from service.routing.relay import Relay
from service.routing.table import AUTO, CHAT, Candidate
from service.settings import Settings
from service.types import Headers
from service.upstream.client import UpstreamClient, UpstreamStream
from service.upstream.errors import (
    RATE_LIMITED,
    STREAM_BROKEN,
    TIMEOUT,
    ClientFault,
    UpstreamFailure,
    failure_for_status,
)
from service.upstream.usage import NOTHING_USED, Usage, read_usage

log = logging.getLogger("best.router")
_UNBOUNDED: contextlib.nullcontext[None] = contextlib.nullcontext()

# Called with the chosen candidate and its relay before a stream's first byte leaves.
OnOpen = Callable[[Candidate, Relay], Awaitable[None]]


def _no_settlement(usage: Usage | None) -> None:
    return None


@dataclass(slots=True)
class Call:
    """One client request as it moves through the router."""

    request_id: str  # the id the client sees (x-request-id), for logs
    entry_id: str  # unique across the fleet: names this request's quota lease
    started: float
    deadline: float
    upstream_s: float = 0.0
    candidate: Candidate | None = None
    headers: Headers = field(default_factory=list)  # quota headers for the client
    operation: Api = Api.CHAT
    settle: Callable[[Usage | None], None] = _no_settlement
    finished: bool = False
    hedge_after_ms: float | None = None  # None: no hedging; HEDGE_P95: the pair's p95
    extra_usage: list[Usage] = field(default_factory=list)  # hedges that lost but answered
    trace: RequestTrace | None = None  # the request's SERVER span (tracing on)

    @property
    def served_by(self) -> tuple[str, str] | None:
        c = self.candidate
        return (c.provider, c.model) if c is not None else None

    def finish(self, usage: Usage | None = None) -> None:
        """Settle the request's quotas once with what it used (None: unknown, the
        reservations are kept; ``NOTHING_USED``: no upstream served it)."""
        if not self.finished:
            self.finished = True
            if usage is not None and self.extra_usage:
                usage = replace(usage, also=tuple(self.extra_usage))
            self.settle(usage)


@dataclass(slots=True)
class Completion:
    """A finished upstream answer: relayed as is (a success, or the client's own fault)."""

    status: int
    body: bytes
    content_type: bytes


@dataclass(frozen=True, slots=True)
class _PairSeries:
    """The metric children a success of one (API, provider, model) updates."""

    duration_ok: Histogram
    tokens_in: Histogram
    tokens_out: Histogram


_SERIES_MAX = 4096  # pairs come from the configuration: bounded, with room for reloads

HEDGE_P95 = -1.0  # hedge after the first candidate's recent p95 time to first byte
HEDGE_DEFAULT_MS = 1000.0  # ... or this while the pair has no recent figures


class Router:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        breakers: Breakers,
        client: UpstreamClient,
        stats: FleetStats,
        metrics: Metrics,
        ids: IdGenerator,
    ) -> None:
        self._ids = ids
        self._settings = settings
        self._catalog = catalog
        self._breakers = breakers
        self._client = client
        self._stats = stats
        self._metrics = metrics
        self._random = random.Random()
        self._series: dict[tuple[str, str, str], _PairSeries] = {}
        self._hedge_for: dict[str, float | None] = {}  # requested model -> hedging policy
        self._hedge_config: object = None

    def new_call(self, request_id: str, model: str = "", hedge: bool | None = None) -> Call:
        """A call for ``model``; ``hedge`` is the client's ``x-best-hedge`` (None: absent)."""
        now = time.monotonic()
        deadline = now + self._settings.request_timeout_s
        call = Call(request_id, self._ids(), now, deadline)
        if hedge is not False:
            after = self._hedge_policy(model)
            call.hedge_after_ms = after if after is not None or not hedge else HEDGE_P95
        return call

    def _hedge_policy(self, model: str) -> float | None:
        """The ``hedging:`` group for a requested model: None (off), a fixed delay in ms,
        or HEDGE_P95."""
        groups = self._catalog.config.hedging
        if not groups:
            return None
        if self._hedge_config is not groups:  # the configuration was reloaded
            self._hedge_config = groups
            self._hedge_for = {}
        cache = self._hedge_for
        if model in cache:
            return cache[model]
        found = next((g for g in groups if g.matches(model or AUTO)), None)
        policy = None if found is None else found.after_ms or HEDGE_P95
        if len(cache) < 4096:  # bounded: clients choose these strings
            cache[model] = policy
        return policy

    def candidates(self, model: str, api: str = CHAT) -> list[Candidate]:
        """The candidates to try for ``model``, best first, among the providers serving
        ``api``, without those cooling down or with an open breaker; a small share of
        requests tries first a pair the live factor moved down (see ``_explored``)."""
        table = self._catalog.table
        found = table.for_api(api).resolve(model)
        if not found and model:
            target = self._catalog.config.model_aliases.target(model)
            if target is not None:
                found = table.for_api(api).resolve(target)
                if not found and self._catalog.no_keys_message() is None:
                    raise errors.ModelNotFound(
                        f"The model `{model}` is an alias of `{target}` (aliases.yaml), "
                        "which no configured provider serves.",
                        param="model",
                    )
        if not found:
            no_keys = self._catalog.no_keys_message()
            if no_keys is not None:
                raise errors.unavailable(no_keys)
            if api != CHAT and table.resolve(model):
                raise errors.ModelNotFound(
                    f"No provider serving the {Api(api).display} API serves the model "
                    f"`{model or AUTO}` (see apis: in meta-providers.yaml).",
                    param="model",
                )
            raise errors.model_not_found(model or AUTO)
        available, wait_s = self._breakers.available(found)
        if available:
            explore = self._catalog.config.live.explore
            if explore and len(available) > 1 and self._random.random() < explore:
                # A fallback list "a,b" is the client's own order: never explored.
                return available if "," in model else _explored(available, self._random)
            return available
        now = int(time.time() * 1000)
        if all(self._breakers.until_provider(c, now) for c in found):
            raise errors.ProvidersRateLimited(
                "Every provider for this model is cooling down after its rate limits; retry later.",
                retry_after_s=wait_s,
            )
        raise errors.BreakersOpen(
            "Every provider for this model has its circuit breaker open after repeated "
            "failures; retry later.",
            retry_after_s=wait_s,
        )

    # -- attempts ----------------------------------------------------------------------------

    async def _failed(
        self, call: Call, candidate: Candidate, failure: UpstreamFailure, elapsed: float
    ) -> None:
        self._stats.record(candidate.provider, candidate.model, ok=False, latency_s=elapsed)
        self._metrics.upstream_duration.labels(
            call.operation, candidate.provider, candidate.model, failure.reason
        ).observe(elapsed, None if call.trace is None else call.trace.exemplar)
        self._metrics.failovers.labels(candidate.provider, failure.reason).inc()
        log.info(
            "request %s: %s/%s failed (%s): %s",
            call.request_id,
            candidate.provider,
            candidate.model,
            failure.reason,
            failure.message,
        )
        await self._breakers.failed(candidate, failure)

    def _succeeded(
        self,
        call: Call,
        candidate: Candidate,
        elapsed: float,
        usage: Any,
        first_byte_s: float | None = None,
    ) -> Usage | None:
        """Record a success; returns what it used (None when the upstream did not say)."""
        used = read_usage(candidate.provider, candidate.model, usage)
        prompt = used.prompt_tokens if used else 0
        completion = used.completion_tokens if used else 0
        self._stats.record(
            candidate.provider,
            candidate.model,
            ok=True,
            latency_s=elapsed,
            first_byte_s=elapsed if first_byte_s is None else first_byte_s,
            prompt_tokens=prompt,
            completion_tokens=completion,
        )
        self._breakers.succeeded(candidate)
        series = self._series_of(call.operation, candidate)
        exemplar = None if call.trace is None else call.trace.exemplar
        series.duration_ok.observe(elapsed, exemplar)
        if used:
            series.tokens_in.observe(prompt)
            if call.operation != Api.EMBEDDINGS:
                series.tokens_out.observe(completion)
        return used

    def _series_of(self, operation: Api, candidate: Candidate) -> _PairSeries:
        """A pair's metric children for an API, resolved once (``labels()`` takes a lock and
        builds a key on every call)."""
        key = (operation, candidate.provider, candidate.model)
        series = self._series.get(key)
        if series is None:
            metrics = self._metrics
            series = _PairSeries(
                metrics.upstream_duration.labels(*key, "ok"),
                metrics.tokens.labels(*key, "input"),
                metrics.tokens.labels(*key, "output"),
            )
            if len(self._series) < _SERIES_MAX:
                self._series[key] = series
        return series

    def _hedge_delay_s(self, call: Call, first: Candidate) -> float | None:
        after = call.hedge_after_ms
        if after is None:
            return None
        if after == HEDGE_P95:
            p95 = self._stats.live.p95_ms(first.provider, first.model)
            after = p95 if p95 is not None else HEDGE_DEFAULT_MS
        return after / 1000.0

    async def _decide(
        self, call: Call, plan: _Plan, attempt: Attempt[T]
    ) -> tuple[Candidate, T, float] | Completion:
        """``_race``, with the endings in which nothing is served settled here: the request
        refused by the upstream (the client's fault) becomes the answer, anything else
        propagates; either way the call finishes having used nothing."""
        try:
            return await self._race(call, plan, attempt)
        except ClientFault as fault:
            call.candidate = plan.last
            call.finish(NOTHING_USED)
            return Completion(fault.status, fault.body, fault.content_type or b"application/json")
        except BaseException:
            call.finish(NOTHING_USED)
            raise

    async def _race(
        self, call: Call, plan: _Plan, attempt: Attempt[T]
    ) -> tuple[Candidate, T, float]:
        """Run attempts until one succeeds: (candidate, its result, seconds it took).

        Without hedging one attempt at a time, in candidate order.  With hedging, when the
        first attempt has no answer after the hedge delay, the next candidate starts too; the
        first success wins and every other attempt is cancelled at once.  Raises the plan's
        final error when nothing works, ClientFault when the request itself is refused."""
        running: dict[asyncio.Task[T], tuple[Candidate, float]] = {}
        hedged = False
        try:
            while True:
                delay = None
                if not running:
                    candidate = await plan.next()
                    if candidate is None:
                        raise plan.give_up()
                    delay = None if hedged else self._hedge_delay_s(call, candidate)
                    if delay is None:
                        # No hedging: the attempt runs in this task (no task to schedule).
                        started = time.monotonic()
                        try:
                            result = await attempt(candidate)
                        except UpstreamFailure as failure:
                            elapsed = time.monotonic() - started
                            call.upstream_s += elapsed
                            plan.failed(candidate, failure)
                            await self._failed(call, candidate, failure, elapsed)
                            continue
                        except ClientFault:
                            call.upstream_s += time.monotonic() - started
                            plan.last = candidate
                            raise
                        elapsed = time.monotonic() - started
                        call.upstream_s += elapsed
                        return candidate, result, elapsed
                    running[_start(attempt, candidate)] = (candidate, time.monotonic())
                waited = time.monotonic()
                done, _ = await asyncio.wait(
                    running, timeout=delay, return_when=asyncio.FIRST_COMPLETED
                )
                call.upstream_s += time.monotonic() - waited
                if not done:  # no answer within the hedge delay: start the next candidate
                    hedged = True
                    candidate = await plan.next()
                    if candidate is not None:
                        self._metrics.hedges.labels(candidate.provider, "started").inc()
                        running[_start(attempt, candidate)] = (candidate, time.monotonic())
                    continue
                for task in done:
                    candidate, started = running.pop(task)
                    elapsed = time.monotonic() - started
                    error = task.exception()
                    if error is None:
                        if hedged and candidate is not plan.first:
                            self._metrics.hedges.labels(candidate.provider, "won").inc()
                        return candidate, task.result(), elapsed
                    if isinstance(error, UpstreamFailure):
                        plan.failed(candidate, error)
                        await self._failed(call, candidate, error, elapsed)
                        continue
                    plan.last = candidate
                    raise error
        finally:
            if running:
                for task, (candidate, _) in running.items():
                    task.cancel()  # the loser's upstream request is closed now
                    plan.abandoned(candidate)
                await asyncio.wait(running)
                for task, (candidate, _) in running.items():
                    if not task.cancelled() and task.exception() is None:
                        # It answered while being cancelled: its tokens were really used.
                        lost = _loser_usage(candidate, task.result())
                        if lost is not None:
                            call.extra_usage.append(lost)

    def complete(
        self,
        call: Call,
        body: dict[str, Any],
        candidates: list[Candidate],
        embeddings: bool = False,
        api: str | None = None,
        raw: bytes | None = None,
    ) -> Awaitable[Completion]:
        """A non-streaming answer of ``api`` (default: chat, or embeddings) with failover
        (and hedging); ``raw``: the body's bytes as the client sent them."""
        api = api or (Api.EMBEDDINGS if embeddings else Api.CHAT)
        return self.complete_via(call, ForwardExchange(Api(api), body, raw=raw), candidates)

    async def complete_via(
        self, call: Call, exchange: Exchange, candidates: list[Candidate]
    ) -> Completion:
        """A non-streaming answer with failover (and hedging), each attempt made by
        ``exchange``."""
        call.operation = exchange.operation
        plan = _Plan(call, candidates, self._settings.max_attempts, self._breakers)

        async def attempt(
            candidate: Candidate, outgoing: Outgoing, span: AttemptSpan | None
        ) -> _Answer:
            url, headers, payload = outgoing
            response = await self._client.post(
                url,
                headers,
                payload,
                plan.attempt_timeout(candidate),
                candidate.first_token_timeout_s,
            )
            return _Answer(exchange.answer(candidate, response), span)

        raced = await self._decide(call, plan, _traced(call, exchange, attempt))
        if isinstance(raced, Completion):
            return raced
        candidate, answer, elapsed = raced
        call.candidate = candidate
        used = self._succeeded(call, candidate, elapsed, answer.answer.usage)
        call.finish(used)
        if answer.span is not None:
            answer.span.answered(WON, answer.answer.parsed, used)
        return Completion(answer.answer.status, answer.answer.body, b"application/json")

    async def stream(
        self,
        call: Call,
        body: dict[str, Any],
        candidates: list[Candidate],
        client_wants_usage: bool,
        api: str = CHAT,
        on_open: OnOpen | None = None,
        raw: bytes | None = None,
    ) -> AsyncIterator[bytes] | Completion:
        """Open a stream of ``api`` with failover (and hedging) until its first event;
        returns the SSE frames to send, or the upstream's own answer when it refused the
        request (the client's fault).  ``on_open`` runs once the stream is chosen, before
        its first byte is sent; if it raises, the upstream is closed and the error
        propagates.  ``raw``: the body's bytes as the client sent them."""
        if api == Api.RESPONSES:
            client_wants_usage = True  # the Responses API always reports usage on its own
        elif not client_wants_usage:
            options = body.get("stream_options")
            body["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
            raw = None  # the body sent is no longer the client's
        exchange = ForwardExchange(Api(api), body, client_wants_usage, raw)
        return await self.stream_via(call, exchange, candidates, on_open)

    async def stream_via(
        self,
        call: Call,
        exchange: Exchange,
        candidates: list[Candidate],
        on_open: OnOpen | None = None,
    ) -> AsyncIterator[bytes] | Completion:
        """``stream``, each attempt made by ``exchange``."""
        call.operation = exchange.operation
        plan = _Plan(call, candidates, self._settings.max_attempts, self._breakers)

        async def attempt(
            candidate: Candidate, outgoing: Outgoing, span: AttemptSpan | None
        ) -> _Opened:
            url, headers, payload = outgoing
            upstream: UpstreamStream | None = None
            limit = candidate.first_token_timeout_s
            # An asyncio.timeout costs microseconds even unarmed: none without a limit.
            first_byte = _UNBOUNDED if limit is None else asyncio.timeout(limit)
            try:
                async with first_byte:
                    upstream = await self._client.open_stream(
                        url, headers, payload, plan.attempt_timeout(candidate)
                    )
                    if upstream.status >= 300:
                        raw = await upstream.read()
                        raise failure_for_status(
                            upstream.status, raw, upstream.retry_after, upstream.content_type
                        )
                    relay = exchange.relay(candidate, upstream)
                    first = await relay.first_frames()
            except TimeoutError:
                if upstream is not None:
                    upstream.close()
                if not isinstance(first_byte, asyncio.Timeout) or not first_byte.expired():
                    raise
                raise UpstreamFailure(
                    TIMEOUT, f"upstream sent no first token within {limit:g}s"
                ) from None
            except BaseException:
                if upstream is not None:
                    upstream.close()  # failed, refused or cancelled: the connection goes now
                raise
            return _Opened(relay, first, span)

        started = time.monotonic()
        raced = await self._decide(call, plan, _traced(call, exchange, attempt))
        if isinstance(raced, Completion):
            return raced
        candidate, opened, first_byte_s = raced
        call.candidate = candidate
        if on_open is not None:
            try:
                await on_open(candidate, opened.relay)
            except BaseException:
                opened.relay.upstream.close()
                raise
        return self._relay(call, candidate, opened, started, first_byte_s)

    async def _relay(
        self,
        call: Call,
        candidate: Candidate,
        opened: _Opened,
        started: float,
        first_byte_s: float,
    ) -> AsyncIterator[bytes]:
        relay = opened.relay
        ok = False
        try:
            yield b"".join(opened.first)
            async for chunk in relay.rest(call.deadline):
                yield chunk
            ok = relay.failure is None
        finally:
            relay.upstream.close()
            elapsed = time.monotonic() - started
            used: Usage | None = None
            if ok or relay.usage is not None:
                used = self._succeeded(call, candidate, elapsed, relay.usage, first_byte_s)
            else:
                if relay.failure is not None:
                    self._stats.record(
                        candidate.provider, candidate.model, ok=False, latency_s=elapsed
                    )
                    self._metrics.failovers.labels(candidate.provider, STREAM_BROKEN).inc()
            call.finish(used)
            if opened.span is not None:
                failure = relay.failure
                cut = None if ok else "cancelled"  # the client left, or the shutdown cut it
                opened.span.streamed(
                    opened.first,
                    relay.finish_reasons,
                    used,
                    first_byte_s,
                    failure.reason if failure is not None else cut,
                )


T = TypeVar("T")
Attempt = Callable[[Candidate], Awaitable[T]]


@dataclass(slots=True)
class _Answer:
    answer: UsableAnswer
    span: AttemptSpan | None = None


@dataclass(slots=True)
class _Opened:
    relay: Relay
    first: list[bytes]
    span: AttemptSpan | None = None


# An attempt as the router's closures write it: the headers to send (the candidate's, plus
# the attempt span's traceparent when tracing is on) and the span to keep in the result.
TracedAttempt = Callable[[Candidate, Outgoing, AttemptSpan | None], Awaitable[T]]


def _traced(call: Call, exchange: Exchange, attempt: TracedAttempt[T]) -> Attempt[T]:
    """``attempt`` at the request ``exchange`` makes for each candidate, with a CLIENT span
    per call when the request is traced (its headers carry the span's ``traceparent``); a
    failed or cancelled attempt's span ends here, an answered one's where its outcome is
    known."""
    trace = call.trace
    if trace is None:
        return lambda candidate: attempt(candidate, exchange.request(candidate), None)

    async def traced(candidate: Candidate) -> T:
        url, headers, payload = exchange.request(candidate)
        span = trace.attempt(
            exchange.operation, candidate.provider, candidate.model, url, exchange.body, headers
        )
        try:
            return await attempt(candidate, (url, span.headers, payload), span)
        except asyncio.CancelledError:
            span.cancelled()
            raise
        except UpstreamFailure as failure:
            span.failed(failure.reason)
            raise
        except ClientFault as fault:
            span.failed(str(fault.status))  # the upstream's status: the client's fault
            raise
        except Exception as exc:
            span.failed(type(exc).__qualname__)
            raise

    return traced


def _start(attempt: Attempt[T], candidate: Candidate) -> asyncio.Task[T]:
    return asyncio.ensure_future(attempt(candidate))


def _loser_usage(candidate: Candidate, result: Any) -> Usage | None:
    """What the upstream of a hedge that lost reported (a stream is closed unread: None)."""
    if isinstance(result, _Opened):
        result.relay.upstream.close()
        if result.span is not None:
            result.span.answered(LOST, None, None)
        return None
    if isinstance(result, _Answer):
        used = read_usage(candidate.provider, candidate.model, result.answer.usage)
        if result.span is not None:
            result.span.answered(LOST, result.answer.parsed, used)
        return used
    return None


def _explored(candidates: list[Candidate], rng: random.Random) -> list[Candidate]:
    """Exploration: a pair that is as good as the first on its static score, but behind it
    (the live factor moved it down, or a tie), goes first, so the fleet keeps figures on it:
    a recovering provider wins its place back, an unmeasured one gets measured."""
    head = candidates[0].effective
    behind = [c for c in candidates[1:] if c.score.total >= head]
    if not behind:
        return candidates
    chosen = behind[rng.randrange(len(behind))]
    return [chosen, *(c for c in candidates if c is not chosen)]


class _Plan:
    """The attempts of one request: which candidate next, and the final error if none works."""

    def __init__(
        self, call: Call, candidates: list[Candidate], max_attempts: int, breakers: Breakers
    ) -> None:
        self._call = call
        self._candidates = candidates
        self._max_attempts = max_attempts
        self._breakers = breakers
        self._next = 0
        self._started = 0
        self._failures: list[UpstreamFailure] = []
        self._cooled_providers: set[str] = set()
        self._blocked = 0  # candidates skipped: breaker open, or another replica's probe
        self._probes: list[Candidate] = []
        self.first: Candidate | None = None
        self.last: Candidate | None = None

    async def next(self) -> Candidate | None:
        """The next candidate to try, or None when the plan is over."""
        breakers = self._breakers
        while self._next < len(self._candidates):
            candidate = self._candidates[self._next]
            self._next += 1
            if self._started >= self._max_attempts:
                return None
            if candidate.provider in self._cooled_providers:
                continue
            if time.monotonic() >= self._call.deadline:
                self._failures.append(
                    UpstreamFailure(TIMEOUT, "the request deadline passed before an answer")
                )
                return None
            if breakers.until(candidate, int(time.time() * 1000)):
                self._blocked += 1  # opened while this request was under way
                continue
            if breakers.half_open(candidate):
                lease = self.attempt_timeout(candidate)
                if not await breakers.claim_probe(candidate, self._call.entry_id, lease):
                    self._blocked += 1
                    continue
                self._probes.append(candidate)
            self._started += 1
            if self.first is None:
                self.first = candidate
            self.last = candidate
            return candidate
        return None

    def attempt_timeout(self, candidate: Candidate) -> float:
        return max(0.001, min(candidate.timeout_s, self._call.deadline - time.monotonic()))

    def failed(self, candidate: Candidate, failure: UpstreamFailure) -> None:
        self._failures.append(failure)
        if failure.scope == "provider":
            self._cooled_providers.add(candidate.provider)

    def abandoned(self, candidate: Candidate) -> None:
        """An attempt cancelled without a verdict (a hedge that lost): a probe it held is
        given back at once."""
        if candidate in self._probes:
            self._breakers.release_probe(candidate, self._call.entry_id)

    def give_up(self) -> GatewayError:
        failures = self._failures
        if not failures:
            return errors.BreakersOpen(
                "No provider could be tried for this model: circuit breakers are open or "
                "being probed after repeated failures; retry shortly.",
                retry_after_s=1.0,
            )
        last = failures[-1].message
        if all(f.reason == RATE_LIMITED for f in failures):
            wait = min((f.retry_after_s for f in failures if f.retry_after_s), default=1.0)
            return errors.ProvidersRateLimited(
                f"Every provider tried is rate limited; last: {last}", retry_after_s=wait
            )
        if all(f.reason == TIMEOUT for f in failures):
            return errors.UpstreamTimeout(f"Every provider tried timed out; last: {last}")
        return errors.UpstreamFailed(
            f"No provider could answer ({len(failures)} tried); last: {last}"
        )
