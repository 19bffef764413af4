"""Anthropic's server-sent events, from a chat-completions stream or from a whole message.

A stream is ``message_start``; per content block ``content_block_start``, its deltas and
``content_block_stop`` (indexes from 0, one block open at a time, in the order the upstream
sends them); then ``message_delta`` (stop reason and the upstream's usage) and
``message_stop``.  Each frame is ``event: <type>\\ndata: <compact JSON>\\n\\n``.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson

from service.anthropic.answer import (
    ending,
    matched_stop,
    message_id,
    tool_id,
    usage,
)


def frame(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def error_event(error_type: str, message: str) -> bytes:
    """The event that ends a stream which failed after its first event."""
    return frame("error", {"type": "error", "error": {"type": error_type, "message": message}})


# A delta frame is its block's head (index and delta type known when the block opens), the
# piece as a JSON string, and this tail: one orjson call per upstream chunk.
_DELTA_HEAD = (
    'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
    '"delta":{"type":"%s","%s":'
)
_DELTA_TAIL = b"}}\n\n"
_DELTAS = {
    "text": ("text_delta", "text"),
    "thinking": ("thinking_delta", "thinking"),
    "tool_use": ("input_json_delta", "partial_json"),
}


@functools.lru_cache(maxsize=256)
def _delta_head(index: int, kind: str) -> bytes:
    return (_DELTA_HEAD % (index, *_DELTAS[kind])).encode()


def _empty_block(kind: str) -> dict[str, Any]:
    if kind == "thinking":
        return {"type": "thinking", "thinking": "", "signature": ""}
    return {"type": "text", "text": ""}


@functools.lru_cache(maxsize=256)
def _empty_start(index: int, kind: str) -> bytes:
    """``content_block_start`` of an empty text or thinking block."""
    started = {"type": "content_block_start", "index": index, "content_block": _empty_block(kind)}
    return frame("content_block_start", started)


def _start(message_id: str, model: str, usage: dict[str, int]) -> bytes:
    message: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 0},
    }
    return frame("message_start", {"type": "message_start", "message": message})


@functools.lru_cache(maxsize=256)
def _stop(index: int) -> bytes:
    return frame("content_block_stop", {"type": "content_block_stop", "index": index})


# The last event of every complete stream (the edge ends the response on it).
MESSAGE_STOP = frame("message_stop", {"type": "message_stop"})


def _finish(reason: str | None, sequence: str | None, usage: dict[str, int]) -> bytes:
    delta = {"stop_reason": reason, "stop_sequence": sequence}
    data = {"type": "message_delta", "delta": delta, "usage": usage}
    return frame("message_delta", data) + MESSAGE_STOP


class MessageStream:
    """Translates a chat-completions stream (parsed chunks, ``include_usage`` on) into
    Anthropic's events.

    Reasoning deltas go to a ``thinking`` block, content to a ``text`` block, each tool call
    to its own ``tool_use`` block whose ``partial_json`` pieces are the arguments' pieces
    exactly as received (they concatenate to the arguments).  A block opens at its first
    non-empty piece, so no block is empty.  A new tool call is one with another ``index``
    or another ``id`` than the open one; upstreams send tool calls one after another.

    ``message_delta`` goes out in ``end()``, after the final usage chunk: its usage is the
    upstream's (``input_tokens`` is the estimate only if the upstream reported none)."""

    __slots__ = (
        "_blocks",
        "_called",
        "_ended",
        "_finish",
        "_head",
        "_open",
        "_stop_sequence",
        "_tool_id",
        "_tool_index",
        "id",
        "model",
        "started",
        "usage",
    )

    def __init__(self, model: str, input_tokens_estimate: int) -> None:
        self.model = model
        self.id = ""
        self.started = False  # message_start sent
        self.usage: dict[str, int] = {
            "input_tokens": input_tokens_estimate,
            "output_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        }
        self._blocks = 0  # blocks opened so far; the open block is the last
        self._open: str | None = None  # the open block's type
        self._head = b""  # the open block's delta head
        self._tool_id: str | None = None  # the open tool call's upstream id and index
        self._tool_index: Any = None
        self._called = False
        self._finish: str | None = None
        self._stop_sequence: str | None = None
        self._ended = False

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return _stop(self._blocks - 1)

    def _begin(self, kind: str, block: dict[str, Any] | None) -> bytes:
        """Opens a block (``None``: an empty text or thinking block) after closing the open
        one."""
        closed = self._close()
        index = self._blocks
        self._blocks += 1
        self._open = kind
        self._head = _delta_head(index, kind)
        if block is None:
            return closed + _empty_start(index, kind)
        started = {"type": "content_block_start", "index": index, "content_block": block}
        return closed + frame("content_block_start", started)

    def _piece(self, kind: str, piece: str) -> bytes:
        opened = b"" if self._open == kind else self._begin(kind, None)
        return opened + self._head + orjson.dumps(piece) + _DELTA_TAIL

    def _tool_call(self, call: dict[str, Any]) -> bytes:
        index = call.get("index")
        call_id = call.get("id")
        function = call.get("function")
        if not isinstance(function, dict):
            function = {}
        out = b""
        if (
            self._open != "tool_use"
            or (index is not None and index != self._tool_index)
            or (call_id and self._tool_id and call_id != self._tool_id)
        ):
            self._tool_index = index
            self._tool_id = call_id or None
            self._called = True
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": tool_id(call_id, self._blocks),
                "name": function.get("name") or "",
                "input": {},
            }
            out = self._begin("tool_use", block)
        arguments = function.get("arguments")
        if arguments:
            if not isinstance(arguments, str):  # an object, from a provider that sends one
                arguments = orjson.dumps(arguments).decode()
            out += self._head + orjson.dumps(arguments) + _DELTA_TAIL
        return out

    def feed(self, chunk: dict[str, Any]) -> bytes:
        """The frames one parsed chat chunk makes (``b""`` if none); the first call also
        makes ``message_start``."""
        out = b"" if self.started else self._message_start(chunk.get("id"))
        choices = chunk.get("choices")
        # The relay forwards chunks unchecked: a malformed one is skipped, never a crash.
        if choices and type(choices) is list and type(choices[0]) is dict:
            choice = choices[0]
            delta = choice.get("delta")
            if delta and type(delta) is dict:
                thought = delta.get("reasoning_content") or delta.get("reasoning")
                if thought and type(thought) is str:
                    out += self._piece("thinking", thought)
                text = delta.get("content")
                if text and type(text) is str:
                    if self._open == "text":  # the common chunk: one delta frame
                        out += self._head + orjson.dumps(text) + _DELTA_TAIL
                    else:
                        out += self._piece("text", text)
                calls = delta.get("tool_calls")
                if calls and type(calls) is list:
                    for call in calls:
                        if type(call) is dict:
                            out += self._tool_call(call)
            finish = choice.get("finish_reason")
            if finish and type(finish) is str:
                self._finish = finish
                self._stop_sequence = matched_stop(choice)
        reported = chunk.get("usage")
        if reported:
            self.usage = usage(reported)
        return out

    def _message_start(self, upstream_id: Any) -> bytes:
        self.started = True
        self.id = message_id(upstream_id)
        return _start(self.id, self.model, self.usage)

    def end(self) -> bytes:
        """Closes the open block, then ``message_delta`` and ``message_stop``; ``b""`` when
        called again."""
        if self._ended:
            return b""
        self._ended = True
        out = b"" if self.started else self._message_start(None)
        reason, sequence = ending(self._finish, self._stop_sequence, self._called)
        return out + self._close() + _finish(reason, sequence, self.usage)


def message_events(message: dict[str, Any]) -> bytes:
    """A whole message (``from_chat``'s) as the events that reassemble into it: each block's
    whole text, reasoning or input in one delta."""
    out = [_start(message["id"], message["model"], message["usage"])]
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        start: dict[str, Any]
        if kind == "tool_use":
            piece = orjson.dumps(block["input"]).decode() if block["input"] else ""
            start = {**block, "input": {}}
        elif kind in _DELTAS:
            piece = block[kind]
            start = _empty_block(kind)
        else:
            piece, start = "", block
        out.append(
            frame(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
        )
        if piece:
            out.append(_delta_head(index, kind) + orjson.dumps(piece) + _DELTA_TAIL)
        if kind == "thinking" and block.get("signature"):
            signature = {"type": "signature_delta", "signature": block["signature"]}
            out.append(
                frame(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": signature},
                )
            )
        out.append(_stop(index))
    out.append(_finish(message["stop_reason"], message["stop_sequence"], message["usage"]))
    return b"".join(out)
