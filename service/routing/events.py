"""Relaying a Responses API stream: typed events (``event: response.created`` ...
``response.completed``), forwarded as the provider sent them.

Before the first piece is sent, an ``error`` event, a failed response or a stream with no
event raises ``UpstreamFailure``, so the router can fail over.  After it, the provider's own
terminal event (``response.completed``, ``response.incomplete``, ``response.failed`` or
``error``) ends the stream; a stream that breaks or ends without one raises
``ResponseStreamFailed``, which the edge renders as the Responses API's ``event: error``.
No ``[DONE]`` is added: the Responses API has none.
"""

from __future__ import annotations

from typing import Any

import orjson

from service.errors import ResponseStreamFailed, StreamFailed
from service.routing.typed_events import TypedEventRelay
from service.upstream.client import UpstreamStream
from service.upstream.errors import (
    BAD_BODY,
    IN_BAND_ERROR,
    STREAM_AS_JSON_INVALID,
    UpstreamFailure,
    check_response,
    checked_json,
)
from service.upstream.sse import DONE

TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})
FAILED = frozenset({"response.failed", "error"})


def event_frame(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class EventRelay(TypedEventRelay):
    """Reads an upstream Responses API stream and hands its events on, unchanged."""

    incomplete = "upstream stream ended before the response was complete"

    def __init__(self, upstream: UpstreamStream) -> None:
        super().__init__(upstream)
        self.sequence = -1  # the last sequence_number relayed

    def _broken(self, failure: UpstreamFailure) -> StreamFailed:
        return ResponseStreamFailed(
            failure.message,
            code=f"upstream_{failure.reason}",
            sequence_number=self.sequence + 1,
        )

    def _handle(self, block: bytes, data: bytes | None, opening: bool) -> bytes | None:
        """The block to forward for one upstream event, or None; raises on a failure that
        the client has not seen a byte of yet, or on an event no client could read."""
        if data is None:
            return None  # a comment (keep-alive): nothing for the client
        if data == DONE:
            self.done = True  # some servers add one; the Responses API has none
            return None
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamFailure(BAD_BODY, "upstream sent an event that is not JSON") from None
        if not isinstance(event, dict):
            raise UpstreamFailure(BAD_BODY, "upstream sent an event that is not a JSON object")
        kind = event.get("type")
        if kind is None and event.get("error"):
            # A chat-style in-band error: not a Responses event any client could read.
            raise UpstreamFailure(IN_BAND_ERROR, f"upstream stream event: {_message(event)}")
        sequence = event.get("sequence_number")
        if isinstance(sequence, int) and not isinstance(sequence, bool):
            self.sequence = sequence
        response = event.get("response")
        if isinstance(response, dict):
            if self.response_id is None and isinstance(response.get("id"), str):
                self.response_id = response["id"]
            if response.get("usage"):
                self.usage = response["usage"]
        if kind in TERMINAL:
            self.done = True
            if isinstance(response, dict) and isinstance(response.get("status"), str):
                self.finish_reasons = [response["status"]]
            if kind in FAILED:
                failure = UpstreamFailure(IN_BAND_ERROR, f"upstream {kind}: {_message(event)}")
                if opening:
                    raise failure
                self.failure = failure  # relayed as the provider sent it; counted as failed
        return block

    async def _from_json(self) -> list[bytes]:
        """An upstream that answered the stream with a plain response: its events."""
        parsed = checked_json(await self.upstream.read(), check_response, STREAM_AS_JSON_INVALID)
        self.response_id = parsed["id"]
        self.usage = parsed.get("usage")
        self.done = True
        if isinstance(parsed.get("status"), str):
            self.finish_reasons = [parsed["status"]]
        created = {**parsed, "status": "in_progress", "output": [], "usage": None}
        return [
            event_frame(
                "response.created",
                {"type": "response.created", "sequence_number": 0, "response": created},
            ),
            event_frame(
                "response.completed",
                {"type": "response.completed", "sequence_number": 1, "response": parsed},
            ),
        ]


def _message(event: dict[str, Any]) -> str:
    """The message of an error event, a failed response or an in-band error object."""
    response = event.get("response")
    nested = response.get("error") if isinstance(response, dict) else None
    for holder in (event, event.get("error"), nested):
        if isinstance(holder, dict) and isinstance(holder.get("message"), str):
            return str(holder["message"])
    return "no message"
