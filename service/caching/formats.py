"""What a cached answer looks like, per route: the route's own JSON answer (a chat.completion,
a text_completion, an embeddings list), whether the client asked for JSON or a stream.

Each route that streams has an ``Assembler``, which rebuilds that JSON answer from the events
of a streamed miss (reasoning and tool calls included), and a ``replay``, which turns a stored
answer back into a valid stream of the route's format for a streamed hit.  Anthropic's Messages
API stores its message and replays it as its events.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from service.anthropic.stream import message_events
from service.apis import Api
from service.upstream.sse import DONE_FRAME, frame

JSON = dict[str, Any]
# Top-level fields of a chunk that the whole answer keeps as they are.
_HEAD = ("id", "created", "model", "system_fingerprint", "service_tier")
# Delta fields whose pieces concatenate.
_TEXT = ("content", "reasoning_content", "reasoning", "refusal")
REFUSED = "content_filter"


class Assembler(Protocol):
    def feed(self, event: JSON) -> None:
        """Take one streamed event (a parsed SSE data payload)."""
        ...

    def result(self, usage: Any) -> JSON | None:
        """The whole answer (``usage``: what the upstream reported, when the stream's own
        events did not carry it to the client); None when the stream did not finish."""
        ...


class Format(Protocol):
    def assembler(self) -> Assembler | None:
        """None: the route does not stream."""
        ...

    def storable(self, answer: JSON) -> bool:
        """False for an answer that must not be served again (content-filtered)."""
        ...

    def replay(self, answer: JSON, wants_usage: bool) -> bytes:
        """The whole stream of a stored answer: SSE frames, ending as the route's streams end."""
        ...


def _finished_choices(answer: JSON) -> list[JSON]:
    choices = answer.get("choices")
    return [c for c in choices if isinstance(c, dict)] if isinstance(choices, list) else []


def _not_refused(answer: JSON) -> bool:
    return all(c.get("finish_reason") != REFUSED for c in _finished_choices(answer))


def _head(answer: JSON, kind: str) -> JSON:
    head = {k: answer[k] for k in _HEAD if k in answer}
    return {"id": head.pop("id", None), "object": kind, **head}


class _ChatChoice:
    __slots__ = ("extra", "finish_reason", "role", "texts", "tools")

    def __init__(self) -> None:
        self.role = "assistant"
        self.texts: dict[str, list[str]] = {}
        self.tools: dict[int, JSON] = {}
        self.extra: JSON = {}
        self.finish_reason: str | None = None

    def feed(self, delta: JSON) -> None:
        for key, value in delta.items():
            if value is None:
                continue
            if key in _TEXT and isinstance(value, str):
                self.texts.setdefault(key, []).append(value)
            elif key == "role" and isinstance(value, str):
                self.role = value
            elif key == "tool_calls" and isinstance(value, list):
                for piece in value:
                    if isinstance(piece, dict):
                        self._tool(piece)
            else:
                self.extra[key] = value

    def _tool(self, piece: JSON) -> None:
        index = piece.get("index", len(self.tools))
        call = self.tools.setdefault(
            index if isinstance(index, int) else 0,
            {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
        )
        if piece.get("id"):
            call["id"] = piece["id"]
        if piece.get("type"):
            call["type"] = piece["type"]
        function = piece.get("function")
        if isinstance(function, dict):
            for part in ("name", "arguments"):
                if isinstance(function.get(part), str):
                    call["function"][part] += function[part]

    def message(self) -> JSON:
        message: JSON = {"role": self.role, "content": None, **self.extra}
        for key, pieces in self.texts.items():
            message[key] = "".join(pieces)
        if self.tools:
            message["tool_calls"] = [self.tools[i] for i in sorted(self.tools)]
        return message


class ChatAssembler:
    def __init__(self) -> None:
        self._head: JSON = {}
        self._choices: dict[int, _ChatChoice] = {}
        self._usage: Any = None

    def feed(self, event: JSON) -> None:
        for key in _HEAD:
            if key not in self._head and event.get(key) is not None:
                self._head[key] = event[key]
        if event.get("usage"):
            self._usage = event["usage"]
        for choice in event.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            held = self._choices.setdefault(index if isinstance(index, int) else 0, _ChatChoice())
            delta = choice.get("delta")
            if isinstance(delta, dict):
                held.feed(delta)
            if choice.get("finish_reason"):
                held.finish_reason = choice["finish_reason"]

    def result(self, usage: Any) -> JSON | None:
        choices = self._choices
        if not choices or any(c.finish_reason is None for c in choices.values()):
            return None
        answer = _head(self._head, "chat.completion")
        answer["choices"] = [
            {
                "index": i,
                "message": choices[i].message(),
                "logprobs": None,
                "finish_reason": choices[i].finish_reason,
            }
            for i in sorted(choices)
        ]
        if self._usage or usage:
            answer["usage"] = self._usage or usage
        return answer


class ChatFormat:
    def assembler(self) -> Assembler:
        return ChatAssembler()

    def storable(self, answer: JSON) -> bool:
        return _not_refused(answer)

    def replay(self, answer: JSON, wants_usage: bool) -> bytes:
        """Per choice: its role, then reasoning, content and refusal (one chunk each), each
        tool call whole, then its finish_reason; the usage chunk when asked; [DONE]."""
        head = _head(answer, "chat.completion.chunk")
        frames: list[bytes] = []

        def chunk(index: int, delta: JSON, finish_reason: Any = None) -> None:
            choice = {"index": index, "delta": delta, "logprobs": None}
            choice["finish_reason"] = finish_reason
            frames.append(frame(orjson.dumps({**head, "choices": [choice]})))

        for position, choice in enumerate(_finished_choices(answer)):
            index = choice.get("index", position)
            message = choice.get("message")
            message = message if isinstance(message, dict) else {}
            chunk(index, {"role": message.get("role") or "assistant", "content": ""})
            for key in ("reasoning_content", "reasoning", "content", "refusal"):
                value = message.get(key)
                if isinstance(value, str) and value:
                    chunk(index, {key: value})
            calls = message.get("tool_calls")
            for number, call in enumerate(calls if isinstance(calls, list) else ()):
                if isinstance(call, dict):
                    chunk(index, {"tool_calls": [{"index": number, **call}]})
            for key, value in message.items():
                if key not in ("role", "tool_calls", *_TEXT) and value is not None:
                    chunk(index, {key: value})  # e.g. a legacy function_call, annotations
            chunk(index, {}, choice.get("finish_reason") or "stop")
        if wants_usage and answer.get("usage"):
            frames.append(frame(orjson.dumps({**head, "choices": [], "usage": answer["usage"]})))
        frames.append(DONE_FRAME)
        return b"".join(frames)


class CompletionAssembler:
    def __init__(self) -> None:
        self._head: JSON = {}
        self._texts: dict[int, list[str]] = {}
        self._finish: dict[int, str] = {}
        self._usage: Any = None

    def feed(self, event: JSON) -> None:
        for key in _HEAD:
            if key not in self._head and event.get(key) is not None:
                self._head[key] = event[key]
        if event.get("usage"):
            self._usage = event["usage"]
        for choice in event.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            index = index if isinstance(index, int) else 0
            text = choice.get("text")
            self._texts.setdefault(index, []).append(text if isinstance(text, str) else "")
            if choice.get("finish_reason"):
                self._finish[index] = choice["finish_reason"]

    def result(self, usage: Any) -> JSON | None:
        if not self._texts or set(self._finish) != set(self._texts):
            return None
        answer = _head(self._head, "text_completion")
        answer["choices"] = [
            {
                "index": i,
                "text": "".join(self._texts[i]),
                "logprobs": None,
                "finish_reason": self._finish[i],
            }
            for i in sorted(self._texts)
        ]
        if self._usage or usage:
            answer["usage"] = self._usage or usage
        return answer


class CompletionFormat:
    def assembler(self) -> Assembler:
        return CompletionAssembler()

    def storable(self, answer: JSON) -> bool:
        return _not_refused(answer)

    def replay(self, answer: JSON, wants_usage: bool) -> bytes:
        """One chunk per choice (its whole text and finish_reason); the usage chunk when
        asked; [DONE]."""
        head = _head(answer, "text_completion")
        frames = [
            frame(orjson.dumps({**head, "choices": [{**choice, "logprobs": None}]}))
            for choice in _finished_choices(answer)
        ]
        if wants_usage and answer.get("usage"):
            frames.append(frame(orjson.dumps({**head, "choices": [], "usage": answer["usage"]})))
        frames.append(DONE_FRAME)
        return b"".join(frames)


class EmbeddingsFormat:
    def assembler(self) -> None:
        return None

    def storable(self, answer: JSON) -> bool:
        return True

    def replay(self, answer: JSON, wants_usage: bool) -> bytes:
        raise TypeError("embeddings do not stream")


class MessageAssembler:
    """Anthropic's Messages events (message_start, content blocks and their deltas,
    message_delta, message_stop) back into the message they tell."""

    def __init__(self) -> None:
        self._message: JSON | None = None
        self._blocks: dict[int, JSON] = {}
        self._pieces: dict[int, list[str]] = {}  # a tool_use block's partial_json
        self._usage: JSON = {}
        self._stopped = False

    def feed(self, event: JSON) -> None:
        kind = event.get("type")
        if kind == "message_start" and isinstance(event.get("message"), dict):
            self._message = dict(event["message"])
            self._usage.update(self._message.get("usage") or {})
        elif kind == "content_block_start" and isinstance(event.get("content_block"), dict):
            self._blocks[event.get("index", len(self._blocks))] = dict(event["content_block"])
        elif kind == "content_block_delta" and isinstance(event.get("delta"), dict):
            self._delta(event.get("index", 0), event["delta"])
        elif kind == "message_delta":
            delta = event.get("delta")
            if isinstance(delta, dict) and self._message is not None:
                self._message.update(delta)
            if isinstance(event.get("usage"), dict):
                self._usage.update(event["usage"])
        elif kind == "message_stop":
            self._stopped = True

    def _delta(self, index: Any, delta: JSON) -> None:
        block = self._blocks.get(index)
        if block is None:
            return
        kind = delta.get("type")
        if kind == "text_delta":
            block["text"] = block.get("text", "") + str(delta.get("text", ""))
        elif kind == "thinking_delta":
            block["thinking"] = block.get("thinking", "") + str(delta.get("thinking", ""))
        elif kind == "signature_delta":
            block["signature"] = block.get("signature", "") + str(delta.get("signature", ""))
        elif kind == "input_json_delta":
            self._pieces.setdefault(index, []).append(str(delta.get("partial_json", "")))

    def result(self, usage: Any) -> JSON | None:
        message = self._message
        if message is None or not self._stopped:
            return None
        content = []
        for index in sorted(self._blocks):
            block = self._blocks[index]
            if index in self._pieces:
                joined = "".join(self._pieces[index])
                try:
                    block["input"] = orjson.loads(joined) if joined else {}
                except orjson.JSONDecodeError:
                    return None  # not an answer worth serving again
            content.append(block)
        return {**message, "content": content, "usage": self._usage}


class MessageFormat:
    def assembler(self) -> Assembler:
        return MessageAssembler()

    def storable(self, answer: JSON) -> bool:
        return answer.get("stop_reason") != "refusal"

    def replay(self, answer: JSON, wants_usage: bool) -> bytes:
        """The message's events, each block whole in one delta (its usage always: Anthropic's
        streams carry it)."""
        return message_events(answer)


FORMATS: dict[Api, Format] = {
    Api.CHAT: ChatFormat(),
    Api.COMPLETIONS: CompletionFormat(),
    Api.EMBEDDINGS: EmbeddingsFormat(),
    Api.MESSAGES: MessageFormat(),
}
