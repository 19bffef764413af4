"""The incremental SSE decoder used on upstream streams, and our own framing."""

from __future__ import annotations

from service.upstream.sse import DONE, DONE_FRAME, SSEDecoder, frame


def feed_all(decoder: SSEDecoder, *chunks: bytes) -> list[bytes]:
    events: list[bytes] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events


def test_whole_events_in_one_chunk() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a":1}\n\ndata: {"b":2}\n\n') == [b'{"a":1}', b'{"b":2}']


def test_event_split_across_chunks_at_every_byte() -> None:
    stream = b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n'
    decoder = SSEDecoder()
    events = feed_all(decoder, *(stream[i : i + 1] for i in range(len(stream))))
    assert events == [b'{"a":1}', b'{"b":2}', DONE]
    assert decoder.flush() == []


def test_partial_event_is_held_until_the_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a"') == []
    assert decoder.feed(b":1}\n") == []
    assert decoder.feed(b"\n") == [b'{"a":1}']


def test_crlf_line_endings() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: one\r\n\r\ndata: two\r\n\r\n") == [b"one", b"two"]


def test_crlf_split_between_chunks_does_not_end_the_event_early() -> None:
    decoder = SSEDecoder()
    events = feed_all(decoder, b"data: a\r", b"\ndata: b\r", b"", b"\n\r", b"\n")
    assert events == [b"a\nb"]


def test_lone_cr_line_endings() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: one\r\rdata: two\r\r") == [b"one", b"two"]


def test_multi_line_data_is_joined_with_newlines() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: first\ndata: second\ndata:third\n\n") == [b"first\nsecond\nthird"]


def test_comments_and_other_fields_are_ignored() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(
        b": keep-alive\n\nevent: message\nid: 7\nretry: 100\ndata: payload\n\n: ping\n\n"
    )
    assert events == [b"payload"]


def test_flush_returns_a_final_event_without_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: one\n\ndata: last") == [b"one"]
    assert decoder.flush() == [b"last"]
    assert decoder.flush() == []


def test_flush_with_trailing_single_newline() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: last\n") == []
    assert decoder.flush() == [b"last"]


def test_flush_of_a_comment_is_nothing() -> None:
    decoder = SSEDecoder()
    decoder.feed(b": still alive")
    assert decoder.flush() == []


def test_frame() -> None:
    assert frame(b'{"x":1}') == b'data: {"x":1}\n\n'
    assert DONE_FRAME == b"data: [DONE]\n\n"
    assert SSEDecoder().feed(frame(b'{"x":1}') + DONE_FRAME) == [b'{"x":1}', DONE]
