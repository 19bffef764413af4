"""Relaying an upstream SSE stream to the client.

Before the first frame is sent a failure raises ``UpstreamFailure`` so the router can fail
over; after it, a failure raises ``StreamFailed``, which the edge turns into the terminal
``data: {"error": ...}`` event.  Every relayed
stream ends with ``data: [DONE]`` or such an event, never silently.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Generic, Protocol, TypeVar

import orjson

from service.apis import Api
from service.errors import StreamFailed
from service.upstream.client import UpstreamStream
from service.upstream.errors import (
    BAD_BODY,
    STREAM_AS_JSON_INVALID,
    STREAM_BROKEN,
    TIMEOUT,
    UpstreamFailure,
    check_completion,
    checked_json,
    in_band_failure,
)
from service.upstream.sse import DONE, SSEDecoder, frame
from service.upstream.sse import DONE_FRAME as DONE_FRAME  # the edge ends streams on it


class Relay(Protocol):
    """What the router needs of a stream relay (chat and completions here, the Responses
    API's typed events in ``events.py``)."""

    upstream: UpstreamStream
    usage: Any
    failure: UpstreamFailure | None
    response_id: str | None  # the id a provider stores the answer under (Responses API)
    finish_reasons: list[str]  # as the stream reported them, one per choice that finished

    async def first_frames(self) -> list[bytes]: ...

    def rest(self, deadline: float) -> AsyncIterator[bytes]: ...


Event = TypeVar("Event")


class _Decoder(Protocol[Event]):
    def feed(self, chunk: bytes) -> list[Event]: ...

    def flush(self) -> list[Event]: ...


class UpstreamEvents(Generic[Event]):
    """What every relay holds (the state ``Relay`` names), and its reading: the upstream's
    chunks through ``decoder``, the events of one read at a time.  A subclass relays them."""

    response_id: str | None = None

    def __init__(self, upstream: UpstreamStream, decoder: _Decoder[Event]) -> None:
        self.upstream = upstream
        self._decoder = decoder
        self._chunks = upstream.chunks().__aiter__()
        self.usage: Any = None
        self.failure: UpstreamFailure | None = None
        self.finish_reasons: list[str] = []  # one per choice that finished (traces)
        self.done = False

    async def _next_events(self) -> list[Event] | None:
        """The events of the next upstream read(s); None when the stream has ended."""
        while True:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                rest = self._decoder.flush()
                return rest or None
            events = self._decoder.feed(chunk)
            if events:
                return events


class StreamRelay(UpstreamEvents[bytes]):
    """Reads an upstream SSE stream and turns it into frames for the client."""

    def __init__(
        self, upstream: UpstreamStream, client_wants_usage: bool, api: str = Api.CHAT
    ) -> None:
        super().__init__(upstream, SSEDecoder())
        self._client_wants_usage = client_wants_usage
        self._api = api
        self.finished = False  # saw a finish_reason
        self.has_choices = False  # saw a chunk with choices: the answer has begun

    async def first_frames(self) -> list[bytes]:
        """Frames up to the end of the upstream read holding the first chunk with choices
        (with [DONE] when the stream already ended); raises UpstreamFailure before it."""
        if b"event-stream" not in self.upstream.content_type:
            return await self._from_json()
        # Chunks without choices (usage, content-filter notes) are no answer yet: a stream
        # made only of them is empty and fails over like an empty JSON body.
        frames: list[bytes] = []
        while not self.has_choices:
            payloads = await self._next_events()
            if payloads is None:
                raise UpstreamFailure(BAD_BODY, "upstream stream ended before any content")
            for payload in payloads:
                out = self._handle(payload)
                if out is not None:
                    frames.append(out)
                if self.done:
                    break
            if self.done:
                if not self.has_choices:
                    raise UpstreamFailure(BAD_BODY, "upstream stream ended with no content")
                frames.append(self._closing())
        return frames

    async def _from_json(self) -> list[bytes]:
        parsed = checked_json(await self.upstream.read(), check_completion, STREAM_AS_JSON_INVALID)
        self.usage = parsed.get("usage")
        self.done = self.finished = True
        self.finish_reasons = [
            str(c["finish_reason"])
            for c in parsed["choices"]
            if isinstance(c, dict) and c.get("finish_reason")
        ]
        chunk: dict[str, Any]
        if self._api == Api.COMPLETIONS:
            # A legacy completion's choices are already in chunk form (``text``).
            chunk = {k: v for k, v in parsed.items() if k != "usage"}
        else:
            chunk = {
                "id": parsed.get("id"),
                "object": "chat.completion.chunk",
                "created": parsed.get("created"),
                "model": parsed.get("model"),
                "choices": [
                    {
                        "index": c.get("index", i),
                        "delta": c.get("message") or {},
                        "finish_reason": c.get("finish_reason"),
                    }
                    for i, c in enumerate(parsed["choices"])
                    if isinstance(c, dict)
                ],
            }
        frames = [frame(orjson.dumps(chunk))]
        if self._client_wants_usage and self.usage is not None:
            usage_chunk = {**chunk, "choices": [], "usage": self.usage}
            frames.append(frame(orjson.dumps(usage_chunk)))
        frames.append(DONE_FRAME)
        return frames

    def _handle(self, payload: bytes) -> bytes | None:
        """The frame to forward for one upstream event, or None; raises on an error event."""
        if payload == DONE:
            self.done = True
            return None
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise UpstreamFailure(BAD_BODY, "upstream sent an event that is not JSON") from None
        failure = in_band_failure(event, "stream event")
        if failure is not None:
            raise failure
        choices = event.get("choices")
        usage = event.get("usage")
        if usage:
            self.usage = usage
        if choices and isinstance(choices, list):
            self.has_choices = True
            for choice in choices:
                if isinstance(choice, dict) and choice.get("finish_reason"):
                    self.finished = True
                    self.finish_reasons.append(str(choice["finish_reason"]))
        return self._forward(event, payload, choices, usage)

    def _forward(self, event: Any, payload: bytes, choices: Any, usage: Any) -> bytes | None:
        """What the client gets of one parsed upstream chunk (``payload`` its raw bytes)."""
        if usage and not self._client_wants_usage:
            if not choices:
                return None
            # Some upstreams (LiteLLM's proxy) put the usage on a chunk with choices: the
            # client did not ask for it, so it gets the choices only.
            del event["usage"]
            payload = orjson.dumps(event)
        return frame(payload)

    def _closing(self) -> bytes:
        """What ends a complete stream."""
        return DONE_FRAME

    async def rest(self, deadline: float) -> AsyncIterator[bytes]:
        """Everything after the first frames, one piece per upstream read (fewer writes to
        the client), ending with [DONE] or an error event."""
        if self.done:  # the first frames already hold the whole answer and its [DONE]
            return
        batch: list[bytes] = []
        try:
            while not self.done:
                if time.monotonic() > deadline:
                    raise UpstreamFailure(TIMEOUT, "the request deadline passed mid-stream")
                payloads = await self._next_events()
                if payloads is None:
                    if self.finished:
                        break  # some providers end without [DONE]; the answer is complete
                    raise UpstreamFailure(
                        STREAM_BROKEN, "upstream stream ended before the answer was complete"
                    )
                for payload in payloads:
                    out = self._handle(payload)
                    if out is not None:
                        batch.append(out)
                    if self.done:
                        break
                if batch and not self.done:
                    yield b"".join(batch)
                    batch = []
        except UpstreamFailure as failure:
            self.failure = failure
            if batch:
                yield b"".join(batch)
            # The edge ends the stream with this error's event.
            raise StreamFailed(failure.message, code=f"upstream_{failure.reason}") from None
        batch.append(self._closing())
        yield b"".join(batch)
