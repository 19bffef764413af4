"""A chat completion answer as an Anthropic message.  Placeholder: text and tool calls."""

from __future__ import annotations

from typing import Any

import orjson

_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def stop_reason(finish_reason: str | None) -> str | None:
    return None if finish_reason is None else _STOP.get(finish_reason, "end_turn")


def from_chat(completion: dict[str, Any], model: str) -> dict[str, Any]:
    choice = completion["choices"][0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": orjson.loads(function.get("arguments") or "{}"),
            }
        )
    usage = completion.get("usage") or {}
    return {
        "id": "msg_" + str(completion.get("id", "")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason")),
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.get("prompt_tokens", 0),
            "output_tokens": usage.get("completion_tokens", 0),
        },
    }
