"""The ASGI application: the hot routes in plain ASGI, everything else handed to the FastAPI
app of ``service.api.ops``; request ids, per-request metrics and the lifespan of the gateway's
long-lived objects for both.

Why two: chat and embeddings are the gateway's throughput, and a framework's per-request
machinery (request objects, dependency resolution, middleware stack) would show in their
profile (README, "Why the hot routes are plain ASGI"); the admin and operations routes gain
FastAPI's validation and OpenAPI document, and cost nothing on the hot path: dispatch is the
same one dict lookup.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Histogram

from service import errors
from service.api import chat, completions, responses
from service.api.errors import INTERNAL
from service.api.http import (
    ClientGone,
    Request,
    Response,
    StreamResponse,
    error_response,
    send_response,
)
from service.api.ops import create_ops_app
from service.apis import Api
from service.errors import GatewayError
from service.gateway import Gateway
from service.settings import Settings, settings_from_env
from service.types import Message, Receive, Scope, Send

log = logging.getLogger("best.http")

RouteHandler = Callable[[Gateway, Request], Awaitable[Response | StreamResponse]]

# The hot routes: path -> (route label, {method: handler}).  Every other path goes to FastAPI.
Route = tuple[str, dict[str, RouteHandler]]
_CHAT: Route = (Api.CHAT, {"POST": chat.chat_completions})
_EMBEDDINGS: Route = (Api.EMBEDDINGS, {"POST": chat.embeddings})
_RESPONSES: Route = (Api.RESPONSES, {"POST": responses.create_response})
_COMPLETIONS: Route = (Api.COMPLETIONS, {"POST": completions.completions})
ROUTES: dict[str, Route] = {
    "/v1/chat/completions": _CHAT,
    "/chat/completions": _CHAT,
    "/v1/embeddings": _EMBEDDINGS,
    "/embeddings": _EMBEDDINGS,
    "/v1/responses": _RESPONSES,
    "/v1/completions": _COMPLETIONS,
    "/completions": _COMPLETIONS,
}
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
_HOT_LABELS = (Api.CHAT, Api.EMBEDDINGS, Api.RESPONSES, Api.COMPLETIONS)
_LABELS = (*_HOT_LABELS, *sorted(set(OPS_ROUTES.values())), "admin", "other")
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")


class App:
    """``App(gateway)`` is the whole HTTP edge: the hot routes here, the rest in ``self.ops``."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.ops = create_ops_app(gateway)
        self._metrics = gateway.metrics
        self._counters: dict[tuple[str, int, str, str], Counter] = {}
        self._in_flight = {route: self._metrics.in_flight.labels(route) for route in _LABELS}
        self._durations = {route: self._metrics.request_duration.labels(route) for route in _LABELS}
        self._overhead: dict[str, Histogram] = {
            route: self._metrics.overhead.labels(route) for route in _HOT_LABELS
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            entry = ROUTES.get(scope["path"])
            if entry is not None:
                await self._http(scope, receive, send, entry)
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
        route, methods = entry
        handler = methods.get(request.method)
        gauge = self._in_flight.get(route)
        if gauge is not None:
            gauge.inc()
        watch: _DisconnectWatch | None = None
        if route in _UPSTREAM_ROUTES:
            # Once the body is in, a client that leaves cancels the work at once, upstream
            # call included: before the answer, and for a stream until its end.
            watch = _DisconnectWatch(receive)
            request.on_body_read = watch.start
        try:
            try:
                if handler is None:
                    raise errors.method_not_allowed(request.method)
                response: Response | StreamResponse = await handler(self.gateway, request)
            except GatewayError as exc:
                response = error_response(exc)
            except ClientGone:
                return
            except Exception:
                log.exception("request %s: unexpected error", request_id)
                response = error_response(INTERNAL)
            extra = [(b"x-request-id", request_id.encode())]
            try:
                if isinstance(response, StreamResponse):
                    await self._stream(response, send, extra, started, watch, route)
                else:
                    if watch is not None:
                        watch.stop()
                    await send_response(send, response, extra)
            finally:
                if response.call is not None:
                    response.call.finish()  # settles quotas if nothing did (no-op otherwise)
            self._observe(route, response, started)
        except asyncio.CancelledError:
            if watch is None or not watch.gone:
                raise  # a shutdown, not the client leaving
            watch.absorb()
        finally:
            if watch is not None:
                watch.stop()
            if gauge is not None:
                gauge.dec()

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
        self._count(route, status, "", "")
        self._durations[route].observe(time.perf_counter() - started)

    async def _stream(
        self,
        response: StreamResponse,
        send: Send,
        extra: list[tuple[bytes, bytes]],
        started: float,
        watch: _DisconnectWatch | None,
        route: str,
    ) -> None:
        """Send SSE pieces as they come.  A client that leaves cancels the upstream at once;
        a stream cut by the shutdown's grace period ends with an error event."""
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": response.headers + extra,
            }
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
        self._metrics.time_to_first_token.labels(*served).observe(elapsed)
        overhead = self._overhead.get(route)
        if overhead is not None:
            overhead.observe(max(0.0, elapsed - call.upstream_s))

    def _observe(self, route: str, response: Response | StreamResponse, started: float) -> None:
        elapsed = time.perf_counter() - started
        call = response.call
        served = call.served_by if call is not None else None
        provider, model = served if served is not None else ("", "")
        self._count(route, response.status, model, provider)
        duration = self._durations.get(route)
        if duration is not None:
            duration.observe(elapsed)
        if call is not None and isinstance(response, Response):
            overhead = self._overhead.get(route)
            if overhead is not None:
                overhead.observe(max(0.0, elapsed - call.upstream_s))

    def _count(self, route: str, status: int, model: str, provider: str) -> None:
        key = (route, status, model, provider)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._metrics.requests.labels(route, str(status), model, provider)
            if len(self._counters) < 10000:
                self._counters[key] = counter
        counter.inc()


_UPSTREAM_ROUTES = frozenset(_HOT_LABELS)
_SHUTTING_DOWN = errors.Unavailable(
    "The gateway is shutting down and cut this stream; retry the request.",
    code="shutting_down",
)


def _ops_label(path: str) -> str:
    for prefix, label in OPS_PREFIXES:
        if path.startswith(prefix):
            return label
    return "admin" if path.startswith("/admin/") else "other"


class _DisconnectWatch:
    """Cancels the request's task when the client disconnects (after the body was read)."""

    __slots__ = ("_receive", "_task", "_watcher", "gone")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task[object] | None = None
        self._watcher: asyncio.Future[None] | None = None
        self.gone = False

    def start(self) -> None:
        if self._watcher is None:
            self._task = asyncio.current_task()
            self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                break
        self.gone = True
        if self._task is not None:
            self._task.cancel()

    def absorb(self) -> None:
        """The cancellation came from the client leaving: it ends here."""
        if self._task is not None:
            self._task.uncancel()

    def stop(self) -> None:
        if self._watcher is not None and not self.gone:
            self._watcher.cancel()
        self._watcher = None


def create_app(settings: Settings | None = None) -> App:
    """The ASGI app for ``settings`` (default: from the environment)."""
    return App(Gateway.build(settings or settings_from_env()))
