"""The ASGI application: the hot routes in plain ASGI, everything else handed to the FastAPI
app of ``service.api.ops``; request ids, per-request metrics and the lifespan of the gateway's
long-lived objects for both.

Why two: chat and embeddings are the gateway's throughput, and a framework's per-request
machinery (request objects, dependency resolution, middleware stack) would show in their
profile (docs/architecture.md, "Why the hot routes are plain ASGI"); the admin and operations
routes gain FastAPI's validation and OpenAPI document, and cost nothing on the hot path:
dispatch is the same one dict lookup.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from prometheus_client import Counter, Histogram

from service import errors
from service.api import chat, completions, messages, responses
from service.api.errors import INTERNAL
from service.api.http import (
    ClientGone,
    Request,
    Response,
    StreamResponse,
    anthropic_error_response,
    error_response,
    send_response,
)
from service.api.ops import create_ops_app
from service.apis import Api
from service.errors import GatewayError
from service.gateway import Gateway
from service.settings import Settings, settings_from_env
from service.types import (
    DISCONNECT,
    RESPOND,
    Disconnect,
    Message,
    Receive,
    Respond,
    Scope,
    Send,
)

log = logging.getLogger("best.http")

RouteHandler = Callable[[Gateway, Request], Awaitable[Response | StreamResponse]]


class Route(NamedTuple):
    """A hot route: its metrics label, a handler per method, and whether its errors (and
    ids) take Anthropic's shape (``{"type": "error", ...}``, a ``request-id`` header)."""

    label: str
    methods: dict[str, RouteHandler]
    anthropic: bool = False


# The hot routes by path.  Every other path goes to FastAPI.
_CHAT = Route(Api.CHAT, {"POST": chat.chat_completions})
_EMBEDDINGS = Route(Api.EMBEDDINGS, {"POST": chat.embeddings})
_RESPONSES = Route(Api.RESPONSES, {"POST": responses.create_response})
_COMPLETIONS = Route(Api.COMPLETIONS, {"POST": completions.completions})
ROUTES: dict[str, Route] = {
    "/v1/chat/completions": _CHAT,
    "/chat/completions": _CHAT,
    "/v1/embeddings": _EMBEDDINGS,
    "/embeddings": _EMBEDDINGS,
    "/v1/responses": _RESPONSES,
    "/v1/completions": _COMPLETIONS,
    "/completions": _COMPLETIONS,
    "/v1/messages": Route(Api.MESSAGES, {"POST": messages.create_message}, anthropic=True),
    "/v1/messages/count_tokens": Route(
        Api.MESSAGES, {"POST": messages.count_tokens}, anthropic=True
    ),
}
# GET /v1/models[/{id}] with an anthropic-version header: the models in Anthropic's shape.
_ANTHROPIC_MODELS = Route("models", {"GET": messages.models}, anthropic=True)
# Metric labels of the FastAPI routes (anything else under /admin/ is "admin", the rest "other").
OPS_ROUTES: dict[str, str] = {
    "/v1/models": "models",
    "/models": "models",
    "/health": "health",
    "/ok": "health",
    "/ready": "ready",
    "/metrics": "metrics",
    "/stats": "stats",
}
# FastAPI paths with an id in them: /v1/models/{id}, /v1/responses/{id}[/...]
OPS_PREFIXES = (
    ("/v1/models/", "models"),
    ("/models/", "models"),
    ("/v1/responses/", Api.RESPONSES),
)
_HOT_LABELS = (Api.CHAT, Api.EMBEDDINGS, Api.RESPONSES, Api.COMPLETIONS, Api.MESSAGES)
_LABELS = (*_HOT_LABELS, *sorted(set(OPS_ROUTES.values())), "admin", "other")
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")


class App:
    """``App(gateway)`` is the whole HTTP edge: the hot routes here, the rest in ``self.ops``."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.ops = create_ops_app(gateway)
        self._metrics = gateway.metrics
        self._tracing = gateway.tracing  # None: tracing off, and no OpenTelemetry work at all
        self._counters: dict[tuple[str, int, str, str], Counter] = {}
        self._in_flight = {route: self._metrics.in_flight.labels(route) for route in _LABELS}
        self._durations = {route: self._metrics.request_duration.labels(route) for route in _LABELS}
        self._overhead: dict[str, Histogram] = {
            route: self._metrics.overhead.labels(route) for route in _HOT_LABELS
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            entry = ROUTES.get(path)
            if entry is not None:
                await self._http(scope, receive, send, entry)
            elif (path == "/v1/models" or path.startswith("/v1/models/")) and _asks_anthropic(
                scope
            ):
                await self._http(scope, receive, send, _ANTHROPIC_MODELS)
            else:
                await self._ops(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.gateway.start()
                except Exception as exc:  # report, do not hang the server
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.gateway.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send, entry: Route) -> None:
        started = time.perf_counter()
        request = Request(scope, receive)
        incoming = request.header(b"x-request-id")
        request_id = request.request_id = (
            incoming.decode() if incoming and _REQUEST_ID.match(incoming) else self.gateway.ids()
        )
        route, methods, anthropic = entry
        handler = methods.get(request.method)
        trace = request.trace = (
            None
            if self._tracing is None
            else self._tracing.server(
                request.method, request.path, request.path, request_id, scope["headers"]
            )
        )
        gauge = self._in_flight.get(route)
        if gauge is not None:
            gauge.inc()
        extensions = scope.get("extensions", _NONE)  # the server's own (service/protocol.py)
        watch: _DisconnectWatch | None = None
        if route in _UPSTREAM_ROUTES:
            # Once the body is in, a client that leaves cancels the work at once, upstream
            # call included: before the answer, and for a stream until its end.
            watch = _DisconnectWatch(receive, extensions.get(DISCONNECT))
            request.on_body_read = watch.start
        try:
            try:
                if handler is None:
                    raise errors.method_not_allowed(request.method, methods)
                response: Response | StreamResponse = await handler(self.gateway, request)
            except GatewayError as exc:
                response = anthropic_error_response(exc) if anthropic else error_response(exc)
            except ClientGone:
                return
            except Exception:
                log.exception("request %s: unexpected error", request_id)
                render = anthropic_error_response if anthropic else error_response
                response = render(INTERNAL)
            if trace is not None:
                trace.status = response.status
            rid = request_id.encode()
            extra = (
                [(b"x-request-id", rid), (b"request-id", rid)]
                if anthropic
                else [(b"x-request-id", rid)]
            )
            try:
                respond = extensions.get(RESPOND)
                if isinstance(response, StreamResponse):
                    await self._stream(response, send, respond, extra, started, watch, route)
                else:
                    if watch is not None:
                        watch.stop()
                    await send_response(send, response, extra, respond)
            finally:
                if response.call is not None:
                    response.call.finish()  # settles quotas if nothing did (no-op otherwise)
            self._observe(route, response, started, None if trace is None else trace.exemplar)
        except asyncio.CancelledError:
            if watch is None or not watch.gone:
                raise  # a shutdown, not the client leaving
            watch.absorb()
        finally:
            if watch is not None:
                watch.stop()
            if gauge is not None:
                gauge.dec()
            if trace is not None:
                trace.end()  # a stream's span too: _stream has sent its end

    async def _ops(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A path FastAPI serves; the request id and the metrics are the same as on the hot
        routes."""
        started = time.perf_counter()
        path: str = scope["path"]
        route = OPS_ROUTES.get(path) or _ops_label(path)
        incoming = dict(scope["headers"]).get(b"x-request-id")
        request_id = (
            incoming if incoming and _REQUEST_ID.match(incoming) else self.gateway.ids().encode()
        )
        status = 500
        trace = (
            None
            if self._tracing is None
            else self._tracing.server(
                scope["method"], path, "", request_id.decode(), scope["headers"]
            )
        )

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id)]
            await send(message)

        gauge = self._in_flight[route]
        gauge.inc()
        try:
            await self.ops(scope, receive, send_with_id)
        except Exception:
            # Answered and logged already by the FastAPI app's handler; Starlette re-raises
            # so that a server can log it, which is done.
            pass
        finally:
            gauge.dec()
            if trace is not None:
                # Starlette's router leaves the route it matched in the scope.
                template = getattr(scope.get("route"), "path", None)
                if isinstance(template, str):
                    trace.route(scope["method"], template)
                trace.status = status
                trace.end()
        self._count(route, status, "", "")
        exemplar = None if trace is None else trace.exemplar
        self._durations[route].observe(time.perf_counter() - started, exemplar)

    async def _stream(
        self,
        response: StreamResponse,
        send: Send,
        respond: Respond | None,
        extra: list[tuple[bytes, bytes]],
        started: float,
        watch: _DisconnectWatch | None,
        route: str,
    ) -> None:
        """Send SSE pieces as they come.  A client that leaves cancels the upstream at once;
        a stream cut by the shutdown's grace period ends with an error event."""
        headers = response.headers + extra
        if respond is None or not respond(send, response.status, headers, None):
            await send(
                {"type": "http.response.start", "status": response.status, "headers": headers}
            )
        first = True
        finished = False
        final = response.final
        try:
            async for piece in response.chunks:
                # A piece ending in the final marker is the last: it also ends the response.
                finished = bool(final) and piece.endswith(final)
                await send({"type": "http.response.body", "body": piece, "more_body": not finished})
                if first:
                    first = False
                    self._first_piece_sent(response, started, route)
            if not finished:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except GatewayError as exc:
            # The stream broke after its first event: end it with the error's event.
            await send({"type": "http.response.body", "body": response.error_event(exc)})
        except asyncio.CancelledError:
            if watch is not None and watch.gone:
                watch.absorb()
                return
            # The shutdown's grace period ran out: end the stream as every stream ends.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            ended = response.error_event(_SHUTTING_DOWN)
            await send({"type": "http.response.body", "body": ended, "more_body": False})

    def _first_piece_sent(self, response: StreamResponse, started: float, route: str) -> None:
        call = response.call
        served = call.served_by if call is not None else None
        if call is None or served is None:
            return
        elapsed = time.perf_counter() - started
        exemplar = None if call.trace is None else call.trace.exemplar
        self._metrics.time_to_first_token.labels(*served).observe(elapsed, exemplar)
        overhead = self._overhead.get(route)
        if overhead is not None:
            overhead.observe(max(0.0, elapsed - call.upstream_s), exemplar)

    def _observe(
        self,
        route: str,
        response: Response | StreamResponse,
        started: float,
        exemplar: dict[str, str] | None,
    ) -> None:
        elapsed = time.perf_counter() - started
        call = response.call
        served = call.served_by if call is not None else None
        provider, model = served if served is not None else ("", "")
        self._count(route, response.status, model, provider)
        duration = self._durations.get(route)
        if duration is not None:
            duration.observe(elapsed, exemplar)
        if call is not None and isinstance(response, Response):
            overhead = self._overhead.get(route)
            if overhead is not None:
                overhead.observe(max(0.0, elapsed - call.upstream_s), exemplar)

    def _count(self, route: str, status: int, model: str, provider: str) -> None:
        key = (route, status, model, provider)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._metrics.requests.labels(route, str(status), model, provider)
            if len(self._counters) < 10000:
                self._counters[key] = counter
        counter.inc()


_UPSTREAM_ROUTES = frozenset(_HOT_LABELS)
_NONE: dict[str, Any] = {}
_SHUTTING_DOWN = errors.Unavailable(
    "The gateway is shutting down and cut this stream; retry the request.",
    code="shutting_down",
)


def _asks_anthropic(scope: Scope) -> bool:
    """The request carries ``anthropic-version`` (an Anthropic SDK or Claude Code)."""
    return any(name == b"anthropic-version" for name, _ in scope["headers"])


def _ops_label(path: str) -> str:
    for prefix, label in OPS_PREFIXES:
        if path.startswith(prefix):
            return label
    return "admin" if path.startswith("/admin/") else "other"


class _DisconnectWatch:
    """Cancels the request's task when the client disconnects (after the body was read):
    told by the server's ``Disconnect`` signal when it has one, else by a task waiting on
    ``receive()``."""

    __slots__ = ("_receive", "_signal", "_task", "_watcher", "gone")

    def __init__(self, receive: Receive, signal: Disconnect | None) -> None:
        self._receive = receive
        self._signal = signal
        self._task: asyncio.Task[object] | None = None
        self._watcher: asyncio.Future[None] | None = None
        self.gone = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.current_task()
            if self._signal is not None:
                self._signal.callback = self._left
            else:
                self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                break
        self._left()

    def _left(self) -> None:
        self.gone = True
        if self._task is not None:
            self._task.cancel()

    def absorb(self) -> None:
        """The cancellation came from the client leaving: it ends here."""
        if self._task is not None:
            self._task.uncancel()

    def stop(self) -> None:
        if self._signal is not None:
            self._signal.callback = None
        if self._watcher is not None and not self.gone:
            self._watcher.cancel()
        self._watcher = None


def create_app(settings: Settings | None = None) -> App:
    """The ASGI app for ``settings`` (default: from the environment)."""
    return App(Gateway.build(settings or settings_from_env()))
