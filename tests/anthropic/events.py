"""Reading Anthropic event streams in tests: strict parsing, the grammar, reassembly (our own
strict reading, and the anthropic SDK's own accumulator, as clients do)."""

from __future__ import annotations

from typing import Any

import orjson
from anthropic.lib.streaming._messages import accumulate_event

Event = tuple[str, dict[str, Any]]


def parse(stream: bytes) -> list[Event]:
    """Every frame as (event, data); fails on anything but ``event: T\\ndata: JSON\\n\\n``
    with compact JSON whose ``type`` is T."""
    assert stream.endswith(b"\n\n"), stream[-40:]
    events = []
    for raw in stream[:-2].split(b"\n\n"):
        head, data = raw.split(b"\n")
        assert head.startswith(b"event: ") and data.startswith(b"data: "), raw
        name = head[len(b"event: ") :].decode()
        payload = orjson.loads(data[len(b"data: ") :])
        assert orjson.dumps(payload) == data[len(b"data: ") :], "JSON not compact"
        assert payload["type"] == name
        events.append((name, payload))
    return events


_DELTA_OF = {"text": "text_delta", "thinking": "thinking_delta", "tool_use": "input_json_delta"}
_PIECE_OF = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}


def check_grammar(events: list[Event]) -> None:
    """One message_start first; blocks opened in index order from 0, one at a time, each
    closed before the next; deltas only of the open block's kind, none empty; no text or
    thinking block without content; one message_delta after the last block; message_stop
    last."""
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names.count("message_start") == 1, names
    assert names[-2:] == ["message_delta", "message_stop"], names
    assert names.count("message_delta") == 1 and names.count("message_stop") == 1, names
    open_block: dict[str, Any] | None = None
    next_index = 0
    pieces = 0
    for name, data in events[1:-2]:
        if name == "content_block_start":
            assert open_block is None, "a block opened before the previous one closed"
            assert data["index"] == next_index
            open_block = data["content_block"]
            pieces = 0
        elif name == "content_block_delta":
            assert open_block is not None and data["index"] == next_index
            delta = data["delta"]
            if delta["type"] == "signature_delta":
                assert open_block["type"] == "thinking"
                continue
            assert delta["type"] == _DELTA_OF[open_block["type"]], (delta, open_block)
            assert delta[_PIECE_OF[delta["type"]]] != "", "an empty delta"
            pieces += 1
        elif name == "content_block_stop":
            assert open_block is not None and data["index"] == next_index
            if open_block["type"] in ("text", "thinking"):
                assert pieces > 0, f"an empty {open_block['type']} block"
            open_block = None
            next_index += 1
        else:
            assert name == "ping", name
    assert open_block is None, "a block left open"


def reassemble(events: list[Event]) -> dict[str, Any]:
    """The message the events describe, read strictly: a tool call's pieces are joined and
    parsed as JSON at its block's end."""
    message = dict(events[0][1]["message"])
    message["content"] = []
    message["usage"] = dict(message["usage"])
    json_text = ""
    for name, data in events[1:]:
        if name == "content_block_start":
            message["content"].append(dict(data["content_block"]))
            json_text = ""
        elif name == "content_block_delta":
            block = message["content"][data["index"]]
            delta = data["delta"]
            if delta["type"] == "input_json_delta":
                json_text += delta["partial_json"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            else:
                key = _PIECE_OF[delta["type"]]
                block[key] += delta[key]
        elif name == "content_block_stop":
            block = message["content"][data["index"]]
            if block["type"] == "tool_use":
                block["input"] = orjson.loads(json_text) if json_text else {}
        elif name == "message_delta":
            message.update(data["delta"])
            message["usage"].update(data["usage"])
    return message


_FIELDS = {
    "text": ("type", "text"),
    "thinking": ("type", "thinking", "signature"),
    "tool_use": ("type", "id", "name", "input"),
}
_USAGE = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)


def reassemble_with_sdk(events: list[Event]) -> dict[str, Any]:
    """The message the anthropic SDK's stream accumulator builds from the events, in the
    fields a translated answer has."""
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for _, data in events:
        snapshot = accumulate_event(event=data, current_snapshot=snapshot, json_bufs=json_bufs)  # type: ignore[arg-type]
    assert snapshot is not None
    built = snapshot.to_dict()
    return {
        "id": built["id"],
        "type": built["type"],
        "role": built["role"],
        "model": built["model"],
        "content": [{k: b[k] for k in _FIELDS[b["type"]]} for b in built["content"]],
        "stop_reason": built.get("stop_reason"),
        "stop_sequence": built.get("stop_sequence"),
        "usage": {k: built["usage"].get(k) for k in _USAGE},
    }
