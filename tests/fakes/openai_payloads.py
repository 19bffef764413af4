"""OpenAI-shaped answers, built deterministically from the request body.

- chat reply: ``"echo: <text of the last user message>"``; ``prompt_tokens`` = words in all
  messages, ``completion_tokens`` = words in the reply (2 for a tool call); see ``chat_usage``.
- a request with ``tools`` gets a ``tool_calls`` message calling the first tool with ``"{}"``.
- embeddings: ``fake_embedding(text)`` per input (``EMBEDDING_DIM`` floats), ``prompt_tokens`` =
  words.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import time
from typing import Any

JSONObject = dict[str, Any]

EMBEDDING_DIM = 8


def _text_of(content: Any) -> str:
    """Text of a message ``content``: a string or a list of ``{"type": "text"}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return " ".join(p for p in parts if isinstance(p, str))
    return ""


def messages_of(body: JSONObject) -> list[JSONObject]:
    """The well-formed entries of ``body["messages"]``."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return []
    return [m for m in messages if isinstance(m, dict)]


def reply_text(body: JSONObject) -> str:
    """The assistant text the fake answers to a chat request ``body``."""
    users = [m for m in messages_of(body) if m.get("role") == "user"]
    return "echo: " + (_text_of(users[-1].get("content")) if users else "")


def _first_tool_name(body: JSONObject) -> str | None:
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools or not isinstance(tools[0], dict):
        return None
    function = tools[0].get("function")
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else "tool"


def chat_usage(body: JSONObject) -> dict[str, int]:
    """The ``usage`` the fake reports for a chat request ``body``."""
    prompt = sum(len(_text_of(m.get("content")).split()) for m in messages_of(body))
    completion = 2 if _first_tool_name(body) is not None else len(reply_text(body).split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _tool_call(name: str, call_id: str) -> JSONObject:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}


def chat_completion(body: JSONObject, model: str, completion_id: str) -> JSONObject:
    """A complete ``chat.completion`` answer to ``body``."""
    tool = _first_tool_name(body)
    message: JSONObject
    if tool is None:
        message = {"role": "assistant", "content": reply_text(body)}
    else:
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [_tool_call(tool, f"call_{completion_id}")],
        }
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "stop" if tool is None else "tool_calls",
            }
        ],
        "usage": chat_usage(body),
    }


def _wants_usage(body: JSONObject) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def chat_chunks(body: JSONObject, model: str, completion_id: str) -> list[JSONObject]:
    """The ``chat.completion.chunk`` events (without [DONE]) streamed in answer to ``body``.

    A role chunk, one chunk per word (their contents concatenate to ``reply_text``), a final
    chunk with ``finish_reason``, then the usage chunk only if ``stream_options.include_usage``.
    """
    created = int(time.time())
    with_usage = _wants_usage(body)

    def chunk(delta: JSONObject, finish_reason: str | None = None) -> JSONObject:
        event: JSONObject = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if with_usage:
            event["usage"] = None
        return event

    tool = _first_tool_name(body)
    events = [chunk({"role": "assistant", "content": "" if tool is None else None})]
    if tool is None:
        events += [chunk({"content": piece}) for piece in re.findall(r"\S+\s*", reply_text(body))]
        events.append(chunk({}, "stop"))
    else:
        call = _tool_call(tool, f"call_{completion_id}")
        call["function"]["arguments"] = ""
        events.append(chunk({"tool_calls": [{"index": 0, **call}]}))
        events.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}))
        events.append(chunk({}, "tool_calls"))
    if with_usage:
        events.append(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": chat_usage(body),
            }
        )
    return events


def fake_embedding(text: str) -> list[float]:
    """The deterministic vector the fake returns for ``text`` (``EMBEDDING_DIM`` floats)."""
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 127.5 - 1.0, 6) for b in digest[:EMBEDDING_DIM]]


def embedding_inputs(value: Any) -> list[str]:
    """The texts of an embeddings ``input``: a string, strings, token ids or lists of them."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        return []
    if all(isinstance(v, int) for v in value):
        return [" ".join(map(str, value))]
    return [
        v if isinstance(v, str) else " ".join(map(str, v)) if isinstance(v, list) else str(v)
        for v in value
    ]


def embedding_list(body: JSONObject, model: str) -> JSONObject:
    """An OpenAI embeddings answer; honours ``encoding_format: base64`` (float32 LE)."""
    texts = embedding_inputs(body.get("input"))
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, text in enumerate(texts):
        vector = fake_embedding(text)
        encoded: list[float] | str = vector
        if as_base64:
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(len(text.split()) for text in texts)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def error_body(
    message: str, error_type: str, code: str | None = None, param: str | None = None
) -> JSONObject:
    """An OpenAI error object."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def sse_event(event: JSONObject) -> bytes:
    """One SSE ``data:`` event."""
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"
