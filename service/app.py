"""The ASGI application: the route table, request ids, error rendering, response sending,
per-request metrics and the lifespan of the gateway's long-lived objects."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable

from prometheus_client import Counter

from service import errors
from service.api import admin, chat, health, models, stats
from service.api.errors import INTERNAL, sse_error_event
from service.api.http import (
    ClientGone,
    Request,
    Response,
    StreamResponse,
    error_response,
    send_response,
)
from service.errors import GatewayError
from service.gateway import Gateway
from service.settings import Settings, settings_from_env
from service.types import Receive, Scope, Send

log = logging.getLogger("best.http")

Handler = Callable[[Gateway, Request], Awaitable[Response | StreamResponse]]

# path -> (route label, {method: handler})
Route = tuple[str, dict[str, Handler]]
_CHAT: Route = ("chat", {"POST": chat.chat_completions})
_EMBEDDINGS: Route = ("embeddings", {"POST": chat.embeddings})
_MODELS: Route = ("models", {"GET": models.list_models})
ROUTES: dict[str, Route] = {
    "/v1/chat/completions": _CHAT,
    "/chat/completions": _CHAT,
    "/v1/embeddings": _EMBEDDINGS,
    "/embeddings": _EMBEDDINGS,
    "/v1/models": _MODELS,
    "/models": _MODELS,
    "/health": ("health", {"GET": health.health}),
    "/ok": ("health", {"GET": health.ok}),
    "/ready": ("ready", {"GET": health.ready}),
    "/metrics": ("metrics", {"GET": health.metrics}),
    "/stats": ("stats", {"GET": stats.stats}),
    "/admin/tokens": ("admin", {"GET": admin.tokens, "POST": admin.tokens}),
}
_TOKEN_PATH = re.compile(r"^/admin/tokens/([0-9a-f]{1,64})$")
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")


class App:
    """Plain ASGI: ``App(gateway)`` is the whole HTTP edge."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._metrics = gateway.metrics
        self._counters: dict[tuple[str, int, str, str], Counter] = {}
        self._in_flight = {
            route: self._metrics.in_flight.labels(route) for route, _ in ROUTES.values()
        }
        self._durations = {
            route: self._metrics.request_duration.labels(route) for route, _ in ROUTES.values()
        }
        self._overhead = {
            route: self._metrics.overhead.labels(route) for route in ("chat", "embeddings")
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
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

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request = Request(scope, receive)
        incoming = request.header(b"x-request-id")
        request_id = request.request_id = (
            incoming.decode() if incoming and _REQUEST_ID.match(incoming) else self.gateway.ids()
        )
        route, handler = self._route(request)
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
                if isinstance(handler, GatewayError):
                    raise handler
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
                    await self._stream(response, send, extra, started, watch)
                else:
                    if watch is not None:
                        watch.stop()
                    await send_response(send, response, extra)
            finally:
                if response.call is not None:
                    response.call.finish(-1)  # settles quotas if nothing did (no-op otherwise)
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

    def _route(self, request: Request) -> tuple[str, Handler | GatewayError]:
        """(route label, the handler or the error to answer)."""
        entry = ROUTES.get(request.path)
        if entry is None:
            match = _TOKEN_PATH.match(request.path)
            if match is None:
                return "other", errors.not_found(f"No route {request.method} {request.path}.")
            if request.method not in ("GET", "PATCH", "DELETE"):
                return "admin", errors.method_not_allowed(request.method)
            token_id = match.group(1)
            return "admin", lambda gw, req: admin.token(gw, req, token_id)
        route, methods = entry
        return route, methods.get(request.method) or errors.method_not_allowed(request.method)

    async def _stream(
        self,
        response: StreamResponse,
        send: Send,
        extra: list[tuple[bytes, bytes]],
        started: float,
        watch: _DisconnectWatch | None,
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
                    self._first_piece_sent(response, started)
            if not finished:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except GatewayError as exc:
            # The stream broke after its first event: end it with the error's event.
            await send({"type": "http.response.body", "body": sse_error_event(exc)})
        except asyncio.CancelledError:
            if watch is not None and watch.gone:
                watch.absorb()
                return
            # The shutdown's grace period ran out: end the stream as every stream ends.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await send({"type": "http.response.body", "body": _SHUTDOWN_EVENT, "more_body": False})

    def _first_piece_sent(self, response: StreamResponse, started: float) -> None:
        call = response.call
        served = call.served_by if call is not None else None
        if call is None or served is None:
            return
        elapsed = time.perf_counter() - started
        self._metrics.time_to_first_token.labels(*served).observe(elapsed)
        self._overhead["chat"].observe(max(0.0, elapsed - call.upstream_s))

    def _observe(self, route: str, response: Response | StreamResponse, started: float) -> None:
        elapsed = time.perf_counter() - started
        call = response.call
        served = call.served_by if call is not None else None
        provider, model = served if served is not None else ("", "")
        key = (route, response.status, model, provider)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._metrics.requests.labels(route, str(response.status), model, provider)
            if len(self._counters) < 10000:
                self._counters[key] = counter
        counter.inc()
        duration = self._durations.get(route)
        if duration is not None:
            duration.observe(elapsed)
        if call is not None and isinstance(response, Response):
            overhead = self._overhead.get(route)
            if overhead is not None:
                overhead.observe(max(0.0, elapsed - call.upstream_s))


_UPSTREAM_ROUTES = frozenset({"chat", "embeddings"})
_SHUTDOWN_EVENT = sse_error_event(
    errors.Unavailable(
        "The gateway is shutting down and cut this stream; retry the request.",
        code="shutting_down",
    )
)


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
