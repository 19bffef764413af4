"""A chat completion as a Messages answer, and the pieces a stream shares with it: the stop
reason, the usage in Anthropic's names, the message id, a tool call's input."""

from __future__ import annotations

import uuid
from typing import Any

import orjson

# A tool call whose arguments are not a JSON object keeps them, as received, under this key
# of its ``input`` (the Messages API requires ``input`` to be an object).
RAW_ARGUMENTS = "_raw_arguments"

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def stop_reason(finish_reason: str | None) -> str | None:
    """A chat ``finish_reason`` as a Messages ``stop_reason``; an unknown reason ends the
    turn; None (the upstream gave none) stays None."""
    if finish_reason is None:
        return None
    return _STOP_REASONS.get(finish_reason, "end_turn")


def matched_stop(choice: dict[str, Any]) -> str | None:
    """The stop sequence that ended a choice, where the upstream tells: vLLM's
    ``stop_reason``, SGLang's ``matched_stop`` (a string; a token id is not a sequence)."""
    for key in ("stop_reason", "matched_stop"):
        value = choice.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def ending(
    finish_reason: str | None, stop_sequence: str | None, called_tools: bool
) -> tuple[str | None, str | None]:
    """(stop_reason, stop_sequence) of a message.  A turn that called tools stops with
    ``tool_use`` even when the upstream says ``stop`` (some do): clients run the tools only
    then."""
    reason = stop_reason(finish_reason)
    if reason == "end_turn":
        if called_tools:
            return "tool_use", None
        if stop_sequence is not None:
            return "stop_sequence", stop_sequence
    return reason, None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage(reported: Any) -> dict[str, int]:
    """A chat ``usage`` in Anthropic's names.  ``input_tokens`` counts only the uncached
    prompt: the prompt minus the tokens read from the provider's cache
    (``prompt_tokens_details.cached_tokens``, DeepSeek's ``prompt_cache_hit_tokens``) and
    those written to it (``prompt_tokens_details.cache_write_tokens`` or
    ``cache_creation_input_tokens``, 0 when not reported)."""
    if not isinstance(reported, dict):
        reported = {}
    read = written = 0
    details = reported.get("prompt_tokens_details")
    if details and isinstance(details, dict):
        read = _count(details.get("cached_tokens"))
        written = _count(details.get("cache_write_tokens"))
    if not read and "prompt_cache_hit_tokens" in reported:
        read = _count(reported["prompt_cache_hit_tokens"])
    if not written and "cache_creation_input_tokens" in reported:
        written = _count(reported["cache_creation_input_tokens"])
    return {
        "input_tokens": max(_count(reported.get("prompt_tokens")) - read - written, 0),
        "output_tokens": _count(reported.get("completion_tokens")),
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": written,
    }


def message_id(upstream_id: Any) -> str:
    """``msg_`` and the upstream's id (kept as is when it is already a message id); a fresh
    one when the upstream sent none."""
    if isinstance(upstream_id, str) and upstream_id:
        return upstream_id if upstream_id.startswith("msg_") else f"msg_{upstream_id}"
    return f"msg_{uuid.uuid4().hex}"


def tool_id(call_id: Any, position: int) -> str:
    """A tool call's id; ``toolu_<position in content>`` when the upstream sent none."""
    return call_id if isinstance(call_id, str) and call_id else f"toolu_{position}"


def tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's ``arguments`` as a ``tool_use`` input: the parsed JSON object; ``{}``
    for none; anything else (invalid JSON, a JSON array...) as ``{RAW_ARGUMENTS: text}``."""
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    text = arguments if isinstance(arguments, str) else str(arguments)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    return value if isinstance(value, dict) else {RAW_ARGUMENTS: text}


def reasoning(message: dict[str, Any]) -> str | None:
    """The model's reasoning in a message or delta (``reasoning_content``: DeepSeek, vLLM
    before 0.10; ``reasoning``: OpenRouter, vLLM since)."""
    text = message.get("reasoning_content") or message.get("reasoning")
    return text if isinstance(text, str) and text else None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # a list of parts, as a few providers answer
        return "".join(
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        )
    return ""


def from_chat(completion: dict[str, Any], model: str) -> dict[str, Any]:
    """A chat completion as a Messages answer for a client that asked for ``model``: a
    ``thinking`` block (the reasoning), a ``text`` block (unless empty), a ``tool_use`` block
    per tool call, in this order; only the first choice is read."""
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    if not isinstance(choice, dict):
        choice = {}
    message = choice.get("message")
    if not isinstance(message, dict):
        message = {}
    content: list[dict[str, Any]] = []
    thought = reasoning(message)
    if thought:
        content.append({"type": "thinking", "thinking": thought, "signature": ""})
    text = _text(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    called = False
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        if not isinstance(call, dict):
            continue
        function = call.get("function")
        if not isinstance(function, dict):
            function = {}
        content.append(
            {
                "type": "tool_use",
                "id": tool_id(call.get("id"), len(content)),
                "name": function.get("name") or "",
                "input": tool_input(function.get("arguments")),
            }
        )
        called = True
    reason, sequence = ending(choice.get("finish_reason"), matched_stop(choice), called)
    return {
        "id": message_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage(completion.get("usage")),
    }
