"""Failover: from a requested model to an answer.

``admit`` makes the one store round trip before any upstream call (token, quotas and the
fleet's cooldowns together).  ``complete`` and ``stream`` then try the candidates in
order, at most ``MAX_ATTEMPTS`` within one deadline, cooling what fails.  A stream can fail
over until its first event is sent; after that a failure ends it with an error event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from service import errors
from service.errors import GatewayError
from service.ids import IdGenerator
from service.observability.metrics import Metrics
from service.observability.stats import FleetStats
from service.quotas.limits import rate_limit_headers
from service.routing.catalog import Catalog
from service.routing.cooldowns import cool_down
from service.routing.relay import StreamRelay
from service.routing.table import AUTO, Candidate
from service.settings import Settings
from service.store import client as store_status
from service.store.client import Admission, Store, StoreError
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
    failure_for_status,
)

log = logging.getLogger("best.router")

Checker = Callable[[Any], UpstreamFailure | None]


@dataclass(slots=True)
class Call:
    """One client request as it moves through the router."""

    request_id: str  # the id the client sees (x-request-id), for logs
    entry_id: str  # unique across the fleet: names this request's quota entries
    token_id: str | None
    started: float
    deadline: float
    upstream_s: float = 0.0
    candidate: Candidate | None = None
    admission: Admission | None = None
    headers: Headers = field(default_factory=list)
    settled: bool = False
    operation: str = "chat"  # or "embeddings"


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
        store: Store,
        catalog: Catalog,
        client: UpstreamClient,
        stats: FleetStats,
        metrics: Metrics,
        ids: IdGenerator,
    ) -> None:
        self._ids = ids
        self._settings = settings
        self._store = store
        self._catalog = catalog
        self._client = client
        self._stats = stats
        self._metrics = metrics
        self._background: set[asyncio.Task[None]] = set()
        self._lease_ms = int((settings.request_timeout_s + 30) * 1000)

    def new_call(self, request_id: str, token_id: str | None) -> Call:
        now = time.monotonic()
        deadline = now + self._settings.request_timeout_s
        return Call(request_id, self._ids(), token_id, now, deadline)

    def candidates(self, model: str) -> list[Candidate]:
        found = self._catalog.table.resolve(model)
        if not found:
            no_keys = self._catalog.no_keys_message()
            if no_keys is not None:
                raise errors.unavailable(no_keys)
            raise errors.model_not_found(model or AUTO)
        return found

    # -- admission ---------------------------------------------------------------------------

    async def admit(self, call: Call, cost: int, candidates: list[Candidate]) -> list[Candidate]:
        """Token, quotas and cooldowns in one store call; returns the candidates not cooling."""
        try:
            admission = await self._store.admit(call.token_id, call.entry_id, cost, self._lease_ms)
        except StoreError as exc:
            raise errors.unavailable(f"The gateway's store failed: {exc}") from None
        call.admission = admission
        status = admission.status
        if status != store_status.ADMITTED:
            self._refuse(status, admission)
        call.headers = rate_limit_headers(admission)
        cooling = admission.cooling
        if not cooling:
            return candidates
        available = [
            c for c in candidates if c.provider_field not in cooling and c.pair_field not in cooling
        ]
        if not available:
            self.release(call, tokens_used=0, success=None)
            earliest = min(
                max(cooling.get(c.provider_field, 0), cooling.get(c.pair_field, 0))
                for c in candidates
            )
            raise errors.rate_limited(
                "Every provider for this model is cooling down after failures; retry later.",
                (earliest - admission.now_ms) / 1000.0,
                call.headers,
            )
        return available

    def _refuse(self, status: int, admission: Admission) -> None:
        if status in (store_status.UNKNOWN, store_status.REVOKED, store_status.EXPIRED):
            reason = {1: "unknown", 2: "revoked", 3: "expired"}[status]
            self._metrics.auth_failures.labels(reason).inc()
            raise errors.unauthorized(f"The API token is {reason}.")
        if status == store_status.QUOTA_UNAVAILABLE:
            self._metrics.quota_rejections.labels("store").inc()
            raise errors.unavailable(
                "Quotas cannot be checked while the shared store is unreachable."
            )
        kind = {
            store_status.OVER_RPM: "rpm",
            store_status.OVER_TPM: "tpm",
            store_status.OVER_CONCURRENCY: "concurrency",
        }[status]
        self._metrics.quota_rejections.labels(kind).inc()
        message = {
            "rpm": "Rate limit reached: requests per minute of this token.",
            "tpm": "Rate limit reached: tokens per minute of this token.",
            "concurrency": "Rate limit reached: concurrent requests of this token.",
        }[kind]
        raise errors.rate_limited(
            message, admission.retry_after_ms / 1000.0, rate_limit_headers(admission)
        )

    # -- settlement (after the response; never awaited on the hot path) ----------------------

    def release(self, call: Call, tokens_used: int, success: Candidate | None) -> None:
        """Settle the tpm reservation, free the concurrency lease, reset failure counts."""
        if call.settled or call.admission is None:
            return
        call.settled = True
        # rpm entries simply age out; tpm reservations and concurrency leases need settling.
        needs_quota = call.token_id is not None and (
            call.admission.tpm_limit >= 0 or call.admission.concurrency_limit >= 0
        )
        failing = call.admission.failing
        reset = (
            [f for f in (success.pair_field, success.provider_field) if f in failing]
            if success is not None and failing
            else []
        )
        if not needs_quota and not reset:
            return
        task = asyncio.create_task(self._settle(call, tokens_used, reset))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _settle(self, call: Call, tokens_used: int, reset: list[str]) -> None:
        try:
            await self._store.settle(call.token_id, call.entry_id, tokens_used, reset)
        except StoreError as exc:
            log.warning("settlement of %s failed: %s", call.request_id, exc)

    async def drain(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

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
        try:
            await cool_down(self._store, candidate, failure)
        except StoreError as exc:
            log.warning("cooldown of %s not recorded: %s", candidate.pair_field, exc)

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
        labels = (call.operation, candidate.provider, candidate.model)
        self._metrics.upstream_duration.labels(*labels, "ok").observe(elapsed)
        if usage:
            self._metrics.tokens.labels(*labels, "input").observe(prompt)
            if call.operation == "chat":
                self._metrics.tokens.labels(*labels, "output").observe(completion)
        return prompt + completion if usage else -1

    async def complete(
        self, call: Call, body: dict[str, Any], candidates: list[Candidate], embeddings: bool
    ) -> Completion:
        """Non-streaming chat completion or embeddings with failover."""
        check: Checker = check_embeddings if embeddings else check_completion
        call.operation = "embeddings" if embeddings else "chat"
        plan = _Plan(call, candidates, self._settings.max_attempts)
        async for candidate in plan:
            url = candidate.embeddings_url if embeddings else candidate.chat_url
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
                self.release(call, tokens_used=0, success=None)
                return Completion(
                    fault.status, fault.body, fault.content_type or b"application/json"
                )
            call.candidate = candidate
            used = self._succeeded(call, candidate, elapsed, parsed.get("usage"))
            self.release(call, tokens_used=used, success=candidate)
            return Completion(response.status, response.body, b"application/json")
        self.release(call, tokens_used=0, success=None)
        raise plan.give_up()

    async def stream(
        self,
        call: Call,
        body: dict[str, Any],
        candidates: list[Candidate],
        client_wants_usage: bool,
    ) -> AsyncIterator[bytes] | Completion:
        """Open a stream with failover until its first event; returns the SSE frames to send,
        or the upstream's own answer when it refused the request (the client's fault)."""
        if not client_wants_usage:
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
            try:
                upstream = await self._client.open_stream(
                    candidate.chat_url, candidate.headers, payload, plan.attempt_timeout(candidate)
                )
                if upstream.status >= 300:
                    raw = await upstream.read()
                    raise failure_for_status(
                        upstream.status, raw, upstream.retry_after, upstream.content_type
                    )
                relay = StreamRelay(upstream, client_wants_usage)
                first = await relay.first_frames()
            except UpstreamFailure as failure:
                if upstream is not None:
                    upstream.close()
                elapsed = time.monotonic() - started
                call.upstream_s += elapsed
                plan.failed(candidate, failure)
                await self._failed(call, candidate, failure, elapsed)
                continue
            except ClientFault as fault:
                # The client's own fault: relayed untouched, as for JSON.
                if upstream is not None:
                    upstream.close()
                call.candidate = candidate
                self.release(call, tokens_used=0, success=None)
                return Completion(
                    fault.status, fault.body, fault.content_type or b"application/json"
                )
            call.upstream_s += time.monotonic() - started
            call.candidate = candidate
            return self._relay(call, candidate, relay, first, started)
        self.release(call, tokens_used=0, success=None)
        raise plan.give_up()

    async def _relay(
        self,
        call: Call,
        candidate: Candidate,
        relay: StreamRelay,
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
            self.release(call, tokens_used=used, success=candidate if ok else None)


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
            return errors.rate_limited("No provider could be tried for this model.", 1.0)
        if all(f.reason == RATE_LIMITED for f in failures):
            wait = min((f.retry_after_s for f in failures if f.retry_after_s), default=1.0)
            return errors.rate_limited(
                f"Every provider tried is rate limited; last: {failures[-1].message}", wait
            )
        if all(f.reason == TIMEOUT for f in failures):
            return errors.upstream_failed(
                504, f"Every provider tried timed out; last: {failures[-1].message}"
            )
        return errors.upstream_failed(
            502, f"No provider could answer ({len(failures)} tried); last: {failures[-1].message}"
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
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    return (
        prompt if isinstance(prompt, int) and prompt > 0 else 0,
        completion if isinstance(completion, int) and completion > 0 else 0,
    )
