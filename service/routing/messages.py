"""The Messages API (Anthropic's) routed like chat: the choice, per attempt, between passing
the request through to a provider that speaks it natively (``messages`` in its ``apis:``)
and translating it to chat completions for any other.

One request's candidates may mix both: each attempt picks its URL, headers, body and relay
for the candidate it tries.  The chat translation is made once per request.  Answers carry
the model name the client asked for.
"""

from __future__ import annotations

from typing import Any

import orjson

from service.anthropic.answer import from_chat
from service.anthropic.request import to_chat
from service.anthropic.stream import MessageStream, message_events
from service.apis import Api
from service.routing.anthropic_events import NativeEventRelay, chat_usage, check_message
from service.routing.exchange import Outgoing, UsableAnswer, usable_json
from service.routing.relay import Relay, StreamRelay
from service.routing.table import Candidate
from service.types import headers_plus
from service.upstream.client import UpstreamClient, UpstreamResponse, UpstreamStream
from service.upstream.errors import (
    STREAM_AS_JSON_INVALID,
    UpstreamFailure,
    check_completion,
    checked_json,
)

DEFAULT_VERSION = "2023-06-01"


def is_native(candidate: Candidate) -> bool:
    """The provider answers the Messages API itself (no translation)."""
    return Api.MESSAGES in candidate.apis


def needs_chat(candidates: list[Candidate]) -> bool:
    """Some candidate is tried in chat completions (the request is translated)."""
    # A loop, not any(<generator>): no generator object per request.
    for candidate in candidates:  # noqa: SIM110
        if Api.MESSAGES not in candidate.apis:
            return True
    return False


class MessagesExchange:
    """Attempts of one Messages request: ``body`` as the client sent it, ``chat`` its
    translation (made on first use when None), ``model`` the name it asked for; ``version``
    and ``beta`` its ``anthropic-*`` headers (for native providers); ``input_estimate`` the
    prompt tokens ``message_start`` reports before the upstream's count is known."""

    __slots__ = ("_beta", "_chat", "_input_estimate", "_model", "_version", "body")
    operation = Api.MESSAGES

    def __init__(
        self,
        body: dict[str, Any],
        chat: dict[str, Any] | None,
        model: str,
        version: str | None,
        beta: str | None,
        input_estimate: int,
    ) -> None:
        self.body = body
        self._model = model
        self._input_estimate = input_estimate
        self._chat = chat
        self._version = version
        self._beta = beta

    def request(self, candidate: Candidate) -> Outgoing:
        if is_native(candidate):
            payload = orjson.dumps({**self.body, "model": candidate.model})
            headers = headers_plus(
                candidate.messages_headers, native_headers(self._version, self._beta)
            )
            return candidate.urls[Api.MESSAGES], headers, payload
        chat = self._chat
        if chat is None:
            chat = self._chat = to_chat(self.body)
        payload = orjson.dumps({**chat, "model": candidate.model})
        return candidate.urls[Api.CHAT], candidate.headers, payload

    def answer(self, candidate: Candidate, response: UpstreamResponse) -> UsableAnswer:
        if is_native(candidate):
            parsed = usable_json(response, check_message)
            usage = parsed.get("usage")
            body = orjson.dumps({**parsed, "model": self._model})
            return UsableAnswer(
                200, body, chat_usage(usage) if isinstance(usage, dict) else None, parsed
            )
        completion = usable_json(response, check_completion)
        body = orjson.dumps(from_chat(completion, self._model))
        return UsableAnswer(200, body, completion.get("usage"), completion)

    def relay(self, candidate: Candidate, upstream: UpstreamStream) -> Relay:
        if is_native(candidate):
            return NativeEventRelay(upstream, self._model)
        return TranslatedRelay(upstream, self._model, self._input_estimate)


def native_headers(version: str | None, beta: str | None) -> dict[str, str]:
    headers = {"anthropic-version": version or DEFAULT_VERSION}
    if beta:
        headers["anthropic-beta"] = beta
    return headers


class TranslatedRelay(StreamRelay):
    """A chat stream told as Anthropic's events: each chunk the relay has parsed goes to
    ``MessageStream`` (no frame is parsed twice); the end is ``message_delta`` with the
    upstream's real usage, then ``message_stop``."""

    def __init__(self, upstream: UpstreamStream, model: str, input_estimate: int) -> None:
        super().__init__(upstream, True, Api.CHAT)
        self._model = model
        self._stream = MessageStream(model, input_estimate)

    def _forward(self, event: Any, payload: bytes, choices: Any, usage: Any) -> bytes | None:
        return self._stream.feed(event) or None

    def _closing(self) -> bytes:
        return self._stream.end()

    async def _from_json(self) -> list[bytes]:
        """An upstream that answered the stream with a whole completion: its events."""
        parsed = checked_json(await self.upstream.read(), check_completion, STREAM_AS_JSON_INVALID)
        self.usage = parsed.get("usage")
        self.done = self.finished = True
        return [message_events(from_chat(parsed, self._model))]


async def native_count(
    client: UpstreamClient,
    candidate: Candidate,
    body: dict[str, Any],
    version: str | None,
    beta: str | None,
    timeout_s: float,
) -> int | None:
    """``POST {base_url}/messages/count_tokens`` at a native provider: its count, or None
    when it cannot tell (any failure: the caller falls back to the estimate)."""
    url = candidate.urls[Api.MESSAGES] + "/count_tokens"
    headers = headers_plus(candidate.messages_headers, native_headers(version, beta))
    payload = orjson.dumps({**body, "model": candidate.model})
    try:
        response = await client.request("POST", url, headers, payload, timeout_s)
    except UpstreamFailure:
        return None
    if response.status != 200:
        return None
    try:
        parsed = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return None
    count = parsed.get("input_tokens") if isinstance(parsed, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) else None
