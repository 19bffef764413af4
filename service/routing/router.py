"""Failover: from a requested model to an answer.

``complete`` and ``stream`` try the candidates in order, at most ``MAX_ATTEMPTS`` within one
deadline, cooling what fails.  A stream can fail over until its first event is sent; after
that a failure ends it with an error event.  Quotas are not this module's business: the
caller hands each ``Call`` a ``settle`` callback, and the router calls it exactly once, with
the tokens really used, when the request is over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from service import errors
from service.errors import GatewayError
from service.ids import IdGenerator
from service.observability.metrics import Metrics
from service.routing.catalog import Catalog
from service.routing.cooldowns import Cooldowns
from service.routing.events import EventRelay
from service.routing.health import FleetStats
from service.routing.relay import Relay, StreamRelay
from service.routing.table import AUTO, CHAT, Candidate
from service.settings import Settings
from service.types import Headers
from service.upstream.client import UpstreamClient, UpstreamResponse, UpstreamStream
from service.upstream.errors import (
    BAD_BODY,
    RATE_LIMITED,
    STREAM_BROKEN,
    TIMEOUT,
    ClientFault,
    UpstreamFailure,
    check_completion,
    check_embeddings,
    check_response,
    failure_for_status,
)

log = logging.getLogger("best.router")

Checker = Callable[[Any], UpstreamFailure | None]
# What a usable 200 answer of each API looks like.
CHECKS: dict[str, Checker] = {
    "chat": check_completion,
    "completions": check_completion,
    "embeddings": check_embeddings,
    "responses": check_response,
}
API_NAMES = {"responses": "Responses", "completions": "Completions", "embeddings": "Embeddings"}
# Called with the chosen candidate and its relay before a stream's first byte leaves.
OnOpen = Callable[[Candidate, Relay], Awaitable[None]]


def _no_settlement(used: int) -> None:
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
    operation: str = "chat"  # or "embeddings"
    settle: Callable[[int], None] = _no_settlement
    finished: bool = False

    @property
    def served_by(self) -> tuple[str, str] | None:
        c = self.candidate
        return (c.provider, c.model) if c is not None else None

    def finish(self, tokens_used: int) -> None:
        """Settle the request's quotas once: ``tokens_used`` real tokens, -1 unknown."""
        if not self.finished:
            self.finished = True
            self.settle(tokens_used)


@dataclass(slots=True)
class Completion:
    """A finished upstream answer: relayed as is (a success, or the client's own fault)."""

    status: int
    body: bytes
    content_type: bytes


class Router:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        cooldowns: Cooldowns,
        client: UpstreamClient,
        stats: FleetStats,
        metrics: Metrics,
        ids: IdGenerator,
    ) -> None:
        self._ids = ids
        self._settings = settings
        self._catalog = catalog
        self._cooldowns = cooldowns
        self._client = client
        self._stats = stats
        self._metrics = metrics

    def new_call(self, request_id: str) -> Call:
        now = time.monotonic()
        deadline = now + self._settings.request_timeout_s
        return Call(request_id, self._ids(), now, deadline)

    def candidates(self, model: str, api: str = CHAT) -> list[Candidate]:
        """The candidates to try for ``model``, best first, among the providers serving
        ``api``, without those cooling down."""
        table = self._catalog.table
        found = table.for_api(api).resolve(model)
        if not found:
            no_keys = self._catalog.no_keys_message()
            if no_keys is not None:
                raise errors.unavailable(no_keys)
            if api != CHAT and table.resolve(model):
                raise errors.ModelNotFound(
                    f"No provider serving the {API_NAMES.get(api, api)} API serves the model "
                    f"`{model or AUTO}` (see apis: in meta-providers.yaml).",
                    param="model",
                )
            raise errors.model_not_found(model or AUTO)
        available, wait_s = self._cooldowns.available(found)
        if available:
            return available
        now = int(time.time() * 1000)
        if all(self._cooldowns.until_provider(c, now) for c in found):
            raise errors.ProvidersRateLimited(
                "Every provider for this model is cooling down after its rate limits; retry later.",
                retry_after_s=wait_s,
            )
        raise errors.unavailable(
            "Every provider for this model is out of rotation after failures; retry later.",
            retry_after_s=wait_s,
        )

    # -- attempts ----------------------------------------------------------------------------

    async def _failed(
        self, call: Call, candidate: Candidate, failure: UpstreamFailure, elapsed: float
    ) -> None:
        self._stats.record(candidate.provider, candidate.model, ok=False, latency_s=elapsed)
        self._metrics.upstream_duration.labels(
            call.operation, candidate.provider, candidate.model, failure.reason
        ).observe(elapsed)
        self._metrics.failovers.labels(candidate.provider, failure.reason).inc()
        log.info(
            "request %s: %s/%s failed (%s): %s",
            call.request_id,
            candidate.provider,
            candidate.model,
            failure.reason,
            failure.message,
        )
        await self._cooldowns.failed(candidate, failure)

    def _succeeded(self, call: Call, candidate: Candidate, elapsed: float, usage: Any) -> int:
        """Record a success; returns the tokens used (-1 when the upstream did not say)."""
        prompt, completion = _usage(usage)
        self._stats.record(
            candidate.provider,
            candidate.model,
            ok=True,
            latency_s=elapsed,
            prompt_tokens=prompt,
            completion_tokens=completion,
        )
        self._cooldowns.succeeded(candidate)
        labels = (call.operation, candidate.provider, candidate.model)
        self._metrics.upstream_duration.labels(*labels, "ok").observe(elapsed)
        if usage:
            self._metrics.tokens.labels(*labels, "input").observe(prompt)
            if call.operation != "embeddings":
                self._metrics.tokens.labels(*labels, "output").observe(completion)
        return prompt + completion if usage else -1

    async def complete(
        self,
        call: Call,
        body: dict[str, Any],
        candidates: list[Candidate],
        embeddings: bool = False,
        api: str | None = None,
    ) -> Completion:
        """A non-streaming answer of ``api`` (default: chat, or embeddings) with failover."""
        api = api or ("embeddings" if embeddings else CHAT)
        check = CHECKS[api]
        call.operation = api
        plan = _Plan(call, candidates, self._settings.max_attempts)
        async for candidate in plan:
            url = candidate.urls[api]
            body["model"] = candidate.model
            payload = orjson.dumps(body)
            started = time.monotonic()
            try:
                try:
                    response = await self._client.post(
                        url, candidate.headers, payload, plan.attempt_timeout(candidate)
                    )
                finally:
                    elapsed = time.monotonic() - started
                    call.upstream_s += elapsed
                parsed = _answer(response, check)
            except UpstreamFailure as failure:
                plan.failed(candidate, failure)
                await self._failed(call, candidate, failure, elapsed)
                continue
            except ClientFault as fault:
                call.candidate = candidate
                call.finish(0)
                return Completion(
                    fault.status, fault.body, fault.content_type or b"application/json"
                )
            call.candidate = candidate
            call.finish(self._succeeded(call, candidate, elapsed, parsed.get("usage")))
            return Completion(response.status, response.body, b"application/json")
        call.finish(0)
        raise plan.give_up()

    async def stream(
        self,
        call: Call,
        body: dict[str, Any],
        candidates: list[Candidate],
        client_wants_usage: bool,
        api: str = CHAT,
        on_open: OnOpen | None = None,
    ) -> AsyncIterator[bytes] | Completion:
        """Open a stream of ``api`` with failover until its first event; returns the SSE
        frames to send, or the upstream's own answer when it refused the request (the
        client's fault).  ``on_open`` runs once the stream is chosen, before its first byte
        is sent; if it raises, the upstream is closed and the error propagates."""
        call.operation = api
        if api == "responses":
            client_wants_usage = True  # the Responses API always reports usage on its own
        elif not client_wants_usage:
            options = body.get("stream_options")
            body["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
        plan = _Plan(call, candidates, self._settings.max_attempts)
        async for candidate in plan:
            body["model"] = candidate.model
            payload = orjson.dumps(body)
            started = time.monotonic()
            upstream: UpstreamStream | None = None
            relay: Relay
            try:
                upstream = await self._client.open_stream(
                    candidate.urls[api],
                    candidate.headers,
                    payload,
                    plan.attempt_timeout(candidate),
                )
                if upstream.status >= 300:
                    raw = await upstream.read()
                    raise failure_for_status(
                        upstream.status, raw, upstream.retry_after, upstream.content_type
                    )
                if api == "responses":
                    relay = EventRelay(upstream)
                else:
                    relay = StreamRelay(upstream, client_wants_usage, api)
                first = await relay.first_frames()
            except UpstreamFailure as failure:
                if upstream is not None:
                    upstream.close()
                elapsed = time.monotonic() - started
                call.upstream_s += elapsed
                plan.failed(candidate, failure)
                await self._failed(call, candidate, failure, elapsed)
                continue
            except asyncio.CancelledError:  # the client left before the first event
                if upstream is not None:
                    upstream.close()  # let the provider go now, not when this is collected
                raise
            except ClientFault as fault:
                # The client's own fault: relayed untouched, as for JSON.
                if upstream is not None:
                    upstream.close()
                call.candidate = candidate
                call.finish(0)
                return Completion(
                    fault.status, fault.body, fault.content_type or b"application/json"
                )
            call.upstream_s += time.monotonic() - started
            call.candidate = candidate
            if on_open is not None:
                try:
                    await on_open(candidate, relay)
                except BaseException:
                    relay.upstream.close()
                    raise
            return self._relay(call, candidate, relay, first, started)
        call.finish(0)
        raise plan.give_up()

    async def _relay(
        self,
        call: Call,
        candidate: Candidate,
        relay: Relay,
        first: list[bytes],
        started: float,
    ) -> AsyncIterator[bytes]:
        ok = False
        try:
            yield b"".join(first)
            async for chunk in relay.rest(call.deadline):
                yield chunk
            ok = relay.failure is None
        finally:
            relay.upstream.close()
            elapsed = time.monotonic() - started
            if ok or relay.usage is not None:
                used = self._succeeded(call, candidate, elapsed, relay.usage)
            else:
                used = -1
                if relay.failure is not None:
                    self._stats.record(
                        candidate.provider, candidate.model, ok=False, latency_s=elapsed
                    )
                    self._metrics.failovers.labels(candidate.provider, STREAM_BROKEN).inc()
            call.finish(used)


class _Plan:
    """The attempts of one request: which candidate next, and the final error if none works."""

    def __init__(self, call: Call, candidates: list[Candidate], max_attempts: int) -> None:
        self._call = call
        self._candidates = candidates
        self._max_attempts = max_attempts
        self._failures: list[UpstreamFailure] = []
        self._cooled_providers: set[str] = set()

    def __aiter__(self) -> AsyncIterator[Candidate]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Candidate]:
        for candidate in self._candidates:
            if len(self._failures) >= self._max_attempts:
                return
            if candidate.provider in self._cooled_providers:
                continue
            if time.monotonic() >= self._call.deadline:
                self._failures.append(
                    UpstreamFailure(TIMEOUT, "the request deadline passed before an answer")
                )
                return
            yield candidate

    def attempt_timeout(self, candidate: Candidate) -> float:
        return max(0.001, min(candidate.timeout_s, self._call.deadline - time.monotonic()))

    def failed(self, candidate: Candidate, failure: UpstreamFailure) -> None:
        self._failures.append(failure)
        if failure.scope == "provider":
            self._cooled_providers.add(candidate.provider)

    def give_up(self) -> GatewayError:
        failures = self._failures
        if not failures:
            return errors.unavailable("No provider could be tried for this model.", 1.0)
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


def _answer(response: UpstreamResponse, check: Checker) -> Any:
    """The parsed body of a usable answer; raises UpstreamFailure or ClientFault otherwise."""
    if response.status >= 300:
        raise failure_for_status(
            response.status, response.body, response.retry_after, response.content_type
        )
    try:
        parsed = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        raise UpstreamFailure(BAD_BODY, "upstream answered a body that is not JSON") from None
    failure = check(parsed)
    if failure is not None:
        raise failure
    return parsed


def _usage(usage: Any) -> tuple[int, int]:
    if not isinstance(usage, dict):
        return 0, 0
    # Chat and completions say prompt/completion tokens; the Responses API input/output.
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    return (
        prompt if isinstance(prompt, int) and prompt > 0 else 0,
        completion if isinstance(completion, int) and completion > 0 else 0,
    )
