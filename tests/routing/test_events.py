"""The Responses API event stream: decoding whole events (names kept) and what the relay makes
of them before and after the first event reaches the client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from service.errors import ResponseStreamFailed
from service.routing.events import EventRelay
from service.upstream.errors import UpstreamFailure
from service.upstream.sse import EventDecoder

CREATED = (
    b'event: response.created\ndata: {"type":"response.created","sequence_number":0,'
    b'"response":{"id":"resp_1","status":"in_progress","usage":null}}\n\n'
)
DELTA = (
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
    b'"sequence_number":1,"delta":"hi"}\n\n'
)
COMPLETED = (
    b'event: response.completed\ndata: {"type":"response.completed","sequence_number":2,'
    b'"response":{"id":"resp_1","status":"completed","usage":{"input_tokens":3,'
    b'"output_tokens":1}}}\n\n'
)
ERROR = (
    b'event: error\ndata: {"type":"error","code":"server_error","message":"boom",'
    b'"sequence_number":1}\n\n'
)


def test_decoder_keeps_whole_events_across_chunks_and_line_endings() -> None:
    decoder = EventDecoder()
    raw = (CREATED + b": keep-alive\n\n" + DELTA).replace(b"\n", b"\r\n")
    events = []
    for i in range(0, len(raw), 7):  # boundaries everywhere, "\r\n" split included
        events += decoder.feed(raw[i : i + 7])
    assert [block for block, _ in events] == [CREATED, b": keep-alive\n\n", DELTA]
    assert events[1][1] is None  # a comment has no data
    assert events[0][1] is not None and events[0][1].startswith(b'{"type":"response.created"')


class _Upstream:
    """Just enough of UpstreamStream for the relay."""

    content_type = b"text/event-stream"

    def __init__(self, *pieces: bytes) -> None:
        self._pieces = pieces

    async def chunks(self) -> AsyncIterator[bytes]:
        for piece in self._pieces:
            yield piece

    async def read(self) -> bytes:
        return b"".join(self._pieces)

    def close(self) -> None:
        pass


def _relay(*pieces: bytes) -> EventRelay:
    return EventRelay(_Upstream(*pieces))  # type: ignore[arg-type]


async def _drain(relay: EventRelay) -> list[bytes]:
    out = await relay.first_frames()
    async for piece in relay.rest(float("inf")):
        out.append(piece)
    return out


def test_events_are_relayed_as_sent_and_usage_and_id_are_read() -> None:
    relay = _relay(CREATED, DELTA + COMPLETED)
    out = asyncio.run(_drain(relay))
    assert b"".join(out) == CREATED + DELTA + COMPLETED
    assert relay.response_id == "resp_1"
    assert relay.usage == {"input_tokens": 3, "output_tokens": 1}
    assert relay.failure is None


def test_an_error_before_anything_was_sent_fails_over() -> None:
    with pytest.raises(UpstreamFailure):
        asyncio.run(_relay(CREATED + ERROR).first_frames())
    with pytest.raises(UpstreamFailure):
        asyncio.run(_relay(b"").first_frames())


def test_after_the_first_event_a_provider_error_is_relayed_and_a_cut_raises() -> None:
    relayed = _relay(CREATED, ERROR)
    out = asyncio.run(_drain(relayed))
    assert out == [CREATED, ERROR] and relayed.failure is not None

    cut = _relay(CREATED, DELTA)
    with pytest.raises(ResponseStreamFailed) as caught:
        asyncio.run(_drain(cut))
    assert caught.value.sequence_number == 2  # after the last event relayed
