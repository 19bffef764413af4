"""Relaying a stream of typed SSE events (``event: T`` / ``data: {...}``) as the provider sent
them: the batching that the Responses API's relay (``events.py``) and Anthropic's native
Messages relay (``anthropic_events.py``) share; the reading, one upstream read's events at a
time, is every relay's (``relay.UpstreamEvents``).

Before the first piece is sent, a failure raises ``UpstreamFailure`` (the router fails over);
after it, a stream that breaks or ends before its terminal event raises what ``_broken``
makes of the failure, which the edge renders as the API's own error event.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from service.errors import StreamFailed
from service.routing.relay import UpstreamEvents
from service.upstream.client import UpstreamStream
from service.upstream.errors import BAD_BODY, STREAM_BROKEN, TIMEOUT, UpstreamFailure
from service.upstream.sse import EventDecoder


class TypedEventRelay(UpstreamEvents[tuple[bytes, bytes | None]]):
    """Reads an upstream stream of typed events; a subclass says what each event is
    (``_handle``), which failure ends a broken stream (``_broken``), and how a plain JSON
    answer to the stream request is told as events (``_from_json``)."""

    incomplete = "upstream stream ended before its last event"  # a subclass names it

    def __init__(self, upstream: UpstreamStream) -> None:
        super().__init__(upstream, EventDecoder())

    async def first_frames(self) -> list[bytes]:
        """The events of the upstream read(s) holding the first event; raises
        UpstreamFailure when any of them fails (nothing has reached the client yet)."""
        if b"event-stream" not in self.upstream.content_type:
            return await self._from_json()
        frames: list[bytes] = []
        while not frames:
            events = await self._next_events()
            if events is None:
                raise UpstreamFailure(BAD_BODY, "upstream stream ended before any event")
            for block, data in events:
                out = self._handle(block, data, opening=True)
                if out is not None:
                    frames.append(out)
                if self.done:
                    break
        return frames

    async def rest(self, deadline: float) -> AsyncIterator[bytes]:
        """Everything after the first frames, one piece per upstream read, up to and
        including the terminal event."""
        batch: list[bytes] = []
        try:
            while not self.done:
                if time.monotonic() > deadline:
                    raise UpstreamFailure(TIMEOUT, "the request deadline passed mid-stream")
                events = await self._next_events()
                if events is None:
                    raise UpstreamFailure(STREAM_BROKEN, self.incomplete)
                for block, data in events:
                    out = self._handle(block, data, opening=False)
                    if out is not None:
                        batch.append(out)
                    if self.done:
                        break
                if batch:
                    yield b"".join(batch)
                    batch = []
        except UpstreamFailure as failure:
            self.failure = failure
            if batch:
                yield b"".join(batch)
            raise self._broken(failure) from None

    def _handle(self, block: bytes, data: bytes | None, opening: bool) -> bytes | None:
        """The block to forward for one event (None: nothing); raises UpstreamFailure."""
        raise NotImplementedError

    def _broken(self, failure: UpstreamFailure) -> StreamFailed:
        """What ends the client's stream after ``failure``."""
        return StreamFailed(failure.message, code=f"upstream_{failure.reason}")

    async def _from_json(self) -> list[bytes]:
        """The events of an upstream that answered the stream request with plain JSON."""
        raise NotImplementedError
