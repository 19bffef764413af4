"""What one upstream attempt sends, and how its answer comes back.

The router decides which candidate and when (order, failover, hedging, breakers); an
``Exchange`` decides what: the URL, headers and body of an attempt at a candidate, what
makes a 200 answer usable and what of it the client gets, and which relay reads a stream.
``ForwardExchange`` sends a request to the API it was made for with only ``model`` replaced
(chat, completions, embeddings, the Responses API); ``routing/messages.py`` chooses, per
candidate, between Anthropic pass-through and translation to chat.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from service.apis import Api
from service.routing.events import EventRelay
from service.routing.relay import Relay, StreamRelay
from service.routing.table import Candidate
from service.upstream.client import UpstreamResponse, UpstreamStream
from service.upstream.errors import (
    UpstreamFailure,
    check_completion,
    check_embeddings,
    check_response,
    checked_json,
    failure_for_status,
)

Checker = Callable[[Any], UpstreamFailure | None]
# What a usable 200 answer of each API looks like.
CHECKS: dict[str, Checker] = {
    Api.CHAT: check_completion,
    Api.COMPLETIONS: check_completion,
    Api.EMBEDDINGS: check_embeddings,
    Api.RESPONSES: check_response,
}
# An attempt's request: URL, headers, body.
Outgoing = tuple[str, Mapping[str, str], bytes]


@dataclass(slots=True)
class UsableAnswer:
    """A usable upstream answer: what the client gets, and the upstream's ``usage``."""

    status: int
    body: bytes
    usage: Any  # None when the upstream did not report it
    parsed: Any = None  # the upstream's answer as parsed (its id, model, finish reasons)


class Exchange(Protocol):
    operation: Api  # the API the client called (metrics, traces)
    body: dict[str, Any]  # the request as the client sent it (its parameters, for traces)

    def request(self, candidate: Candidate) -> Outgoing: ...

    def answer(self, candidate: Candidate, response: UpstreamResponse) -> UsableAnswer:
        """The answer to relay; raises UpstreamFailure (fail over) or ClientFault."""
        ...

    def relay(self, candidate: Candidate, upstream: UpstreamStream) -> Relay:
        """The relay reading an open 2xx stream of ``candidate``."""
        ...


class ForwardExchange:
    """The request as the client sent it, to the same API of every candidate."""

    __slots__ = ("_check", "_raw", "_wants_usage", "body", "operation")

    def __init__(
        self,
        api: Api,
        body: dict[str, Any],
        client_wants_usage: bool = True,
        raw: bytes | None = None,
    ) -> None:
        self.operation = api
        self.body = body
        # The client's own bytes, sent as they came to a candidate of the model it named.
        self._raw = raw if raw is not None and isinstance(body.get("model"), str) else None
        self._check = CHECKS.get(api, check_completion)
        self._wants_usage = client_wants_usage

    def request(self, candidate: Candidate) -> Outgoing:
        if self._raw is not None and self.body["model"] == candidate.model:
            payload = self._raw
        else:
            payload = orjson.dumps({**self.body, "model": candidate.model})
        return candidate.urls[self.operation], candidate.headers, payload

    def answer(self, candidate: Candidate, response: UpstreamResponse) -> UsableAnswer:
        parsed = usable_json(response, self._check)
        return UsableAnswer(response.status, response.body, parsed.get("usage"), parsed)

    def relay(self, candidate: Candidate, upstream: UpstreamStream) -> Relay:
        if self.operation == Api.RESPONSES:
            return EventRelay(upstream)
        return StreamRelay(upstream, self._wants_usage, self.operation)


def usable_json(response: UpstreamResponse, check: Checker) -> Any:
    """The parsed body of a usable answer; raises UpstreamFailure or ClientFault otherwise."""
    if response.status >= 300:
        raise failure_for_status(
            response.status, response.body, response.retry_after, response.content_type
        )
    return checked_json(response.body, check)
