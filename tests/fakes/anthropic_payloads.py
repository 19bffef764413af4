"""Anthropic-shaped answers of the fake provider's native ``POST /v1/messages``, built
deterministically from the request body.

- reply: ``"echo: <text of the last user message>"``; ``input_tokens`` = words in the system
  prompt and every message, ``output_tokens`` = words in the reply; the answer reports
  ``cache_read_input_tokens: 3`` (so a test sees cache tokens counted).
- a stream is ``message_start``, one text block (one delta per word), ``message_delta`` with
  the usage, ``message_stop``; ``ping`` after ``message_start``.
"""

from __future__ import annotations

import json
import re
from typing import Any

JSONObject = dict[str, Any]
CACHE_READ_TOKENS = 3


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)
        )
    return ""


def reply_text(body: JSONObject) -> str:
    users = [m for m in body.get("messages") or [] if m.get("role") == "user"]
    return "echo: " + (_text(users[-1].get("content")) if users else "")


def input_tokens(body: JSONObject) -> int:
    words = len(_text(body.get("system")).split())
    return words + sum(len(_text(m.get("content")).split()) for m in body.get("messages") or [])


def message(body: JSONObject, model: str, message_id: str) -> JSONObject:
    text = reply_text(body)
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens(body),
            "output_tokens": len(text.split()),
            "cache_read_input_tokens": CACHE_READ_TOKENS,
            "cache_creation_input_tokens": 0,
        },
    }


def event(kind: str, data: JSONObject) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


def message_stream(answer: JSONObject) -> list[bytes]:
    """The events of ``answer`` as Anthropic streams it."""
    usage = answer["usage"]
    start = {**answer, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    text = answer["content"][0]["text"]
    frames = [
        event("message_start", {"message": start}),
        event("ping", {}),
        event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
    ]
    frames += [
        event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": word}})
        for word in re.findall(r"\S+\s*", text)
    ]
    frames += [
        event("content_block_stop", {"index": 0}),
        event(
            "message_delta",
            {
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        ),
        event("message_stop", {}),
    ]
    return frames


def error(error_type: str, text: str) -> JSONObject:
    return {"type": "error", "error": {"type": error_type, "message": text}}
