"""The APIs a provider can serve and a client can call: one name each, used as the route
label of metrics, the key of a provider's URLs and ``apis:`` in ``meta-providers.yaml``."""

from __future__ import annotations

from enum import StrEnum


class Api(StrEnum):
    CHAT = "chat"  # /chat/completions
    EMBEDDINGS = "embeddings"  # /embeddings
    RESPONSES = "responses"  # /responses, the Responses API
    COMPLETIONS = "completions"  # /completions, legacy text completions
    MESSAGES = "messages"  # /messages, Anthropic's Messages API

    @property
    def display(self) -> str:
        """The API's name in messages to users."""
        return _TITLES[self]


_TITLES = {
    Api.CHAT: "Chat Completions",
    Api.EMBEDDINGS: "Embeddings",
    Api.RESPONSES: "Responses",
    Api.COMPLETIONS: "Completions",
    Api.MESSAGES: "Messages",
}
