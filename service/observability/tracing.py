"""OpenTelemetry traces: a SERVER span per request, a CLIENT span per upstream attempt.

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set
(and ``OTEL_SDK_DISABLED`` is not true): then ``Tracing.from_env`` is None, and the edge and
the router, which test ``trace is None``, do no tracing work at all: no span, no
``traceparent`` sent upstream.

When on, spans are recorded as ``SpanRecord`` objects (``spans``), not the SDK's ``Span``: a
request's two spans cost a few microseconds of the event loop instead of about a hundred
(``uv run python -m bench.tracing_cost``).  The sampling decision is the SDK's sampler rule,
made once per trace; a trace that is not kept records nothing, though its ``traceparent``
still travels upstream (unsampled).  Ended spans go to a bounded queue (``span_export``,
``OTEL_BSP_MAX_QUEUE_SIZE``, default 2048) that a background thread exports through the SDK's
OTLP exporters, so a collector that is down or slow drops spans and logs, at most once per
``LOG_INTERVAL_S``, but never delays or fails a request.

Attempt spans follow the OpenTelemetry GenAI semantic conventions (client inference spans):
``gen_ai.*`` attributes are only ever set on them, never on the SERVER span.  Message content
is recorded only with ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``; a token is
never recorded, only its id.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from random import getrandbits
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import SpanKind, TraceState
from opentelemetry.util.re import parse_env_headers

from service.apis import Api
from service.observability.otlp import OtlpEncoder
from service.observability.span_export import (
    MAX_BATCH_SIZE,
    MAX_QUEUE_SIZE,
    SCHEDULE_DELAY_S,
    ExporterSink,
    OtlpGrpcSink,
    OtlpHttpSink,
    Sink,
    SpanQueue,
    Throttle,
    grpc_exporter,
)
from service.observability.spans import (
    Parent,
    Sampling,
    SpanRecord,
    new_span_id,
    new_trace_id,
    parse_traceparent,
    traceparent,
)
from service.prices import PICO_PER_USD, Prices
from service.types import headers_plus
from service.upstream.usage import Usage

log = logging.getLogger("best.tracing")

SERVICE_NAME = "best"
LOG_INTERVAL_S = 60.0  # at most one log line about failing exports per interval
EXEMPLAR_INTERVAL_NS = 100_000_000  # per route and process: at most 10 exemplars a second
CAPTURE_CONTENT = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"

# gen_ai.operation.name of each API (the GenAI conventions' well-known values).
OPERATIONS: dict[str, str] = {
    Api.CHAT: "chat",
    Api.EMBEDDINGS: "embeddings",
    Api.RESPONSES: "chat",
    Api.COMPLETIONS: "text_completion",
    Api.MESSAGES: "chat",
}
# Request parameters recorded when the body sets them: body field -> attribute.
_NUMBERS = {
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "max_output_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "seed": "gen_ai.request.seed",
    "n": "gen_ai.request.choice.count",
}
_NUMERIC = frozenset((int, float))
# Attributes whose values repeat from request to request: the encoder caches their bytes.
REPEATED = (
    "http.request.method",
    "http.route",
    "url.path",
    "http.response.status_code",
    "best.token_id",
    "best.team",
    "best.cache",
    "error.type",
    "gen_ai.operation.name",
    "gen_ai.provider.name",
    "gen_ai.request.model",
    "gen_ai.request.stream",
    "gen_ai.request.max_tokens",
    "gen_ai.request.temperature",
    "gen_ai.request.top_p",
    "gen_ai.response.model",
    "gen_ai.response.finish_reasons",
    "server.address",
    "server.port",
    "best.attempt",
    "best.hedge",
    "best.outcome",
)

# best.outcome of an attempt.
WON = "won"  # its answer is the one the client got
FAILED = "failed"  # it failed (error.type says why); the request failed over or gave up
CANCELLED = "cancelled"  # cancelled before it answered: a hedge that lost, or the client left
LOST = "lost"  # it answered, but another attempt had already won (hedging)

# The loggers of the export path; their lines are throttled to one per interval.
_EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.common.http",
    log.name,
)

HeaderPairs = Iterable[tuple[bytes, bytes]]


class TracingError(ValueError):
    """The OTEL_* variables cannot be used (the message names the variable)."""


class Tracing:
    """The process's tracer, built once (``Gateway.build``) when tracing is on."""

    def __init__(
        self,
        queue: SpanQueue,
        sampling: Sampling,
        prices: Callable[[], Prices],
        capture_content: bool = False,
        throttle: Throttle | None = None,
    ) -> None:
        self.queue = queue
        self.sampling = sampling
        self.capture_content = capture_content
        self._prices = prices
        self._throttle = throttle
        self._servers: dict[str, tuple[str, int | None]] = {}  # url -> (address, port)
        self._upstreams: dict[tuple[str, str, str, str], tuple[str, dict[str, Any]]] = {}
        self._exemplars_due: dict[str, int] = {}  # route -> monotonic ns of its next exemplar

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        prices: Callable[[], Prices] = Prices,
        exporter: SpanExporter | None = None,
    ) -> Tracing | None:
        """Tracing as the OTEL_* variables of ``env`` configure it, or None when off.
        ``exporter`` replaces the OTLP exporter (and turns tracing on): for tests."""
        if _true(env.get("OTEL_SDK_DISABLED")):
            return None
        endpoint = _get(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        base = _get(env, "OTEL_EXPORTER_OTLP_ENDPOINT")
        if exporter is None and endpoint is None and base is None:
            return None
        check_env(env)
        resource = _resource(env)
        sink = (
            ExporterSink(exporter, resource)
            if exporter is not None
            else _otlp_sink(env, endpoint, base, resource)
        )
        delay_ms = _number(env, "OTEL_BSP_SCHEDULE_DELAY")
        queue = SpanQueue(
            sink,
            max_size=_number(env, "OTEL_BSP_MAX_QUEUE_SIZE") or MAX_QUEUE_SIZE,
            batch_size=_batch_size(env),
            delay_s=SCHEDULE_DELAY_S if delay_ms is None else delay_ms / 1000,
        )
        throttle = Throttle(LOG_INTERVAL_S, _EXPORT_LOGGERS)
        throttle.attach()
        return cls(queue, _sampling(env), prices, _true(env.get(CAPTURE_CONTENT)), throttle)

    def server(
        self, method: str, path: str, route: str, request_id: str, headers: HeaderPairs
    ) -> RequestTrace:
        """The SERVER span of a request, a child of the caller's ``traceparent`` if any."""
        parent: Parent | None = None
        state = b""
        for name, value in headers:
            if name == b"traceparent":
                parent = parse_traceparent(value.decode("latin-1"))
            elif name == b"tracestate":
                state = value
        if parent is None:
            trace_id, parent_id, trace_state = getrandbits(128) or new_trace_id(), 0, ""
        else:
            trace_id, parent_id = parent.trace_id, parent.span_id
            trace_state = _trace_state(state) if state else ""
        span_id = getrandbits(64) or new_span_id()
        if not self.sampling.sampled(trace_id, parent):
            return RequestTrace(self, trace_id, span_id, parent_id, trace_state, False, "", {})
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.path": path,
            "best.request_id": request_id,
        }
        if route:
            attributes["http.route"] = route
        trace = RequestTrace(
            self,
            trace_id,
            span_id,
            parent_id,
            trace_state,
            True,
            f"{method} {route}" if route else method,
            attributes,
        )
        # Prometheus keeps one exemplar per bucket and scrape: a few requests a second per
        # route carry one, not each of thousands (each costs the metrics library microseconds).
        now = time.monotonic_ns()
        due = self._exemplars_due
        if now >= due.get(route, 0):
            trace.exemplar = {"trace_id": f"{trace_id:032x}", "span_id": f"{span_id:016x}"}
            if len(due) < 4096 or route in due:  # routes are the application's: bounded
                due[route] = now + EXEMPLAR_INTERVAL_NS
        return trace

    def _attempt(
        self,
        trace: RequestTrace,
        api: str,
        provider: str,
        model: str,
        url: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        hedge: bool,
        number: int,
    ) -> AttemptSpan:
        span_id = getrandbits(64) or new_span_id()
        own = {"traceparent": traceparent(trace.trace_id, span_id, trace.sampled)}
        if trace.trace_state:
            own["tracestate"] = trace.trace_state
        sent = headers_plus(headers, own)
        if not trace.sampled:
            return AttemptSpan(self, trace, span_id, "", {}, sent)
        name, fixed = self._upstream(api, provider, model, url)
        attributes = fixed.copy()
        attributes["best.attempt"] = number
        attributes["best.hedge"] = hedge
        for field, value in body.items():
            attribute = _NUMBERS.get(field)
            if attribute is not None:
                if value.__class__ in _NUMERIC:  # not a bool, which is an int too
                    attributes[attribute] = value
            elif field == "stream":
                if value is True:
                    attributes["gen_ai.request.stream"] = True
            elif field == "stop":
                if isinstance(value, str):
                    attributes["gen_ai.request.stop_sequences"] = (value,)
                elif isinstance(value, list) and all(isinstance(s, str) for s in value):
                    attributes["gen_ai.request.stop_sequences"] = tuple(value)
        if self.capture_content:
            attributes.update(_input_content(api, body))
        return AttemptSpan(self, trace, span_id, name, attributes, sent)

    def _upstream(
        self, api: str, provider: str, model: str, url: str
    ) -> tuple[str, dict[str, Any]]:
        """An attempt's span name and the attributes that depend on its upstream only."""
        key = (api, provider, model, url)
        found = self._upstreams.get(key)
        if found is None:
            operation = OPERATIONS.get(api, api)
            address, port = self._server_of(url)
            fixed: dict[str, Any] = {
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": provider,
                "gen_ai.request.model": model,
                "server.address": address,
            }
            if port is not None:
                fixed["server.port"] = port
            found = (f"{operation} {model}", fixed)
            if len(self._upstreams) < 4096:  # pairs come from the configuration: bounded
                self._upstreams[key] = found
        return found

    def _server_of(self, url: str) -> tuple[str, int | None]:
        found = self._servers.get(url)
        if found is None:
            parts = urlsplit(url)
            found = (parts.hostname or "", parts.port or _DEFAULT_PORTS.get(parts.scheme))
            if len(self._servers) < 4096:  # urls come from the configuration: bounded
                self._servers[url] = found
        return found

    def _cost_usd(self, used: Usage) -> float | None:
        if used.cost_usd is not None:
            return used.cost_usd
        price = self._prices().of(used.provider, used.model)
        if price is None:
            return None
        return price.cost(used.prompt_tokens, used.completion_tokens) / PICO_PER_USD

    @property
    def dropped(self) -> int:
        """Spans dropped because the export queue was full."""
        return self.queue.dropped

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Export every ended span now (blocking: tests and shutdown only)."""
        return self.queue.flush(timeout_s)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Export what is queued and stop (blocking)."""
        self.queue.shutdown(timeout_s)
        if self._throttle is not None:
            self._throttle.detach()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Export what is queued and stop, waiting at most ``timeout_s``: the flush runs in
        a daemon thread, so a collector that does not answer cannot hold the exit."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def shutdown() -> None:
            try:
                self.queue.shutdown(timeout_s)
            finally:
                if not loop.is_closed():
                    loop.call_soon_threadsafe(_resolve, done)

        threading.Thread(target=shutdown, name="best-tracing-shutdown", daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout_s)
        except TimeoutError:
            log.warning("traces: the exporter did not flush within %gs; spans dropped", timeout_s)
        if self._throttle is not None:
            self._throttle.detach()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _trace_state(raw: bytes) -> str:
    """The caller's ``tracestate``, validated and normalised as the SDK's propagator does."""
    return TraceState.from_header([raw.decode("latin-1")]).to_header()


class RequestTrace(SpanRecord):
    """The SERVER span of one request; the attempts' spans are its children.  When its
    trace is not sampled (``sampled`` False) nothing is recorded, and it is never queued."""

    __slots__ = ("_attempts", "_ended", "_open", "_tracing", "exemplar", "sampled", "status")

    def __init__(
        self,
        tracing: Tracing,
        trace_id: int,
        span_id: int,
        parent_id: int,
        trace_state: str,
        sampled: bool,
        name: str,
        attributes: dict[str, Any],
    ) -> None:
        # Named rather than super(): a call per span, 60 ns against super()'s 120 (timeit).
        SpanRecord.__init__(
            self,
            trace_id,
            span_id,
            parent_id,
            parent_id != 0,  # a SERVER span's parent is the caller's: remote
            trace_state,
            name,
            SpanKind.SERVER,
            time.time_ns(),
            attributes,
        )
        self._tracing = tracing
        self.sampled = sampled
        self.status = 0
        self._ended = not sampled
        self._attempts = 0
        self._open: list[AttemptSpan] = []
        # The trace of this request, for its metrics' samples (None: not kept, or not one
        # of the requests that carry exemplars).
        self.exemplar: dict[str, str] | None = None

    def caller(self, token_id: str, team: str | None) -> None:
        """Who called: the token's id (never the token) and its team."""
        if self._ended:
            return
        if token_id:
            self.attributes["best.token_id"] = token_id
        if team:
            self.attributes["best.team"] = team

    def cache(self, state: str) -> None:
        """The response cache's verdict for this request (hit, miss, bypass...)."""
        if not self._ended:
            self.attributes["best.cache"] = state

    def attempt(
        self,
        api: str,
        provider: str,
        model: str,
        url: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
    ) -> AttemptSpan:
        """The CLIENT span of an upstream attempt, started now; its ``headers`` are
        ``headers`` plus its ``traceparent``.  An attempt started while another is still
        running is a hedge."""
        self._attempts += 1
        attempt = self._tracing._attempt(
            self, api, provider, model, url, body, headers, bool(self._open), self._attempts
        )
        if self.sampled:
            self._open.append(attempt)
        return attempt

    def route(self, method: str, template: str) -> None:
        """The route template the framework matched (known only after it ran)."""
        if self._ended:
            return
        self.attributes["http.route"] = template
        self.name = f"{method} {template}"

    def end(self) -> None:
        """End the SERVER span with ``status`` (0: no response was sent: the client left);
        an attempt still open (the client left mid-stream) ends as cancelled."""
        if self._ended:
            return
        self._ended = True
        if self._open:
            for attempt in list(self._open):
                attempt.cancelled()
        status = self.status
        if status:
            self.attributes["http.response.status_code"] = status
            if status >= 500:
                self.attributes["error.type"] = str(status)
                self.error = True
        else:
            self.attributes["error.type"] = "client_disconnected"
        self.end_ns = time.time_ns()
        self._tracing.queue.put(self)


class AttemptSpan(SpanRecord):
    """One upstream attempt's CLIENT span; ended exactly once with its outcome.  Nothing
    is recorded when its trace is not sampled."""

    __slots__ = ("_ended", "_tracing", "headers", "request")

    def __init__(
        self,
        tracing: Tracing,
        request: RequestTrace,
        span_id: int,
        name: str,
        attributes: dict[str, Any],
        headers: Mapping[str, str],
    ) -> None:
        SpanRecord.__init__(
            self,
            request.trace_id,
            span_id,
            request.span_id,
            False,
            request.trace_state,
            name,
            SpanKind.CLIENT,
            time.time_ns(),
            attributes,
        )
        self._tracing = tracing
        self.request = request
        self.headers = headers  # the upstream request's headers, with its traceparent
        self._ended = not request.sampled

    def failed(self, error_type: str) -> None:
        """It failed; ``error_type`` is the gateway's failure reason (or the upstream's
        status when it refused the request as the client's fault)."""
        if self._ended:
            return
        self.attributes["error.type"] = error_type
        self.error = True
        self._end(FAILED)

    def cancelled(self) -> None:
        if not self._ended:
            self._end(CANCELLED)

    def answered(self, outcome: str, body: Any, used: Usage | None) -> None:
        """A JSON answer: the response's id, model, finish reasons and usage, and its
        content when content capture is on."""
        if self._ended:
            return
        attributes = self.attributes
        if isinstance(body, dict):
            _set_response(attributes, body)
            if self._tracing.capture_content:
                output = _output_content(body)
                if output is not None:
                    attributes["gen_ai.output.messages"] = output
        self._usage(attributes, used)
        self._end(outcome)

    def streamed(
        self,
        first: Sequence[bytes],
        finish_reasons: Sequence[str],
        used: Usage | None,
        first_chunk_s: float,
        error_type: str | None,
    ) -> None:
        """A stream that was relayed to its end (or broke: ``error_type``): the first
        event's id and model, the finish reasons, usage and the time to its first chunk."""
        if self._ended:
            return
        attributes = self.attributes
        event = _first_event(first)
        if event is not None:
            # A chat chunk, or a Responses API event holding its response object.
            _set_identity(attributes, event.get("response") if "response" in event else event)
        reasons = tuple(finish_reasons)
        if error_type is not None:
            attributes["error.type"] = error_type
            self.error = True
            reasons = reasons or ("error",)
        if reasons:
            attributes["gen_ai.response.finish_reasons"] = reasons
        attributes["gen_ai.response.time_to_first_chunk"] = first_chunk_s
        attributes["best.ttft_ms"] = round(first_chunk_s * 1000.0, 3)
        self._usage(attributes, used)
        self._end(WON)

    def _usage(self, attributes: dict[str, Any], used: Usage | None) -> None:
        if used is None or not used.provider:
            return
        attributes["gen_ai.usage.input_tokens"] = used.prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = used.completion_tokens
        cost = self._tracing._cost_usd(used)
        if cost is not None:
            attributes["best.cost_usd"] = cost

    def _end(self, outcome: str) -> None:
        self._ended = True
        self.attributes["best.outcome"] = outcome
        self.end_ns = time.time_ns()
        self._tracing.queue.put(self)
        opened = self.request._open
        if opened and opened[-1] is self:
            opened.pop()
        elif self in opened:
            opened.remove(self)


def _set_identity(attributes: dict[str, Any], body: Any) -> None:
    if not isinstance(body, dict):
        return
    value = body.get("id")
    if isinstance(value, str):
        attributes["gen_ai.response.id"] = value
    value = body.get("model")
    if isinstance(value, str):
        attributes["gen_ai.response.model"] = value


def _set_response(attributes: dict[str, Any], body: dict[str, Any]) -> None:
    _set_identity(attributes, body)
    choices = body.get("choices")
    if isinstance(choices, list):
        reasons = []
        for choice in choices:
            if isinstance(choice, dict):
                reason = choice.get("finish_reason")
                if isinstance(reason, str):
                    reasons.append(reason)
        if reasons:
            attributes["gen_ai.response.finish_reasons"] = tuple(reasons)
    elif isinstance(body.get("status"), str) and body.get("object") == "response":
        # The Responses API has no finish reason; its status says how it ended.
        attributes["gen_ai.response.finish_reasons"] = (body["status"],)


def _first_event(frames: Sequence[bytes]) -> dict[str, Any] | None:
    """The first JSON event of the stream's first frames (``data: {...}``); only that line
    is read, however many events the frames hold."""
    for frame in frames:
        at = frame.find(b"data:")
        while at >= 0:
            if at == 0 or frame[at - 1] == 0x0A:  # at the start of a line
                end = frame.find(b"\n", at)
                try:
                    event = orjson.loads(frame[at + 5 : end if end >= 0 else len(frame)])
                except orjson.JSONDecodeError:
                    event = None
                if isinstance(event, dict):
                    return event
            at = frame.find(b"data:", at + 5)
    return None


# -- message content (opt-in) ----------------------------------------------------------------


def _text_parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    parts: list[dict[str, Any]] = []
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            text = part.get("text")
            if isinstance(text, str):
                parts.append({"type": "text", "content": text})
            else:
                parts.append({"type": str(part.get("type", "unknown"))})
    return parts


def _message(message: Any) -> dict[str, Any] | None:
    if not isinstance(message, dict):
        return None
    role = str(message.get("role", "user"))
    parts = _text_parts(message.get("content"))
    for call in message.get("tool_calls") or ():
        if isinstance(call, dict):
            function = call.get("function") or {}
            parts.append(
                {
                    "type": "tool_call",
                    "id": call.get("id"),
                    "name": function.get("name") if isinstance(function, dict) else None,
                    "arguments": function.get("arguments") if isinstance(function, dict) else None,
                }
            )
    if role == "tool":
        parts = [
            {
                "type": "tool_call_response",
                "id": message.get("tool_call_id"),
                "response": message.get("content"),
            }
        ]
    return {"role": role, "parts": parts}


def _input_content(api: str, body: Mapping[str, Any]) -> dict[str, str]:
    """``gen_ai.input.messages`` (and ``gen_ai.system_instructions``) as JSON strings."""
    messages: list[dict[str, Any]] = []
    out: dict[str, str] = {}
    if api in (Api.CHAT, Api.MESSAGES):
        messages = [m for m in map(_message, body.get("messages") or ()) if m is not None]
        system = body.get("system")  # Anthropic's Messages API: instructions apart
        if system is not None:
            out["gen_ai.system_instructions"] = orjson.dumps(_text_parts(system)).decode()
    elif api == Api.COMPLETIONS:
        prompt = body.get("prompt")
        prompts = prompt if isinstance(prompt, list) else [prompt]
        messages = [{"role": "user", "parts": _text_parts(p)} for p in prompts if p is not None]
    elif api == Api.RESPONSES:
        given = body.get("input")
        if isinstance(given, str):
            messages = [{"role": "user", "parts": _text_parts(given)}]
        elif isinstance(given, list):
            messages = [m for m in map(_message, given) if m is not None]
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            out["gen_ai.system_instructions"] = orjson.dumps(_text_parts(instructions)).decode()
    if messages:
        out["gen_ai.input.messages"] = orjson.dumps(messages).decode()
    return out


def _output_content(body: dict[str, Any]) -> str | None:
    """``gen_ai.output.messages`` of a JSON answer, as a JSON string."""
    messages: list[dict[str, Any]] = []
    choices = body.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            found = _message(choice.get("message")) if "message" in choice else None
            message = found or {"role": "assistant", "parts": _text_parts(choice.get("text"))}
            message["finish_reason"] = choice.get("finish_reason")
            messages.append(message)
    output = body.get("output")
    if isinstance(output, list):  # the Responses API
        for item in output:
            if isinstance(item, dict) and item.get("type") == "message":
                found = _message(item)
                if found is not None:
                    messages.append(found)
    return orjson.dumps(messages).decode() if messages else None


# -- configuration -----------------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}
# OTEL_TRACES_SAMPLER -> (parent-based, takes a ratio); the SDK's sampler names.
_SAMPLERS: dict[str, tuple[bool, float | None]] = {
    "always_on": (False, 1.0),
    "always_off": (False, 0.0),
    "parentbased_always_on": (True, 1.0),
    "parentbased_always_off": (True, 0.0),
    "traceidratio": (False, None),
    "parentbased_traceidratio": (True, None),
}


def check_env(env: Mapping[str, str]) -> None:
    """Raise TracingError for an unusable sampler or protocol (before anything starts)."""
    _sampling(env)
    _timeout_s(env)
    for name in (
        "OTEL_BSP_MAX_QUEUE_SIZE",
        "OTEL_BSP_SCHEDULE_DELAY",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        "OTEL_BSP_EXPORT_TIMEOUT",
    ):
        _number(env, name)
    _batch_size(env)
    protocol = _protocol(env)
    if protocol not in ("http/protobuf", "grpc"):
        raise TracingError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported (http/protobuf or grpc)"
        )


def _protocol(env: Mapping[str, str]) -> str:
    return (
        _get(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or _get(env, "OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _number(env: Mapping[str, str], name: str) -> int | None:
    """A positive integer variable, or None (unset: the SDK's default)."""
    raw = _get(env, name)
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) <= 0:
        raise TracingError(f"{name}: {raw!r} is not a positive integer")
    return int(raw)


def _batch_size(env: Mapping[str, str]) -> int:
    """Spans per export: OTEL_BSP_MAX_EXPORT_BATCH_SIZE, at most the queue's size."""
    size = _number(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE") or MAX_BATCH_SIZE
    queue = _number(env, "OTEL_BSP_MAX_QUEUE_SIZE") or MAX_QUEUE_SIZE
    if size > queue:
        raise TracingError(
            f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE: {size} is more than OTEL_BSP_MAX_QUEUE_SIZE ({queue})"
        )
    return size


def _timeout_s(env: Mapping[str, str]) -> float | None:
    raw = _get(env, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") or _get(env, "OTEL_EXPORTER_OTLP_TIMEOUT")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise TracingError(f"OTEL_EXPORTER_OTLP_TIMEOUT: {raw!r} is not a positive number")
    return value


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def _sampling(env: Mapping[str, str]) -> Sampling:
    name = (_get(env, "OTEL_TRACES_SAMPLER") or "parentbased_always_on").lower()
    found = _SAMPLERS.get(name)
    if found is None:
        raise TracingError(f"OTEL_TRACES_SAMPLER: unknown sampler {name!r} (one of {_names()})")
    parent_based, rate = found
    raw = _get(env, "OTEL_TRACES_SAMPLER_ARG")
    if rate is None:
        rate = 1.0
        if raw is not None:
            try:
                rate = float(raw)
            except ValueError:
                rate = -1.0
            if not 0.0 <= rate <= 1.0:
                raise TracingError(f"OTEL_TRACES_SAMPLER_ARG: {raw!r} is not a ratio in [0, 1]")
    return Sampling.ratio(rate, parent_based)


def _names() -> str:
    return ", ".join(_SAMPLERS)


def _resource(env: Mapping[str, str]) -> Resource:
    """``service.name`` (``OTEL_SERVICE_NAME``, else ``OTEL_RESOURCE_ATTRIBUTES``, else
    ``best``) and the ``OTEL_RESOURCE_ATTRIBUTES`` pairs."""
    attributes: dict[str, str] = {}
    for pair in (_get(env, "OTEL_RESOURCE_ATTRIBUTES") or "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = unquote(value.strip())
    attributes["service.name"] = (
        _get(env, "OTEL_SERVICE_NAME") or attributes.get("service.name") or SERVICE_NAME
    )
    return Resource.create(attributes)


def encoder(resource: Resource) -> OtlpEncoder:
    """The OTLP encoder of this process's spans."""
    return OtlpEncoder(resource.attributes, SERVICE_NAME, REPEATED)


def _otlp_sink(
    env: Mapping[str, str], endpoint: str | None, base: str | None, resource: Resource
) -> Sink:
    protocol = _protocol(env)
    headers = dict(
        parse_env_headers(
            _get(env, "OTEL_EXPORTER_OTLP_TRACES_HEADERS")
            or _get(env, "OTEL_EXPORTER_OTLP_HEADERS")
            or "",
            liberal=True,
        )
    )
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HTTPExporter,
        )

        url = endpoint or f"{(base or '').rstrip('/')}/v1/traces"
        exporter = HTTPExporter(endpoint=url, headers=headers or None, timeout=_timeout_s(env))
        return OtlpHttpSink(exporter, encoder(resource), resource)
    if protocol == "grpc":
        exporter = grpc_exporter(
            endpoint=endpoint or base, headers=headers or None, timeout=_timeout_s(env)
        )
        return OtlpGrpcSink(exporter, encoder(resource))
    raise TracingError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported (http/protobuf or grpc)"
    )
