"""Relaying a native Anthropic Messages stream: typed events (``event: message_start`` ...
``message_stop``), forwarded as the provider sent them, except that ``message_start``
carries the model name the client asked for.

Before the first piece is sent, an ``error`` event or a stream with no event raises
``UpstreamFailure``, so the router can fail over.  After it, ``message_stop`` or the
provider's own ``error`` event ends the stream; a stream that breaks or ends without one
raises ``StreamFailed``, which the edge renders as Anthropic's ``event: error``.  Usage is
read from ``message_start`` (input and cache tokens) and ``message_delta`` (output tokens).
"""

from __future__ import annotations

from typing import Any

import orjson

from service.anthropic.stream import message_events
from service.routing.typed_events import TypedEventRelay
from service.upstream.client import UpstreamStream
from service.upstream.errors import (
    BAD_BODY,
    IN_BAND_ERROR,
    STREAM_AS_JSON_INVALID,
    UpstreamFailure,
    checked_json,
    in_band_failure,
)


def check_message(parsed: Any) -> UpstreamFailure | None:
    """A Messages API answer: a ``message`` object (an ``error`` one is a failure)."""
    if isinstance(parsed, dict) and parsed.get("type") == "error":
        return UpstreamFailure(IN_BAND_ERROR, f"upstream answer: {_message(parsed)}")
    failure = in_band_failure(parsed, "answer")
    if failure is not None:
        return failure
    if parsed.get("type") != "message" or not isinstance(parsed.get("content"), list):
        return UpstreamFailure(BAD_BODY, "upstream answered something that is not a message")
    return None


def chat_usage(usage: dict[str, Any]) -> dict[str, int]:
    """Anthropic's ``usage`` in the router's terms: every prompt token the provider
    processed (cache reads and writes included) and the output tokens."""
    prompt = sum(
        value
        for key in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
        if isinstance(value := usage.get(key), int) and not isinstance(value, bool)
    )
    output = usage.get("output_tokens")
    completion = output if isinstance(output, int) and not isinstance(output, bool) else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion}


class NativeEventRelay(TypedEventRelay):
    """Reads a provider's Messages stream and hands its events on."""

    incomplete = "upstream stream ended before the message was complete"

    def __init__(self, upstream: UpstreamStream, model: str) -> None:
        super().__init__(upstream)
        self._model = model
        self._anthropic_usage: dict[str, Any] = {}

    async def _from_json(self) -> list[bytes]:
        """A provider that answered the stream request with a whole message: its events."""
        parsed = checked_json(await self.upstream.read(), check_message, STREAM_AS_JSON_INVALID)
        self._add_usage(parsed.get("usage"))
        if isinstance(parsed.get("stop_reason"), str):
            self.finish_reasons = [parsed["stop_reason"]]
        self.done = True
        return [message_events({**parsed, "model": self._model})]

    def _handle(self, block: bytes, data: bytes | None, opening: bool) -> bytes | None:
        if data is None:
            return None  # a comment: nothing for the client
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamFailure(BAD_BODY, "upstream sent an event that is not JSON") from None
        if not isinstance(event, dict):
            raise UpstreamFailure(BAD_BODY, "upstream sent an event that is not a JSON object")
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                self._add_usage(message.get("usage"))
                event["message"] = {**message, "model": self._model}
                return b"event: message_start\ndata: " + orjson.dumps(event) + b"\n\n"
        elif kind == "message_delta":
            self._add_usage(event.get("usage"))
            delta = event.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                self.finish_reasons = [delta["stop_reason"]]
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            failure = UpstreamFailure(IN_BAND_ERROR, f"upstream error event: {_message(event)}")
            if opening:
                raise failure
            self.done = True
            self.failure = failure  # relayed as the provider sent it; counted as failed
        return block

    def _add_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self._anthropic_usage.update(
                (k, v) for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)
            )
            self.usage = chat_usage(self._anthropic_usage)


def _message(event: dict[str, Any]) -> str:
    error = event.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return "no message"
