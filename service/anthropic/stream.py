"""Chat completion chunks as Anthropic stream events.  Placeholder: text and tool calls."""

from __future__ import annotations

from typing import Any

import orjson

from service.anthropic.answer import stop_reason


def event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


class MessageStream:
    def __init__(self, model: str, input_tokens_estimate: int) -> None:
        self._model = model
        self._estimate = input_tokens_estimate
        self._started = False
        self._block = -1
        self._kind: str | None = None
        self._tools: dict[int, int] = {}
        self._stop: str | None = None
        self.usage: dict[str, int] = {"input_tokens": 0, "output_tokens": 0}

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._block += 1
        self._kind = kind
        return out + event("content_block_start", {"index": self._block, "content_block": block})

    def _close(self) -> bytes:
        if self._kind is None:
            return b""
        self._kind = None
        return event("content_block_stop", {"index": self._block})

    def feed(self, chunk: dict[str, Any]) -> bytes:
        out = b""
        if not self._started:
            self._started = True
            message: dict[str, Any] = {
                "id": "msg_" + str(chunk.get("id", "")),
                "type": "message",
                "role": "assistant",
                "model": self._model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": self._estimate, "output_tokens": 0},
            }
            out += event("message_start", {"message": message})
        usage = chunk.get("usage")
        if usage:
            self.usage = {
                "input_tokens": usage.get("prompt_tokens", 0),
                "output_tokens": usage.get("completion_tokens", 0),
            }
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if self._kind != "text":
                    out += self._open("text", {"type": "text", "text": ""})
                out += event(
                    "content_block_delta",
                    {
                        "index": self._block,
                        "delta": {"type": "text_delta", "text": delta["content"]},
                    },
                )
            for call in delta.get("tool_calls") or []:
                function = call.get("function") or {}
                index = call.get("index", 0)
                if index not in self._tools:
                    block = {
                        "type": "tool_use",
                        "id": call.get("id"),
                        "name": function.get("name"),
                        "input": {},
                    }
                    out += self._open("tool", block)
                    self._tools[index] = self._block
                if function.get("arguments"):
                    out += event(
                        "content_block_delta",
                        {
                            "index": self._block,
                            "delta": {
                                "type": "input_json_delta",
                                "partial_json": function["arguments"],
                            },
                        },
                    )
            if choice.get("finish_reason"):
                self._stop = stop_reason(choice["finish_reason"])
        return out

    def end(self) -> bytes:
        return (
            self._close()
            + event(
                "message_delta",
                {"delta": {"stop_reason": self._stop, "stop_sequence": None}, "usage": self.usage},
            )
            + event("message_stop", {})
        )


def message_events(message: dict[str, Any]) -> bytes:
    out = event("message_start", {"message": {**message, "content": [], "stop_reason": None}})
    for index, block in enumerate(message.get("content") or []):
        if block.get("type") == "text":
            out += event(
                "content_block_start",
                {"index": index, "content_block": {"type": "text", "text": ""}},
            )
            out += event(
                "content_block_delta",
                {"index": index, "delta": {"type": "text_delta", "text": block["text"]}},
            )
        else:
            out += event(
                "content_block_start", {"index": index, "content_block": {**block, "input": {}}}
            )
            partial = orjson.dumps(block.get("input", {})).decode()
            out += event(
                "content_block_delta",
                {"index": index, "delta": {"type": "input_json_delta", "partial_json": partial}},
            )
        out += event("content_block_stop", {"index": index})
    out += event(
        "message_delta",
        {
            "delta": {"stop_reason": message.get("stop_reason"), "stop_sequence": None},
            "usage": message.get("usage", {}),
        },
    )
    return out + event("message_stop", {})


def error_event(error_type: str, message: str) -> bytes:
    return event("error", {"error": {"type": error_type, "message": message}})
