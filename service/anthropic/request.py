"""A Messages API request: its checks, its chat translation and its token estimate.

Placeholder until the full translation lands: text, system and tools only."""

from __future__ import annotations

from typing import Any

import orjson

from service import errors


def validate(body: Any) -> None:
    if not isinstance(body, dict):
        raise errors.bad_request("Request body must be a JSON object.")
    if not isinstance(body.get("model"), str):
        raise errors.bad_request("'model' is required and must be a string.", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise errors.bad_request("'messages' must be a non-empty array.", param="messages")
    cap = body.get("max_tokens")
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
        raise errors.bad_request("'max_tokens' must be a positive integer.", param="max_tokens")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _text(system)})
    for m in body["messages"]:
        messages.append({"role": m.get("role"), "content": _text(m.get("content"))})
    chat: dict[str, Any] = {
        "model": body.get("model"),
        "messages": messages,
        "max_tokens": body["max_tokens"],
    }
    if body.get("tools"):
        chat["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.get("name"),
                    "description": t.get("description", ""),
                    "parameters": t.get("input_schema", {}),
                },
            }
            for t in body["tools"]
        ]
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def estimate_input_tokens(body: dict[str, Any]) -> int:
    return len(orjson.dumps(body)) // 4 + 1
