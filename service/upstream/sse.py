"""Server-sent events: split an upstream byte stream into event payloads, and frame ours."""

from __future__ import annotations

DONE = b"[DONE]"


class SSEDecoder:
    """Incremental decoder: feed raw bytes, get the ``data`` payload of each complete event.

    Multi-line data fields are joined with newlines; comments and other fields are dropped.
    """

    __slots__ = ("_after_cr", "_buffer")

    def __init__(self) -> None:
        self._buffer = b""
        self._after_cr = False

    def feed(self, chunk: bytes) -> list[bytes]:
        if not chunk:
            return []
        if self._after_cr and chunk.startswith(b"\n"):
            # The "\r" that ended the previous chunk already ended this line: "\r\n" is one
            # line ending even when a chunk boundary falls between its two bytes.
            chunk = chunk[1:]
        self._after_cr = chunk.endswith(b"\r")
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[bytes] = []
        start = 0
        while True:
            end = buffer.find(b"\n\n", start)
            if end < 0:
                break
            payload = _data_of(buffer[start:end])
            if payload is not None:
                events.append(payload)
            start = end + 2
        self._buffer = buffer[start:]
        return events

    def flush(self) -> list[bytes]:
        """Whatever complete event is left when the stream ends without a blank line."""
        rest, self._buffer = self._buffer, b""
        payload = _data_of(rest.strip(b"\n"))
        return [payload] if payload is not None else []


def _data_of(block: bytes) -> bytes | None:
    if block.startswith(b"data:") and b"\n" not in block:
        return block[5:].lstrip(b" ")
    parts = [
        line[5:].lstrip(b" ") if line.startswith(b"data:") else None for line in block.split(b"\n")
    ]
    data = [p for p in parts if p is not None]
    return b"\n".join(data) if data else None


def frame(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


DONE_FRAME = frame(DONE)


class EventDecoder:
    """Incremental decoder keeping whole events: feed raw bytes, get ``(block, data)`` per
    complete event, where ``block`` is the event as sent (its ``event:`` line included,
    line endings made ``\\n``) and ``data`` its data payload (None for a comment-only block).

    The Responses API names its events (``event: response.output_text.delta``): relaying
    the block keeps that name exactly as the provider sent it."""

    __slots__ = ("_after_cr", "_buffer")

    def __init__(self) -> None:
        self._buffer = b""
        self._after_cr = False

    def feed(self, chunk: bytes) -> list[tuple[bytes, bytes | None]]:
        if not chunk:
            return []
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._after_cr = chunk.endswith(b"\r")
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[tuple[bytes, bytes | None]] = []
        start = 0
        while True:
            end = buffer.find(b"\n\n", start)
            if end < 0:
                break
            block = buffer[start:end]
            if block:
                events.append((block + b"\n\n", _data_of(block)))
            start = end + 2
        self._buffer = buffer[start:]
        return events

    def flush(self) -> list[tuple[bytes, bytes | None]]:
        """The event left when the stream ends without its blank line."""
        rest, self._buffer = self._buffer.strip(b"\n"), b""
        return [(rest + b"\n\n", _data_of(rest))] if rest else []
