"""Responses API and legacy completions answers of the fake provider, built deterministically.

- a response's text: ``"echo: <text of the last user input>"``, followed by
  ``" | previous: <text of the previous response>"`` when the request continues a stored one
  (``previous_response_id``), so a test can tell the conversation was found;
  ``input_tokens`` = words of the input, ``output_tokens`` = words of the text.
- streamed as OpenAI does: ``response.created``, ``response.in_progress``,
  ``response.output_item.added``, ``response.content_part.added``, one
  ``response.output_text.delta`` per word, the ``.done`` events, ``response.completed``.
- a legacy completion: ``"echo: <prompt>"``; ``prompt_tokens`` = words of the prompt.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

JSONObject = dict[str, Any]


def input_text(value: Any) -> str:
    """The text of the last user input of a Responses ``input`` (a string or items)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        return ""
    for item in reversed(value):
        if isinstance(item, str):
            return item
        if isinstance(item, dict) and item.get("role", "user") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                parts = [p.get("text") for p in content if isinstance(p, dict)]
                return " ".join(p for p in parts if isinstance(p, str))
    return ""


def input_items(value: Any) -> list[JSONObject]:
    """The request's input as the input items a provider stores."""
    items = [{"role": "user", "content": value}] if isinstance(value, str) else value
    out: list[JSONObject] = []
    for i, item in enumerate(items if isinstance(items, list) else []):
        if isinstance(item, dict):
            content = item.get("content")
            text = content if isinstance(content, str) else input_text([item])
            out.append(
                {
                    "id": f"msg_in{i}",
                    "type": "message",
                    "role": item.get("role", "user"),
                    "status": "completed",
                    "content": [{"type": "input_text", "text": text}],
                }
            )
    return out


def response_text(body: JSONObject, previous: JSONObject | None) -> str:
    text = "echo: " + input_text(body.get("input"))
    if previous is not None:
        text += " | previous: " + output_text(previous)
    return text


def output_text(response: JSONObject) -> str:
    texts = [
        part.get("text", "")
        for item in response.get("output", [])
        for part in item.get("content", [])
        if part.get("type") == "output_text"
    ]
    return "".join(texts)


def response_object(
    body: JSONObject,
    model: str,
    response_id: str,
    text: str,
    *,
    status: str = "completed",
) -> JSONObject:
    """A complete ``response`` object (OpenAI's fields, those the SDK reads)."""
    input_tokens = len(input_text(body.get("input")).split())
    output_tokens = len(text.split())
    done = status == "completed"
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": [
            {
                "id": f"msg_{response_id}",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
        if done
        else [],
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "store": body.get("store", True),
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        }
        if done
        else None,
        "user": None,
        "metadata": {},
    }


def response_events(final: JSONObject) -> list[tuple[str, JSONObject]]:
    """The typed events that stream ``final`` (a completed response), numbered from 0."""
    text = output_text(final)
    item = final["output"][0]
    start = {**final, "status": "in_progress", "output": [], "usage": None}
    events: list[tuple[str, JSONObject]] = [
        ("response.created", {"response": start}),
        ("response.in_progress", {"response": start}),
        (
            "response.output_item.added",
            {"output_index": 0, "item": {**item, "status": "in_progress", "content": []}},
        ),
        (
            "response.content_part.added",
            {
                "item_id": item["id"],
                "output_index": 0,
                "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []},
            },
        ),
    ]
    for piece in re.findall(r"\S+\s*", text):
        events.append(
            (
                "response.output_text.delta",
                {
                    "item_id": item["id"],
                    "output_index": 0,
                    "content_index": 0,
                    "delta": piece,
                    "logprobs": [],
                },
            )
        )
    events += [
        (
            "response.output_text.done",
            {
                "item_id": item["id"],
                "output_index": 0,
                "content_index": 0,
                "text": text,
                "logprobs": [],
            },
        ),
        (
            "response.content_part.done",
            {
                "item_id": item["id"],
                "output_index": 0,
                "content_index": 0,
                "part": item["content"][0],
            },
        ),
        ("response.output_item.done", {"output_index": 0, "item": item}),
        ("response.completed", {"response": final}),
    ]
    return [
        (kind, {"type": kind, "sequence_number": n, **data})
        for n, (kind, data) in enumerate(events)
    ]


def typed_event(kind: str, data: JSONObject) -> bytes:
    """One SSE event with its ``event:`` line, as the Responses API sends them."""
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def prompt_text(body: JSONObject) -> str:
    """The first prompt: a string, or token ids as words (a list of prompts: the first)."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if not isinstance(prompt, list) or not prompt:
        return ""
    first = prompt[0]
    if isinstance(first, str):
        return first
    return " ".join(map(str, first if isinstance(first, list) else prompt))


def text_completion(body: JSONObject, model: str, completion_id: str) -> JSONObject:
    """A legacy ``text_completion`` answer to ``body``."""
    text = "echo: " + prompt_text(body)
    prompt_tokens = len(prompt_text(body).split())
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(text.split()),
            "total_tokens": prompt_tokens + len(text.split()),
        },
    }


def completion_chunks(body: JSONObject, model: str, completion_id: str) -> list[JSONObject]:
    """The streamed chunks of ``text_completion`` (one per word, the last with its
    finish_reason), then a usage chunk when ``stream_options.include_usage`` asks."""
    whole = text_completion(body, model, completion_id)
    base = {k: whole[k] for k in ("id", "object", "created", "model")}
    pieces = re.findall(r"\S+\s*", whole["choices"][0]["text"])
    chunks = [
        {
            **base,
            "choices": [
                {
                    "index": 0,
                    "text": piece,
                    "logprobs": None,
                    "finish_reason": "stop" if i == len(pieces) - 1 else None,
                }
            ],
        }
        for i, piece in enumerate(pieces)
    ]
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        chunks.append({**base, "choices": [], "usage": whole["usage"]})
    return chunks
