"""A fake OpenAI-compatible provider on loopback, for the gateway's tests.

``FakeProvider`` is a real aiohttp HTTP/1.1 server running in a background thread with its own
event loop, so sync tests, async tests and a gateway running in other processes all reach it
the same way: over TCP at ``base_url``. By default it answers like a healthy provider (see
``openai_payloads`` for the exact, deterministic answers); tests switch it, per model and at
runtime, into each way a provider breaks (``Behavior``) and then assert on what it recorded
(requests, concurrency, client disconnects). A model not in ``models`` gets 404
``model_not_found``, like a real provider.

Besides chat and embeddings it serves the Responses API (``POST /v1/responses`` JSON and typed
SSE events, and the stored responses: ``GET``/``DELETE /v1/responses/{id}``, ``input_items``,
``cancel``; see ``responses_payloads``) and legacy ``/v1/completions``; ``apis`` limits what
it serves (the others answer 404 like an unknown URL).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any, Self

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from tests.fakes import anthropic_payloads
from tests.fakes.behaviors import Behavior, Kind, RetryAfter, format_retry_after
from tests.fakes.openai_payloads import (
    EMBEDDING_DIM,
    JSONObject,
    chat_chunks,
    chat_completion,
    chat_usage,
    embedding_inputs,
    embedding_list,
    error_body,
    fake_embedding,
    messages_of,
    reply_text,
    sse_event,
)
from tests.fakes.responses_payloads import (
    completion_chunks,
    input_items,
    response_events,
    response_object,
    response_text,
    text_completion,
    typed_event,
)

__all__ = [
    "ANY_MODEL",
    "EMBEDDING_DIM",
    "Behavior",
    "FakeProvider",
    "Kind",
    "RecordedRequest",
    "RetryAfter",
    "chat_usage",
    "fake_embedding",
    "format_retry_after",
    "reply_text",
]

ANY_MODEL = "*"


def _error_json(
    status: int, message: str, error_type: str, code: str | None = None
) -> web.Response:
    return web.json_response(error_body(message, error_type, code), status=status)


class Endpoint(StrEnum):
    CHAT = "chat"
    EMBEDDINGS = "embeddings"
    RESPONSES = "responses"
    COMPLETIONS = "completions"
    MESSAGES = "messages"  # Anthropic's Messages API (x-api-key auth)
    COUNT_TOKENS = "count_tokens"  # /v1/messages/count_tokens
    STORED = "stored"  # GET/DELETE /responses/{id}, input_items, cancel
    MODELS = "models"
    UNKNOWN = "unknown"


ALL_APIS = ("chat", "embeddings", "responses", "completions", "messages")
# endpoint -> the API that serves it
_API_OF = {
    Endpoint.CHAT: "chat",
    Endpoint.EMBEDDINGS: "embeddings",
    Endpoint.RESPONSES: "responses",
    Endpoint.STORED: "responses",
    Endpoint.COMPLETIONS: "completions",
    Endpoint.MESSAGES: "messages",
    Endpoint.COUNT_TOKENS: "messages",
}


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the provider received it (every route, before auth)."""

    method: str
    path: str
    headers: CIMultiDictProxy[str]
    body: Any  # parsed JSON, or None when the body is empty or not JSON
    raw: bytes

    @property
    def model(self) -> str | None:
        model = self.body.get("model") if isinstance(self.body, dict) else None
        return model if isinstance(model, str) else None


@dataclass(eq=False)
class _Exchange:
    """A request being handled; lives on the server's loop only."""

    request: web.BaseRequest
    response: web.StreamResponse | None = None
    closed_by_server: bool = False
    peer_gone: bool = False


@dataclass
class _Counters:
    chat_requests: int = 0
    embedding_requests: int = 0
    response_requests: int = 0  # POST /responses
    completion_requests: int = 0
    message_requests: int = 0  # POST /messages (Anthropic's API)
    in_flight: int = 0
    max_in_flight: int = 0
    disconnects: int = 0
    requests: list[RecordedRequest] = field(default_factory=list)


class FakeProvider:
    """An OpenAI-compatible provider on ``127.0.0.1``, driven from any thread.

    State shared with test threads (behaviours, recordings, counters) sits behind one
    condition; everything about connections lives on the server's own loop.
    """

    def __init__(
        self,
        models: Sequence[str],
        *,
        api_key: str | None = None,
        owned_by: str = "fake-provider",
        port: int = 0,
        apis: Sequence[str] = ALL_APIS,
    ) -> None:
        self._models = list(models)
        self._apis = frozenset(apis)
        # Stored responses (the Responses API's conversations): id -> (response, input items)
        self._stored: dict[str, tuple[JSONObject, list[JSONObject]]] = {}
        self._api_key = api_key
        self._owned_by = owned_by
        self._port = port
        self._state = threading.Condition()
        self._counters = _Counters()
        self._queued: dict[str, deque[Behavior]] = {}
        self._persistent: dict[str, Behavior] = {}
        self._models_behavior = Behavior.ok()
        self._chooser: Callable[[JSONObject], Behavior | None] | None = None
        self._reported_cost: float | None = None
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        # Loop-side state, touched only by the server's thread.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._gate: asyncio.Event | None = None
        self._exchanges: set[_Exchange] = set()
        self._stopping = False

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Listen (same port again after a ``stop()``) and serve from a background thread."""
        if self._thread is not None:
            raise RuntimeError("FakeProvider is already running")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self._port = sock.getsockname()[1]
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failures: list[BaseException] = []
        thread = threading.Thread(
            target=self._run,
            args=(loop, sock, ready, failures),
            name=f"fake-provider-{self._port}",
            daemon=True,
        )
        self._loop, self._thread = loop, thread
        thread.start()
        ready.wait()
        if failures:
            thread.join()
            self._loop, self._thread = None, None
            raise RuntimeError("FakeProvider failed to start") from failures[0]
        return self

    def stop(self) -> None:
        """Close every connection (hanging ones included) and stop serving; idempotent."""
        loop, thread, stop_requested = self._loop, self._thread, self._stop_requested
        if loop is None or thread is None or stop_requested is None:
            return
        loop.call_soon_threadsafe(stop_requested.set)
        thread.join(timeout=10)
        self._loop, self._thread = None, None

    def __enter__(self) -> Self:
        """Start unless already started (so ``with FakeProvider(...).start():`` works too)."""
        return self if self._thread is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError("FakeProvider has no port before start()")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # ----------------------------------------------------------------- behaviours

    def set_behavior(self, behavior: Behavior, model: str = ANY_MODEL) -> None:
        """From now on answer ``model`` (or every model) this way, after any queued ones."""
        with self._state:
            self._persistent[model] = behavior

    def queue(self, *behaviors: Behavior, model: str = ANY_MODEL) -> None:
        """Answer the next requests for ``model`` (or any model) with these, one each, in order.

        A request uses its model's queue, then the ``"*"`` queue, then its model's persistent
        behaviour, then the ``"*"`` one, then ``ok``.
        """
        with self._state:
            self._queued.setdefault(model, deque()).extend(behaviors)

    def choose(self, chooser: Callable[[JSONObject], Behavior | None] | None) -> None:
        """Pick each chat or embeddings answer from its request body (an agent's tool loop
        answers by what the conversation holds); None from ``chooser``, or no chooser: the
        queued and persistent behaviours as usual."""
        with self._state:
            self._chooser = chooser

    def _chosen(self, body: JSONObject) -> Behavior | None:
        with self._state:
            chooser = self._chooser
        return chooser(body) if chooser is not None else None

    def clear_behaviors(self) -> None:
        """Forget queued and persistent behaviours (``GET /models`` included)."""
        with self._state:
            self._queued.clear()
            self._persistent.clear()
            self._chooser = None
            self._models_behavior = Behavior.ok()

    def report_cost(self, usd: float | None) -> None:
        """Add ``"cost": usd`` to every ``usage`` sent (as OpenRouter does); None stops."""
        with self._state:
            self._reported_cost = usd

    def _with_cost(self, payload: JSONObject) -> JSONObject:
        with self._state:
            cost = self._reported_cost
        usage = payload.get("usage")
        if cost is None or not isinstance(usage, dict):
            return payload
        return {**payload, "usage": {**usage, "cost": cost}}

    def set_models_behavior(self, behavior: Behavior) -> None:
        """How ``GET /v1/models`` answers (discovery failures); ``Behavior.ok()`` restores it."""
        with self._state:
            self._models_behavior = behavior

    def set_models(self, models: Sequence[str]) -> None:
        """Change the served models (listed and accepted) at runtime."""
        with self._state:
            self._models = list(models)

    def release(self) -> None:
        """Let every request currently ``held`` succeed; later ones wait for the next call."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._open_gate)

    def _open_gate(self) -> None:
        if self._gate is not None:
            self._gate.set()
        self._gate = asyncio.Event()

    def _next_behavior(self, model: str) -> Behavior:
        with self._state:
            for key in (model, ANY_MODEL):
                pending = self._queued.get(key)
                if pending:
                    return pending.popleft()
            for key in (model, ANY_MODEL):
                if (behavior := self._persistent.get(key)) is not None:
                    return behavior
        return Behavior.ok()

    # ----------------------------------------------------------------- recordings

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received since the last ``clear()``, oldest first (a copy)."""
        with self._state:
            return list(self._counters.requests)

    @property
    def chat_requests(self) -> int:
        with self._state:
            return self._counters.chat_requests

    @property
    def embedding_requests(self) -> int:
        with self._state:
            return self._counters.embedding_requests

    @property
    def response_requests(self) -> int:
        """``POST /v1/responses`` requests (the calls about stored ones are not counted)."""
        with self._state:
            return self._counters.response_requests

    @property
    def completion_requests(self) -> int:
        with self._state:
            return self._counters.completion_requests

    @property
    def message_requests(self) -> int:
        """``POST /v1/messages`` requests (Anthropic's API, served natively)."""
        with self._state:
            return self._counters.message_requests

    @property
    def stored_responses(self) -> dict[str, JSONObject]:
        """The responses this provider holds, by id (a copy)."""
        with self._state:
            return {k: v[0] for k, v in self._stored.items()}

    @property
    def in_flight(self) -> int:
        """Chat and embedding requests being handled right now."""
        with self._state:
            return self._counters.in_flight

    @property
    def max_in_flight(self) -> int:
        with self._state:
            return self._counters.max_in_flight

    @property
    def disconnects(self) -> int:
        """Requests whose client went away before the answer was complete."""
        with self._state:
            return self._counters.disconnects

    def clear(self) -> None:
        """Forget recorded requests and reset counters (``max_in_flight`` to ``in_flight``)."""
        with self._state:
            in_flight = self._counters.in_flight
            self._counters = _Counters(in_flight=in_flight, max_in_flight=in_flight)

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Block until ``predicate()`` holds, re-checked on every request event.

        Raises ``TimeoutError``. From async code: ``await asyncio.to_thread(...)``.
        """
        with self._state:
            if not self._state.wait_for(predicate, timeout):
                raise TimeoutError(f"condition not met within {timeout} s")

    def wait_for_in_flight(self, count: int, timeout: float = 5.0) -> None:
        self.wait_until(lambda: self.in_flight == count, timeout)

    def wait_for_disconnects(self, count: int, timeout: float = 5.0) -> None:
        self.wait_until(lambda: self.disconnects >= count, timeout)

    # ----------------------------------------------------------------- server thread

    def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        ready: threading.Event,
        failures: list[BaseException],
    ) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve(sock, ready))
        except BaseException as exc:
            failures.append(exc)
        finally:
            ready.set()
            loop.close()

    async def _serve(self, sock: socket.socket, ready: threading.Event) -> None:
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._gate = asyncio.Event()
        app = web.Application()
        app.router.add_get("/v1/models", self._on_models)
        app.router.add_post("/v1/chat/completions", self._on_chat)
        app.router.add_post("/v1/embeddings", self._on_embeddings)
        app.router.add_post("/v1/responses", self._on_responses)
        app.router.add_post("/v1/completions", self._on_completions)
        app.router.add_post("/v1/messages", self._on_messages)
        app.router.add_post("/v1/messages/count_tokens", self._on_count_tokens)
        app.router.add_route("GET", "/v1/responses/{id}", self._on_stored)
        app.router.add_route("DELETE", "/v1/responses/{id}", self._on_stored)
        app.router.add_get("/v1/responses/{id}/input_items", self._on_stored)
        app.router.add_post("/v1/responses/{id}/cancel", self._on_stored)
        app.router.add_route("*", "/{tail:.*}", self._on_unknown)
        # handler_cancellation: a client that leaves cancels its handler, which is how
        # disconnects are seen; the short shutdown_timeout only backs up stop()'s aborts.
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
            ready.set()
            await self._stop_requested.wait()
            self._stopping = True
            for exchange in list(self._exchanges):
                self._abort(exchange)
        finally:
            await runner.cleanup()

    # ----------------------------------------------------------------- request handling

    async def _on_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, Endpoint.CHAT)

    async def _on_embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, Endpoint.EMBEDDINGS)

    async def _on_responses(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, Endpoint.RESPONSES)

    async def _on_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, Endpoint.COMPLETIONS)

    async def _on_messages(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, Endpoint.MESSAGES)

    async def _on_count_tokens(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, Endpoint.COUNT_TOKENS)

    async def _on_stored(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, Endpoint.STORED)

    async def _on_models(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, Endpoint.MODELS)

    async def _on_unknown(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, Endpoint.UNKNOWN)

    async def _handle(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        exchange = _Exchange(request)
        self._exchanges.add(exchange)
        counted = endpoint in (
            Endpoint.CHAT,
            Endpoint.EMBEDDINGS,
            Endpoint.RESPONSES,
            Endpoint.COMPLETIONS,
            Endpoint.MESSAGES,
        )
        self._begin(RecordedRequest(request.method, request.path, _headers(request), body, raw))
        if counted:
            self._enter(endpoint)
        try:
            return await self._respond(exchange, endpoint, body)
        except asyncio.CancelledError:
            self._note_peer_gone(exchange)
            raise
        except ConnectionResetError:
            # A write found the peer gone; the response is already prepared and
            # aiohttp finishes it quietly.
            self._note_peer_gone(exchange)
            assert exchange.response is not None
            return exchange.response
        finally:
            self._exchanges.discard(exchange)
            if counted:
                self._leave()

    async def _respond(
        self, exchange: _Exchange, endpoint: Endpoint, body: Any
    ) -> web.StreamResponse:
        request = exchange.request
        if endpoint is Endpoint.UNKNOWN or _API_OF.get(endpoint, "chat") not in self._apis:
            message = f"Unknown request URL: {request.method} {request.path}."
            return _error_json(404, message, "invalid_request_error", "unknown_url")
        if endpoint in (Endpoint.MESSAGES, Endpoint.COUNT_TOKENS):
            return await self._respond_messages(exchange, endpoint, body)
        expected = None if self._api_key is None else f"Bearer {self._api_key}"
        if expected is not None and request.headers.get("Authorization") != expected:
            return _error_json(
                401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            )
        if endpoint is Endpoint.MODELS:
            with self._state:
                behavior = self._models_behavior
            return await self._act(exchange, behavior, endpoint, {}, "")
        if endpoint is Endpoint.STORED:
            return await self._on_stored_response(exchange)
        if not isinstance(body, dict):
            return _error_json(
                400, "We could not parse the JSON body of your request.", "invalid_request_error"
            )
        model = body.get("model")
        if not isinstance(model, str):
            return _error_json(400, "You must provide a model parameter.", "invalid_request_error")
        with self._state:
            known = model in self._models
        if not known:
            return _error_json(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            )
        if endpoint is Endpoint.CHAT and not messages_of(body):
            return _error_json(400, "'messages' is a required property.", "invalid_request_error")
        if endpoint is Endpoint.EMBEDDINGS and not embedding_inputs(body.get("input")):
            return _error_json(400, "'input' is a required property.", "invalid_request_error")
        if endpoint is Endpoint.RESPONSES:
            return await self._respond_responses(exchange, body, model)
        if endpoint is Endpoint.COMPLETIONS:
            return await self._respond_completions(exchange, body, model)
        behavior = self._chosen(body) or self._next_behavior(model)
        return await self._act(exchange, behavior, endpoint, body, model)

    async def _prelude(
        self, exchange: _Exchange, behavior: Behavior, model: str
    ) -> web.StreamResponse | None:
        """What every endpoint does alike (delays, hangs, errors, garbage); None: go on."""
        if behavior.delay_s > 0:
            await asyncio.sleep(behavior.delay_s)
        kind = behavior.kind
        if kind is Kind.HANG:
            await asyncio.get_running_loop().create_future()  # ends only by cancellation
        if kind is Kind.HELD:
            assert self._gate is not None
            await self._gate.wait()
        if kind is Kind.ERROR:
            assert behavior.error_type is not None and behavior.message is not None
            headers = {} if behavior.retry_after is None else {"Retry-After": behavior.retry_after}
            message = behavior.message.replace("{model}", model)
            payload = error_body(message, behavior.error_type, behavior.error_code, behavior.param)
            return web.json_response(payload, status=behavior.status, headers=headers)
        if kind is Kind.GARBAGE:
            return web.Response(body=behavior.body, content_type="application/json")
        return None

    # ----------------------------------------------------------------- Responses API

    async def _respond_responses(
        self, exchange: _Exchange, body: JSONObject, model: str
    ) -> web.StreamResponse:
        previous: JSONObject | None = None
        previous_id = body.get("previous_response_id")
        if previous_id is not None:
            with self._state:
                found = self._stored.get(previous_id)
            if found is None:
                return web.json_response(
                    error_body(
                        f"Previous response with id '{previous_id}' not found.",
                        "invalid_request_error",
                        "previous_response_not_found",
                        "previous_response_id",
                    ),
                    status=404,
                )
            previous = found[0]
        # A stored prompt (a template reference) stands in for the input, as at OpenAI.
        if body.get("input") is None and not isinstance(body.get("prompt"), dict):
            return _error_json(400, "Missing required parameter: 'input'.", "invalid_request_error")
        behavior = self._next_behavior(model)
        early = await self._prelude(exchange, behavior, model)
        if early is not None:
            return early
        streaming = body.get("stream") is True
        response_id = f"resp_fake{self.port}_{next(self._ids)}"
        kind = behavior.kind
        if kind is Kind.EMPTY:
            if streaming:
                return await self._stream_raw(exchange, [])
            return web.Response(body=b"", content_type="application/json")
        if kind is Kind.INBAND_ERROR:
            message = behavior.message or "Upstream model crashed."
            if streaming:
                # ``after_chunks`` events of a normal answer first, then the error event.
                final = response_object(body, model, response_id, response_text(body, previous))
                frames = [typed_event(k, d) for k, d in response_events(final)]
                frames = frames[: behavior.after_chunks]
                event = {
                    "type": "error",
                    "code": "server_error",
                    "message": message,
                    "param": None,
                    "sequence_number": len(frames),
                }
                return await self._stream_raw(
                    exchange, [*frames, typed_event("error", event)], delay=behavior.chunk_delay_s
                )
            failed = response_object(body, model, response_id, "", status="failed")
            failed["error"] = {"code": "server_error", "message": message}
            return web.json_response(failed)
        final = response_object(body, model, response_id, response_text(body, previous))
        if body.get("store", True) is not False:
            with self._state:
                self._stored[response_id] = (final, input_items(body.get("input")))
        if streaming and kind is not Kind.JSON_FOR_STREAM:
            frames = [typed_event(k, data) for k, data in response_events(final)]
            if kind is Kind.STREAM_DIES:
                return await self._stream_raw(exchange, frames[: behavior.after_chunks], abort=True)
            return await self._stream_raw(exchange, frames, delay=behavior.chunk_delay_s)
        if kind is Kind.STREAM_DIES:
            return await self._truncate(exchange, final)
        return web.json_response(final)

    async def _on_stored_response(self, exchange: _Exchange) -> web.StreamResponse:
        request = exchange.request
        response_id = request.match_info["id"]
        with self._state:
            found = self._stored.get(response_id)
        if found is None:
            return web.json_response(
                error_body(
                    f"Response with id '{response_id}' not found.",
                    "invalid_request_error",
                    None,
                    "response_id",
                ),
                status=404,
            )
        early = await self._prelude(exchange, self._next_behavior(found[0]["model"]), "")
        if early is not None:
            return early
        response, items = found
        if request.path.endswith("/input_items"):
            limit = int(request.query.get("limit", "20"))
            page = items[:limit]
            return web.json_response(
                {
                    "object": "list",
                    "data": page,
                    "first_id": page[0]["id"] if page else None,
                    "last_id": page[-1]["id"] if page else None,
                    "has_more": len(items) > limit,
                }
            )
        if request.path.endswith("/cancel"):
            return web.json_response({**response, "status": "cancelled"})
        if request.method == "DELETE":
            with self._state:
                self._stored.pop(response_id, None)
            return web.json_response(
                {"id": response_id, "object": "response.deleted", "deleted": True}
            )
        return web.json_response(response)

    async def _stream_raw(
        self,
        exchange: _Exchange,
        frames: list[bytes],
        *,
        abort: bool = False,
        delay: float = 0.0,
    ) -> web.StreamResponse:
        """SSE with pre-framed events (typed ``event:`` lines kept)."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        exchange.response = response
        await response.prepare(exchange.request)
        for index, data in enumerate(frames):
            if index and delay > 0:
                await asyncio.sleep(delay)
            await response.write(data)
        if abort:
            self._abort(exchange)
            return response
        await response.write_eof()
        return response

    # ----------------------------------------------------------------- Anthropic's Messages API

    async def _respond_messages(
        self, exchange: _Exchange, endpoint: Endpoint, body: Any
    ) -> web.StreamResponse:
        """Anthropic's own API: the key in ``x-api-key``, errors in Anthropic's shape."""
        request = exchange.request
        if self._api_key is not None and request.headers.get("x-api-key") != self._api_key:
            payload = anthropic_payloads.error("authentication_error", "invalid x-api-key")
            return web.json_response(payload, status=401)
        if "anthropic-version" not in request.headers:
            payload = anthropic_payloads.error(
                "invalid_request_error", "anthropic-version: header is required"
            )
            return web.json_response(payload, status=400)
        model = body.get("model") if isinstance(body, dict) else None
        with self._state:
            known = model in self._models
        if not isinstance(body, dict) or not isinstance(model, str) or not known:
            payload = anthropic_payloads.error("not_found_error", f"model: {model}")
            return web.json_response(payload, status=404)
        if endpoint is Endpoint.COUNT_TOKENS:
            return web.json_response({"input_tokens": anthropic_payloads.input_tokens(body)})
        behavior = self._next_behavior(model)
        early = await self._prelude(exchange, behavior, model)
        if early is not None:
            return early
        answer = anthropic_payloads.message(body, model, f"msg_fake{next(self._ids)}")
        if body.get("stream") is True:
            frames = anthropic_payloads.message_stream(answer)
            if behavior.kind is Kind.STREAM_DIES:
                return await self._stream_raw(exchange, frames[: behavior.after_chunks], abort=True)
            return await self._stream_raw(exchange, frames, delay=behavior.chunk_delay_s)
        return web.json_response(answer)

    # ----------------------------------------------------------------- legacy completions

    async def _respond_completions(
        self, exchange: _Exchange, body: JSONObject, model: str
    ) -> web.StreamResponse:
        if body.get("prompt") is None:
            return _error_json(
                400, "Missing required parameter: 'prompt'.", "invalid_request_error"
            )
        behavior = self._next_behavior(model)
        early = await self._prelude(exchange, behavior, model)
        if early is not None:
            return early
        completion_id = f"cmpl-fake{next(self._ids)}"
        if body.get("stream") is True and behavior.kind is not Kind.JSON_FOR_STREAM:
            events = completion_chunks(body, model, completion_id)
            if behavior.kind is Kind.STREAM_DIES:
                events = events[: behavior.after_chunks]
                return await self._stream(exchange, events, done=False, abort=True)
            return await self._stream(exchange, events, done=True, delay=behavior.chunk_delay_s)
        return web.json_response(text_completion(body, model, completion_id))

    async def _act(
        self,
        exchange: _Exchange,
        behavior: Behavior,
        endpoint: Endpoint,
        body: JSONObject,
        model: str,
    ) -> web.StreamResponse:
        early = await self._prelude(exchange, behavior, model)
        if early is not None:
            return early
        streaming = endpoint is Endpoint.CHAT and body.get("stream") is True
        kind = behavior.kind
        if kind is Kind.EMPTY:
            if streaming:
                return await self._stream(exchange, [], done=False)
            return web.Response(body=b"", content_type="application/json")
        if kind is Kind.INBAND_ERROR:
            payload = error_body(behavior.message or "", "server_error", "upstream_error")
            if streaming:
                return await self._stream(exchange, [payload], done=False)
            return web.json_response(payload)

        completion_id = f"chatcmpl-fake{next(self._ids)}"
        if kind is Kind.SCRIPTED:
            if streaming:
                return await self._stream(
                    exchange, list(behavior.chunks), done=True, delay=behavior.chunk_delay_s
                )
            return web.json_response(behavior.answer)
        if kind is Kind.NO_CHOICES:
            if streaming:
                hollow = chat_chunks(body, model, completion_id)[0]
                return await self._stream(exchange, [{**hollow, "choices": []}], done=True)
            return web.json_response(self._hollow_payload(endpoint, body, model, completion_id))
        if streaming and kind is not Kind.JSON_FOR_STREAM:
            events = chat_chunks(body, model, completion_id)
            if kind is Kind.STREAM_DIES:
                events = events[: behavior.after_chunks]
                return await self._stream(
                    exchange, events, done=False, abort=True, delay=behavior.chunk_delay_s
                )
            if kind is Kind.USAGE_ON_CHOICES and not events[-1]["choices"]:
                usage_only = events.pop()
                events[-1] = {**events[-1], "usage": usage_only["usage"]}
            events = [self._with_cost(event) for event in events]
            return await self._stream(exchange, events, done=True, delay=behavior.chunk_delay_s)
        payload = self._with_cost(self._success_payload(endpoint, body, model, completion_id))
        if kind is Kind.STREAM_DIES:
            return await self._truncate(exchange, payload)
        return web.json_response(payload)

    def _success_payload(
        self, endpoint: Endpoint, body: JSONObject, model: str, completion_id: str
    ) -> JSONObject:
        if endpoint is Endpoint.CHAT:
            return chat_completion(body, model, completion_id)
        if endpoint is Endpoint.EMBEDDINGS:
            return embedding_list(body, model)
        with self._state:
            models = list(self._models)
        created = int(time.time())
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": created, "owned_by": self._owned_by}
                for m in models
            ],
        }

    def _hollow_payload(
        self, endpoint: Endpoint, body: JSONObject, model: str, completion_id: str
    ) -> JSONObject:
        payload = self._success_payload(endpoint, body, model, completion_id)
        if endpoint is Endpoint.CHAT:
            return {**payload, "choices": []}
        return {**payload, "data": []}

    async def _stream(
        self,
        exchange: _Exchange,
        events: list[JSONObject],
        *,
        done: bool,
        abort: bool = False,
        delay: float = 0.0,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        exchange.response = response
        await response.prepare(exchange.request)
        for index, event in enumerate(events):
            if index and delay > 0:
                await asyncio.sleep(delay)
            await response.write(sse_event(event))
        if abort:
            self._abort(exchange)
            return response
        if done:
            if delay > 0:
                await asyncio.sleep(delay)
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _truncate(self, exchange: _Exchange, payload: JSONObject) -> web.StreamResponse:
        data = json.dumps(payload).encode()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(data)
        exchange.response = response
        await response.prepare(exchange.request)
        await response.write(data[: len(data) // 2])
        self._abort(exchange)
        return response

    def _abort(self, exchange: _Exchange) -> None:
        exchange.closed_by_server = True
        transport = exchange.request.transport
        if transport is not None:
            transport.abort()

    # ----------------------------------------------------------------- shared counters

    def _begin(self, record: RecordedRequest) -> None:
        with self._state:
            self._counters.requests.append(record)
            self._state.notify_all()

    def _enter(self, endpoint: Endpoint) -> None:
        with self._state:
            counters = self._counters
            if endpoint is Endpoint.CHAT:
                counters.chat_requests += 1
            elif endpoint is Endpoint.RESPONSES:
                counters.response_requests += 1
            elif endpoint is Endpoint.COMPLETIONS:
                counters.completion_requests += 1
            elif endpoint is Endpoint.MESSAGES:
                counters.message_requests += 1
            else:
                counters.embedding_requests += 1
            counters.in_flight += 1
            counters.max_in_flight = max(counters.max_in_flight, counters.in_flight)
            self._state.notify_all()

    def _leave(self) -> None:
        with self._state:
            self._counters.in_flight -= 1
            self._state.notify_all()

    def _note_peer_gone(self, exchange: _Exchange) -> None:
        if self._stopping or exchange.closed_by_server or exchange.peer_gone:
            return
        exchange.peer_gone = True
        with self._state:
            self._counters.disconnects += 1
            self._state.notify_all()


def _headers(request: web.BaseRequest) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(request.headers))
