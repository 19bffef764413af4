"""A Messages request: its checks, its chat-completions translation, its token estimate.

``validate`` accepts what Anthropic's API accepts (so a native provider gets any valid request);
``to_chat`` builds the chat body field by field from an allowlist, so nothing Anthropic-only
(``cache_control``, ``top_k``, ``output_config``, beta fields...) ever reaches an
OpenAI-compatible provider.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from service.errors import MAX_INT, BadRequest

# Block types a translation drops: they mean something only to Anthropic's own servers
# (server tools run there, containers, MCP connectors), or are the model's earlier reasoning.
_ANTHROPIC_ONLY_BLOCKS = frozenset(
    {
        "thinking",
        "redacted_thinking",
        "server_tool_use",
        "mcp_tool_use",
        "mcp_tool_result",
        "container_upload",
    }
)
# Server tools' results are ``web_search_tool_result``, ``code_execution_tool_result``...
_SERVER_RESULT_SUFFIX = "_tool_result"

# Tokens the estimate counts for each image or PDF (their size is unknown without decoding).
IMAGE_TOKENS = 1600
# Characters per token of the estimate.
CHARS_PER_TOKEN = 4

# ``thinking.budget_tokens`` below the first bound -> low, below the second -> medium, else
# high: Claude Code's "think" (4,000), "think hard" (10,000) and "ultrathink" (31,999).
EFFORT_BOUNDS = ((4096, "low"), (16384, "medium"))
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "max": "high"}
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


def _bad(where: str, text: str) -> BadRequest:
    return BadRequest(f"{where}: {text}", param=where)


class _Invalid(Exception):
    """A check's failure, with its path from the value checked (``""``: that value itself).
    The loops over messages and blocks prefix their part of the path only when one fails, so
    a valid request formats no path at all; ``validate`` turns it into the ``BadRequest``."""

    def __init__(self, where: str, text: str) -> None:
        super().__init__(where, text)
        self.where = where
        self.text = text

    def under(self, prefix: str) -> _Invalid:
        """The same failure, seen from the value holding ``prefix``."""
        return _Invalid(f"{prefix}.{self.where}" if self.where else prefix, self.text)


# -- validation ---------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    """An integer a request may hold (``MAX_INT`` at most either way)."""
    return isinstance(value, int) and not isinstance(value, bool) and -MAX_INT <= value <= MAX_INT


def _whole(fields: dict[str, Any], key: str) -> Any:
    """``fields[key]``; an integral float there is made an int, in place: JSON does not tell
    2 from 2.0 (JSON Schema's integer is either)."""
    value = fields.get(key)
    if isinstance(value, float) and value.is_integer() and -MAX_INT <= value <= MAX_INT:
        value = fields[key] = int(value)
    return value


def _is_positive_int(value: Any) -> bool:
    return _is_int(value) and bool(value >= 1)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_KINDS: dict[type, str] = {str: "a string", dict: "an object", list: "a list"}


def _need(obj: dict[str, Any], key: str, kind: type, where: str = "") -> Any:
    value = obj.get(key)
    if not isinstance(value, kind):
        required = "required, " if value is None else ""
        raise _Invalid(f"{where}.{key}" if where else key, f"{required}must be {_KINDS[kind]}")
    return value


def _check_source(block: dict[str, Any], kinds: dict[str, tuple[str, ...]]) -> None:
    source = _need(block, "source", dict)
    kind = source.get("type")
    if not isinstance(kind, str) or kind not in kinds:
        raise _Invalid("source.type", f"must be one of {', '.join(kinds)}")
    for key in kinds[kind]:
        _need(source, key, list if key == "content" else str, "source")
    if kind == "content":  # a document made of blocks: text, and images
        for i, part in enumerate(source["content"]):
            try:
                _check_document_part(part)
            except _Invalid as failure:
                raise failure.under(f"source.content.{i}") from None


def _check_document_part(part: Any) -> None:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        _need(part, "text", str)
    elif kind == "image":
        _check_source(part, _IMAGE_SOURCES)
    else:
        raise _Invalid("", "must be a text or image block")


_IMAGE_SOURCES = {"base64": ("media_type", "data"), "url": ("url",), "file": ("file_id",)}
_DOCUMENT_SOURCES = {
    "base64": ("media_type", "data"),
    "text": ("data",),
    "url": ("url",),
    "content": ("content",),
    "file": ("file_id",),
}


def _check_block(block: Any, role: str, nested: bool = False) -> None:
    if not isinstance(block, dict):
        raise _Invalid("", "a content block must be an object")
    kind = block.get("type")
    if not isinstance(kind, str):
        raise _Invalid("type", "required, must be a string")
    if kind == "text":
        _need(block, "text", str)
    elif kind == "image":
        _check_source(block, _IMAGE_SOURCES)
    elif kind == "document":
        _check_source(block, _DOCUMENT_SOURCES)
    elif kind == "search_result":
        _need(block, "source", str)
        _need(block, "title", str)
        for i, part in enumerate(_need(block, "content", list)):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise _Invalid(f"content.{i}", "must be a text block")
            _need(part, "text", str, f"content.{i}")
    elif nested:
        raise _Invalid("type", "a tool result holds text, image, document or search_result")
    elif kind == "tool_use":
        if role != "assistant":
            raise _Invalid("type", "tool_use blocks belong in assistant messages")
        _need(block, "id", str)
        _need(block, "name", str)
        _need(block, "input", dict)
    elif kind == "tool_result":
        if role != "user":
            raise _Invalid("type", "tool_result blocks belong in user messages")
        _need(block, "tool_use_id", str)
        content = block.get("content")
        if isinstance(content, list):
            try:
                _check_blocks(content, role, nested=True)
            except _Invalid as failure:
                raise failure.under("content") from None
        elif content is not None and not isinstance(content, str):
            raise _Invalid("content", "must be a string or a list of blocks")
        if block.get("is_error") is not None and not isinstance(block["is_error"], bool):
            raise _Invalid("is_error", "must be a boolean")
    elif kind == "thinking":
        _need(block, "thinking", str)
    elif kind == "redacted_thinking":
        _need(block, "data", str)
    elif kind not in _ANTHROPIC_ONLY_BLOCKS and not kind.endswith(_SERVER_RESULT_SUFFIX):
        raise _Invalid("type", f"unknown content block type {kind!r}")


def _check_blocks(blocks: list[Any], role: str, nested: bool = False) -> None:
    for i, block in enumerate(blocks):
        try:
            _check_block(block, role, nested)
        except _Invalid as failure:
            raise failure.under(str(i)) from None


def _check_content(content: Any, role: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _Invalid("", "must be a string or a list of content blocks")
    _check_blocks(content, role)


def _check_message(message: Any) -> None:
    if not isinstance(message, dict):
        raise _Invalid("", "a message must be an object")
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise _Invalid("role", "must be user or assistant")
    if "content" not in message:
        raise _Invalid("content", "required")
    try:
        _check_content(message["content"], role)
    except _Invalid as failure:
        raise failure.under("content") from None


def _check_tools(tools: Any) -> None:
    if not isinstance(tools, list):
        raise _Invalid("tools", "must be a list")
    for i, tool in enumerate(tools):
        try:
            _check_tool(tool)
        except _Invalid as failure:
            raise failure.under(f"tools.{i}") from None


def _check_tool(tool: Any) -> None:
    if not isinstance(tool, dict):
        raise _Invalid("", "a tool must be an object")
    _need(tool, "name", str)
    if tool.get("type") in (None, "custom"):
        _need(tool, "input_schema", dict)


def _check_tool_choice(choice: Any) -> None:
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise _Invalid("tool_choice.type", "must be one of auto, any, tool, none")
    if choice["type"] == "tool":
        _need(choice, "name", str, "tool_choice")
    parallel = choice.get("disable_parallel_tool_use")
    if parallel is not None and not isinstance(parallel, bool):
        raise _Invalid("tool_choice.disable_parallel_tool_use", "must be a boolean")


def _check_thinking(thinking: Any) -> None:
    if not isinstance(thinking, dict) or thinking.get("type") not in (
        "enabled",
        "disabled",
        "adaptive",
    ):
        raise _Invalid("thinking.type", "must be one of enabled, disabled, adaptive")
    if thinking["type"] == "enabled" and not _is_positive_int(_whole(thinking, "budget_tokens")):
        raise _Invalid("thinking.budget_tokens", "required, must be a positive integer")


def _check_system_block(block: Any) -> None:
    if not isinstance(block, dict) or block.get("type") != "text":
        raise _Invalid("", "must be a text block")
    _need(block, "text", str)


def _check_optional(body: dict[str, Any]) -> None:
    for key in ("temperature", "top_p"):
        if body.get(key) is not None and not _is_number(body[key]):
            raise _Invalid(key, "must be a number")
    if _whole(body, "top_k") is not None and not _is_int(body["top_k"]):
        raise _Invalid("top_k", "must be an integer")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise _Invalid("stream", "must be a boolean")
    stops = body.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
    ):
        raise _Invalid("stop_sequences", "must be a list of strings")
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _Invalid("metadata", "must be an object")
        if metadata.get("user_id") is not None and not isinstance(metadata["user_id"], str):
            raise _Invalid("metadata.user_id", "must be a string")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        if not isinstance(system, list):
            raise _Invalid("system", "must be a string or a list of text blocks")
        for i, block in enumerate(system):
            try:
                _check_system_block(block)
            except _Invalid as failure:
                raise failure.under(f"system.{i}") from None
    checks: tuple[tuple[str, Callable[[Any], None]], ...] = (
        ("tools", _check_tools),
        ("tool_choice", _check_tool_choice),
        ("thinking", _check_thinking),
    )
    for key, check in checks:
        if body.get(key) is not None:
            check(body[key])


def validate(body: Any) -> None:
    """Raises ``BadRequest`` (its message and ``param`` name the field, e.g.
    ``messages.2.content.0.text``) for a body that is not a Messages request.  An integral
    float in an integer field (``max_tokens``: 1024.0) is made an int."""
    try:
        _check_request(body)
    except _Invalid as failure:
        raise _bad(failure.where, failure.text) from None


def _check_request(body: Any) -> None:
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    if not isinstance(body.get("model"), str):
        raise _Invalid("model", "required, must be a string")
    if not _is_positive_int(_whole(body, "max_tokens")):
        raise _Invalid("max_tokens", f"required, must be an integer from 1 to {MAX_INT}")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Invalid("messages", "required, must be a non-empty list")
    for i, message in enumerate(messages):
        try:
            _check_message(message)
        except _Invalid as failure:
            raise failure.under(f"messages.{i}") from None
    _check_optional(body)


# -- translation ----------------------------------------------------------------------------


def _joined(texts: list[str]) -> str:
    """Separate text blocks of a system prompt, an assistant turn or a tool result, as one
    string: every provider accepts a string there, not all accept a list of parts."""
    return texts[0] if len(texts) == 1 else "\n\n".join(texts)


def _texts(blocks: list[dict[str, Any]]) -> list[str]:
    return [b["text"] for b in blocks if b.get("type") == "text" and b["text"]]


def _untranslatable(what: str) -> BadRequest:
    return BadRequest(
        f"{what} cannot be sent to a provider that does not speak the Messages API natively."
    )


def _data_url(source: dict[str, Any]) -> str:
    return f"data:{source['media_type']};base64,{source['data']}"


def _part(block: dict[str, Any]) -> dict[str, Any] | None:
    """The chat content part of a user's block; None for what a translation drops."""
    kind = block["type"]
    if kind == "text":
        return {"type": "text", "text": block["text"]} if block["text"] else None
    if kind == "image":
        source = block["source"]
        if source["type"] == "base64":
            return {"type": "image_url", "image_url": {"url": _data_url(source)}}
        if source["type"] == "url":
            return {"type": "image_url", "image_url": {"url": source["url"]}}
        raise _untranslatable("An image from the Files API")
    if kind == "document":
        source = block["source"]
        if source["type"] == "base64":
            name = block.get("title") or "document.pdf"
            return {"type": "file", "file": {"filename": name, "file_data": _data_url(source)}}
        if source["type"] == "text":
            return {"type": "text", "text": source["data"]}
        if source["type"] == "content":
            return {"type": "text", "text": _joined(_texts(source["content"]))}
        raise _untranslatable(f"A document from a {source['type']} source")
    if kind == "search_result":
        head = f"{block['title']} ({block['source']})"
        return {"type": "text", "text": _joined([head, *_texts(block["content"])])}
    return None


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _tool_message(block: dict[str, Any], attachments: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``tool`` message: the result's text (tool messages take text only); its images and
    documents go to ``attachments``, sent in a user message right after the tool messages."""
    content = block.get("content")
    if isinstance(content, list):
        texts = []
        for item in content:
            part = _part(item)
            if part is None:
                continue
            if part["type"] == "text":
                texts.append(part["text"])
            else:
                attachments.append(part)
        content = _joined(texts) if texts else ""
    text = content or ""
    if block.get("is_error"):
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}


def _user(content: str | list[dict[str, Any]], out: list[dict[str, Any]]) -> None:
    if isinstance(content, str):
        out.append({"role": "user", "content": content})
        return
    parts: list[dict[str, Any]] = []
    attachments: list[dict[str, Any]] = []
    results = 0
    for block in content:
        if block["type"] == "tool_result":
            out.append(_tool_message(block, attachments))
            results += 1
        else:
            part = _part(block)
            if part is not None:
                parts.append(part)
    if attachments or parts or not results:
        out.append({"role": "user", "content": _content(attachments + parts) or ""})


def _assistant(content: str | list[dict[str, Any]], out: list[dict[str, Any]]) -> None:
    if isinstance(content, str):
        out.append({"role": "assistant", "content": content})
        return
    texts = _texts(content)
    calls = [
        {
            "id": block["id"],
            "type": "function",
            "function": {"name": block["name"], "arguments": orjson.dumps(block["input"]).decode()},
        }
        for block in content
        if block["type"] == "tool_use"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": _joined(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    elif not texts:
        message["content"] = ""
    out.append(message)


def _tools(body: dict[str, Any], chat: dict[str, Any]) -> None:
    functions: list[dict[str, Any]] = []
    for tool in body.get("tools") or ():
        if tool.get("type") not in (None, "custom"):
            continue  # a server tool (web search, code execution...): runs only at Anthropic
        function = {"name": tool["name"], "parameters": tool["input_schema"]}
        if tool.get("description"):
            function["description"] = tool["description"]
        functions.append({"type": "function", "function": function})
    if not functions:
        return
    chat["tools"] = functions
    choice = body.get("tool_choice")
    if choice is None:
        return
    if choice["type"] == "tool":
        if not any(f["function"]["name"] == choice["name"] for f in functions):
            return  # names a dropped server tool
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        chat["tool_choice"] = _TOOL_CHOICES[choice["type"]]
    if choice.get("disable_parallel_tool_use") and choice["type"] != "none":
        chat["parallel_tool_calls"] = False


def reasoning_effort(body: dict[str, Any]) -> str | None:
    """``thinking`` as a chat ``reasoning_effort``: an enabled budget by ``EFFORT_BOUNDS``;
    adaptive thinking by ``output_config.effort`` (max -> high); otherwise none."""
    thinking = body.get("thinking")
    if not thinking:
        return None
    if thinking["type"] == "enabled":
        budget = thinking["budget_tokens"]
        return next((effort for bound, effort in EFFORT_BOUNDS if budget < bound), "high")
    if thinking["type"] == "adaptive":
        config = body.get("output_config")
        effort = config.get("effort") if isinstance(config, dict) else None
        return _EFFORTS.get(effort) if isinstance(effort, str) else None
    return None


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat-completions body of a validated Messages request.  Raises ``BadRequest`` for
    content chat completions cannot carry (a Files API image, a document by URL)."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        text = system if isinstance(system, str) else _joined(_texts(system))
        if text:
            messages.append({"role": "system", "content": text})
    for message in body["messages"]:
        if message["role"] == "assistant":
            _assistant(message["content"], messages)
        else:
            _user(message["content"], messages)
    chat: dict[str, Any] = {
        "model": body["model"],
        "messages": messages,
        "max_tokens": body["max_tokens"],
    }
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            chat[key] = body[key]
    if body.get("stop_sequences"):
        chat["stop"] = list(body["stop_sequences"])
    _tools(body, chat)
    effort = reasoning_effort(body)
    if effort:
        chat["reasoning_effort"] = effort
    user = (body.get("metadata") or {}).get("user_id")
    if user:
        chat["user"] = user
    if "stream" in body:
        chat["stream"] = body["stream"]
        if body["stream"]:
            chat["stream_options"] = {"include_usage": True}
    return chat


# -- estimate -------------------------------------------------------------------------------


def _block_size(block: dict[str, Any]) -> tuple[int, int]:
    """(characters, attachments) of one content block."""
    kind = block["type"]
    if kind == "text":
        return len(block["text"]), 0
    if kind in ("image", "document"):
        source = block["source"]
        if source["type"] == "text":
            return len(source["data"]), 0
        return 0, 1
    if kind == "tool_use":
        return len(block["name"]) + len(orjson.dumps(block["input"])), 0
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, list):
            return _blocks_size(content)
        return len(content or ""), 0
    if kind == "search_result":
        return len(block["title"]) + sum(len(p["text"]) for p in block["content"]), 0
    return 0, 0  # earlier reasoning and server-side blocks: not sent to a chat provider


def _blocks_size(blocks: list[dict[str, Any]]) -> tuple[int, int]:
    chars = attachments = 0
    for block in blocks:
        c, a = _block_size(block)
        chars += c
        attachments += a
    return chars, attachments


def estimate_input_tokens(body: dict[str, Any]) -> int:
    """A validated request's input tokens, estimated: the characters of the system prompt,
    of every text, tool call (name and input JSON) and tool result, and of the tools' JSON,
    divided by ``CHARS_PER_TOKEN`` (rounded up), plus ``IMAGE_TOKENS`` per image or PDF.
    Deterministic: the same body always gives the same number."""
    system = body.get("system") or ""
    chars = len(system) if isinstance(system, str) else sum(len(b["text"]) for b in system)
    attachments = 0
    for message in body["messages"]:
        content = message["content"]
        if isinstance(content, str):
            chars += len(content)
        else:
            c, a = _blocks_size(content)
            chars += c
            attachments += a
    if body.get("tools"):
        chars += len(orjson.dumps(body["tools"]))
    return -(-chars // CHARS_PER_TOKEN) + IMAGE_TOKENS * attachments
