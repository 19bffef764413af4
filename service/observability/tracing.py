"""OpenTelemetry traces: a SERVER span per request, a CLIENT span per upstream attempt.

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set
(and ``OTEL_SDK_DISABLED`` is not true): then ``Tracing.from_env`` is None, and the edge and
the router, which test ``trace is None``, do no OpenTelemetry work at all: no span, no
context, no ``traceparent`` sent upstream.

When on, the process has a ``TracerProvider`` of its own (the API's global one is left
alone), a W3C TraceContext propagator, and a ``BatchSpanProcessor`` whose queue is bounded
(``OTEL_BSP_MAX_QUEUE_SIZE``, default 2048): spans are exported by a background thread, so
a collector that is down or slow drops spans and logs, at most once per ``LOG_INTERVAL_S``,
but never delays or fails a request.

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
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.re import parse_env_headers

from service.apis import Api
from service.prices import PICO_PER_USD, Prices
from service.upstream.usage import Usage

log = logging.getLogger("best.tracing")

SERVICE_NAME = "best"
LOG_INTERVAL_S = 60.0  # at most one log line about failing exports per interval
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

# best.outcome of an attempt.
WON = "won"  # its answer is the one the client got
FAILED = "failed"  # it failed (error.type says why); the request failed over or gave up
CANCELLED = "cancelled"  # cancelled before it answered: a hedge that lost, or the client left
LOST = "lost"  # it answered, but another attempt had already won (hedging)

# The loggers of the export path; their lines are throttled to one per interval.
_EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.sdk._shared_internal",
)

HeaderPairs = Iterable[tuple[bytes, bytes]]


class TracingError(ValueError):
    """The OTEL_* variables cannot be used (the message names the variable)."""


class Tracing:
    """The process's tracer, built once (``Gateway.build``) when tracing is on."""

    def __init__(
        self,
        provider: TracerProvider,
        prices: Callable[[], Prices],
        capture_content: bool = False,
        throttle: _Throttle | None = None,
    ) -> None:
        self.provider = provider
        self.capture_content = capture_content
        self._tracer = provider.get_tracer("best")
        self._propagator = TraceContextTextMapPropagator()
        self._prices = prices
        self._throttle = throttle
        self._servers: dict[str, tuple[str, int | None]] = {}  # url -> (address, port)

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
        if exporter is None:
            exporter = _otlp_exporter(env, endpoint, base)
        throttle = _Throttle(LOG_INTERVAL_S)
        provider = TracerProvider(sampler=_sampler(env), resource=_resource(env))
        provider.add_span_processor(
            BatchSpanProcessor(
                _Counted(exporter, throttle),
                max_queue_size=_number(env, "OTEL_BSP_MAX_QUEUE_SIZE"),
                schedule_delay_millis=_number(env, "OTEL_BSP_SCHEDULE_DELAY"),
                max_export_batch_size=_number(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"),
                export_timeout_millis=_number(env, "OTEL_BSP_EXPORT_TIMEOUT"),
            )
        )
        throttle.attach()
        return cls(provider, prices, _true(env.get(CAPTURE_CONTENT)), throttle)

    def server(
        self, method: str, path: str, route: str, request_id: str, headers: HeaderPairs
    ) -> RequestTrace:
        """The SERVER span of a request, a child of the caller's ``traceparent`` if any."""
        parent: Context | None = None
        carrier: dict[str, str] | None = None
        for name, value in headers:
            if name == b"traceparent" or name == b"tracestate":
                carrier = carrier or {}
                carrier[name.decode()] = value.decode("latin-1")
        if carrier is not None:
            parent = self._propagator.extract(carrier)
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.path": path,
            "best.request_id": request_id,
        }
        if route:
            attributes["http.route"] = route
        span = self._tracer.start_span(
            f"{method} {route}" if route else method,
            parent,
            SpanKind.SERVER,
            attributes,
        )
        return RequestTrace(self, span)

    def _attempt(
        self,
        parent: Span,
        api: str,
        provider: str,
        model: str,
        url: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        hedge: bool,
        number: int,
    ) -> AttemptSpan:
        operation = OPERATIONS.get(api, api)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": model,
            "best.attempt": number,
            "best.hedge": hedge,
        }
        address, port = self._server_of(url)
        attributes["server.address"] = address
        if port is not None:
            attributes["server.port"] = port
        if body.get("stream") is True:
            attributes["gen_ai.request.stream"] = True
        for field, name in _NUMBERS.items():
            value = body.get(field)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attributes[name] = value
        stop = body.get("stop")
        if isinstance(stop, str):
            attributes["gen_ai.request.stop_sequences"] = [stop]
        elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
            attributes["gen_ai.request.stop_sequences"] = stop
        if self.capture_content:
            attributes.update(_input_content(api, body))
        span = self._tracer.start_span(
            f"{operation} {model}", set_span_in_context(parent), SpanKind.CLIENT, attributes
        )
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, set_span_in_context(span))
        return AttemptSpan(self, span, {**headers, **carrier})

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

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Export every ended span now (blocking: tests and shutdown only)."""
        return self.provider.force_flush(int(timeout_s * 1000))

    async def close(self, timeout_s: float = 5.0) -> None:
        """Export what is queued and stop, waiting at most ``timeout_s``: the flush runs in
        a daemon thread, so a collector that does not answer cannot hold the exit."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def shutdown() -> None:
            try:
                self.provider.shutdown()
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


class RequestTrace:
    """The SERVER span of one request; the attempts' spans are its children."""

    __slots__ = ("_attempts", "_ended", "_open", "_tracing", "exemplar", "span", "status")

    def __init__(self, tracing: Tracing, span: Span) -> None:
        self._tracing = tracing
        self.span = span
        self.status = 0
        self._ended = False
        self._attempts = 0
        self._open: list[AttemptSpan] = []
        context = span.get_span_context()
        # A metric sample links to its trace only if the trace is kept.
        self.exemplar: dict[str, str] | None = (
            {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}
            if context.trace_flags.sampled
            else None
        )

    def caller(self, token_id: str, team: str | None) -> None:
        """Who called: the token's id (never the token) and its team."""
        if token_id:
            self.span.set_attribute("best.token_id", token_id)
        if team:
            self.span.set_attribute("best.team", team)

    def cache(self, state: str) -> None:
        """The response cache's verdict for this request (hit, miss, bypass...)."""
        self.span.set_attribute("best.cache", state)

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
        hedge = bool(self._open)
        attempt = self._tracing._attempt(
            self.span, api, provider, model, url, body, headers, hedge, self._attempts
        )
        attempt.request = self
        self._open.append(attempt)
        return attempt

    def route(self, method: str, template: str) -> None:
        """The route template the framework matched (known only after it ran)."""
        self.span.set_attribute("http.route", template)
        self.span.update_name(f"{method} {template}")

    def end(self) -> None:
        """End the SERVER span with ``status`` (0: no response was sent: the client left);
        an attempt still open (the client left mid-stream) ends as cancelled."""
        if self._ended:
            return
        self._ended = True
        for attempt in list(self._open):
            attempt.cancelled()
        span = self.span
        status = self.status
        if status:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_attribute("error.type", str(status))
                span.set_status(Status(StatusCode.ERROR))
        else:
            span.set_attribute("error.type", "client_disconnected")
        span.end()


class AttemptSpan:
    """One upstream attempt's CLIENT span; ended exactly once with its outcome."""

    __slots__ = ("_ended", "_tracing", "headers", "request", "span")

    def __init__(self, tracing: Tracing, span: Span, headers: Mapping[str, str]) -> None:
        self._tracing = tracing
        self.span = span
        self.headers = headers  # the upstream request's headers, with its traceparent
        self.request: RequestTrace | None = None
        self._ended = False

    def failed(self, error_type: str) -> None:
        """It failed; ``error_type`` is the gateway's failure reason (or the upstream's
        status when it refused the request as the client's fault)."""
        self.span.set_attribute("error.type", error_type)
        self.span.set_status(Status(StatusCode.ERROR))
        self._end(FAILED)

    def cancelled(self) -> None:
        self._end(CANCELLED)

    def answered(self, outcome: str, body: Any, used: Usage | None) -> None:
        """A JSON answer: the response's id, model, finish reasons and usage, and its
        content when content capture is on."""
        span = self.span
        if isinstance(body, dict):
            _set_response(span, body)
            if self._tracing.capture_content:
                output = _output_content(body)
                if output is not None:
                    span.set_attribute("gen_ai.output.messages", output)
        self._usage(used)
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
        span = self.span
        event = _first_event(first)
        if event is not None:
            # A chat chunk, or a Responses API event holding its response object.
            _set_identity(span, event.get("response") if "response" in event else event)
        reasons = list(finish_reasons)
        if error_type is not None:
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR))
            reasons = reasons or ["error"]
        if reasons:
            span.set_attribute("gen_ai.response.finish_reasons", reasons)
        span.set_attribute("gen_ai.response.time_to_first_chunk", first_chunk_s)
        span.set_attribute("best.ttft_ms", round(first_chunk_s * 1000.0, 3))
        self._usage(used)
        self._end(WON)

    def _usage(self, used: Usage | None) -> None:
        if used is None or not used.provider:
            return
        span = self.span
        span.set_attribute("gen_ai.usage.input_tokens", used.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", used.completion_tokens)
        cost = self._tracing._cost_usd(used)
        if cost is not None:
            span.set_attribute("best.cost_usd", cost)

    def _end(self, outcome: str) -> None:
        if self._ended:
            return
        self._ended = True
        self.span.set_attribute("best.outcome", outcome)
        self.span.end()
        request = self.request
        if request is not None and self in request._open:
            request._open.remove(self)


def _set_identity(span: Span, body: Any) -> None:
    if not isinstance(body, dict):
        return
    value = body.get("id")
    if isinstance(value, str):
        span.set_attribute("gen_ai.response.id", value)
    value = body.get("model")
    if isinstance(value, str):
        span.set_attribute("gen_ai.response.model", value)


def _set_response(span: Span, body: dict[str, Any]) -> None:
    _set_identity(span, body)
    choices = body.get("choices")
    if isinstance(choices, list):
        reasons = [
            c["finish_reason"]
            for c in choices
            if isinstance(c, dict) and isinstance(c.get("finish_reason"), str)
        ]
        if reasons:
            span.set_attribute("gen_ai.response.finish_reasons", reasons)
    elif isinstance(body.get("status"), str) and body.get("object") == "response":
        # The Responses API has no finish reason; its status says how it ended.
        span.set_attribute("gen_ai.response.finish_reasons", [body["status"]])


def _first_event(frames: Sequence[bytes]) -> dict[str, Any] | None:
    """The first JSON event of the stream's first frames (``data: {...}``)."""
    for frame in frames:
        for line in frame.split(b"\n"):
            if line.startswith(b"data:"):
                try:
                    event = orjson.loads(line[5:])
                except orjson.JSONDecodeError:
                    continue
                if isinstance(event, dict):
                    return event
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
_SAMPLERS: dict[str, Callable[[float], Sampler]] = {
    "always_on": lambda _: ALWAYS_ON,
    "always_off": lambda _: ALWAYS_OFF,
    "parentbased_always_on": lambda _: DEFAULT_ON,
    "parentbased_always_off": lambda _: DEFAULT_OFF,
    "traceidratio": TraceIdRatioBased,
    "parentbased_traceidratio": ParentBasedTraceIdRatio,
}


def check_env(env: Mapping[str, str]) -> None:
    """Raise TracingError for an unusable sampler or protocol (before anything starts)."""
    _sampler(env)
    _timeout_s(env)
    for name in (
        "OTEL_BSP_MAX_QUEUE_SIZE",
        "OTEL_BSP_SCHEDULE_DELAY",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        "OTEL_BSP_EXPORT_TIMEOUT",
    ):
        _number(env, name)
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


def _sampler(env: Mapping[str, str]) -> Sampler:
    name = (_get(env, "OTEL_TRACES_SAMPLER") or "parentbased_always_on").lower()
    make = _SAMPLERS.get(name)
    if make is None:
        raise TracingError(f"OTEL_TRACES_SAMPLER: unknown sampler {name!r} (one of {_names()})")
    raw = _get(env, "OTEL_TRACES_SAMPLER_ARG")
    rate = 1.0
    if raw is not None and "ratio" in name:
        try:
            rate = float(raw)
        except ValueError:
            rate = -1.0
        if not 0.0 <= rate <= 1.0:
            raise TracingError(f"OTEL_TRACES_SAMPLER_ARG: {raw!r} is not a ratio in [0, 1]")
    return make(rate)


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


def _otlp_exporter(env: Mapping[str, str], endpoint: str | None, base: str | None) -> SpanExporter:
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
        return HTTPExporter(endpoint=url, headers=headers or None, timeout=_timeout_s(env))
    if protocol == "grpc":
        # Imported only when asked for: grpc is a large library to hold in memory.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GRPCExporter,
        )

        return GRPCExporter(
            endpoint=endpoint or base, headers=headers or None, timeout=_timeout_s(env)
        )
    raise TracingError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported (http/protobuf or grpc)"
    )


# -- export health -----------------------------------------------------------------------------


class _Throttle(logging.Filter):
    """Lets one record through per interval on the export path's loggers: a collector that
    stays down costs a log line per interval, not one per batch and retry."""

    def __init__(self, interval_s: float) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._next = 0.0
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now < self._next:
            self.suppressed += 1
            return False
        self._next = now + self._interval_s
        if self.suppressed:
            record.msg = f"{record.msg} ({self.suppressed} similar lines suppressed)"
            self.suppressed = 0
        return True

    def attach(self) -> None:
        for name in (*_EXPORT_LOGGERS, log.name):
            logging.getLogger(name).addFilter(self)

    def detach(self) -> None:
        for name in (*_EXPORT_LOGGERS, log.name):
            logging.getLogger(name).removeFilter(self)


class _Counted(SpanExporter):
    """The exporter, with a failed export reported on ``best.tracing`` (throttled): the
    SDK's exporters say why, this says how many spans were lost."""

    def __init__(self, inner: SpanExporter, throttle: _Throttle) -> None:
        self._inner = inner
        self._throttle = throttle

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception:  # an exporter bug must not kill the export thread
            log.exception("trace export failed: %d spans dropped", len(spans))
            return SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            log.warning(
                "trace export failed: %d spans dropped (is the collector at the "
                "OTEL_EXPORTER_OTLP_ENDPOINT up?)",
                len(spans),
            )
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)
