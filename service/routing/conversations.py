"""Sticky conversations of the Responses API: which provider holds each response.

A provider stores the responses it answers: ``previous_response_id`` continues one, and
``GET``, ``DELETE``, ``input_items`` and ``cancel`` read or change it.  So every response id
is recorded fleet-wide with its provider and model before the answer reaches the client, and
every later call about it goes to that provider, from any replica.  When that provider cannot
serve, the answer is 503 naming it: a silent switch to another provider would answer without
the conversation.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote

import orjson

from service import errors
from service.apis import Api
from service.routing.breakers import Breakers
from service.routing.catalog import Catalog
from service.routing.table import Candidate
from service.store.client import Store
from service.upstream.client import UpstreamClient, UpstreamResponse
from service.upstream.errors import UpstreamFailure

log = logging.getLogger("best.conversations")

TTL_S = 30 * 86400  # as long as OpenAI keeps a stored response
RESPONSES = Api.RESPONSES
# What a response id may look like: bounded, and safe in a URL path and a store key.
RESPONSE_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,256}$"
_ID = re.compile(RESPONSE_ID_PATTERN)


def valid_response_id(value: str) -> bool:
    return _ID.match(value) is not None


def provider_unavailable(
    provider: str, response_id: str, why: str, retry_after_s: float | None = None
) -> errors.Unavailable:
    return errors.Unavailable(
        f"Provider `{provider}` holds response `{response_id}` and cannot serve it now: {why}. "
        "The gateway does not switch a stored conversation to another provider; retry later.",
        code="conversation_provider_unavailable",
        retry_after_s=retry_after_s,
    )


class Conversations:
    def __init__(
        self, store: Store, catalog: Catalog, breakers: Breakers, client: UpstreamClient
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._breakers = breakers
        self._client = client

    async def record(self, response_id: str | None, candidate: Candidate) -> None:
        """Remember that ``candidate``'s provider holds ``response_id`` (30 days)."""
        if not response_id or not valid_response_id(response_id):
            log.warning("%s answered a response without a usable id", candidate.provider)
            return
        value = orjson.dumps([candidate.provider, candidate.model])
        await self._store.set(self._store.keys.response(response_id), value, TTL_S)

    async def owner(self, response_id: str, param: str | None = None) -> tuple[str, str]:
        """(provider, model) that holds ``response_id``; 404 when no replica recorded it."""
        if not valid_response_id(response_id):
            raise errors.bad_request(f"'{param or 'response_id'}' is not a valid id.", param=param)
        raw = await self._store.get(self._store.keys.response(response_id))
        if raw is None:
            if self._store.degraded:
                raise errors.unavailable(
                    "The shared store is unreachable, so the provider holding response "
                    f"`{response_id}` cannot be looked up; retry later.",
                    retry_after_s=1.0,
                )
            raise errors.not_found(
                f"No response with id '{response_id}' was answered through this gateway "
                "(or it expired).",
                code="response_not_found",
            )
        provider, model = orjson.loads(raw)
        return str(provider), str(model)

    def candidate(
        self, response_id: str, provider: str, model: str, requested: str = ""
    ) -> Candidate:
        """The pair a follow-up goes to: the requested model when the holding provider
        serves it, else the recorded model; raises 503 naming the provider when it cannot."""
        table = self._catalog.table.for_api(RESPONSES)
        chosen = next((c for c in table.resolve(requested) if c.provider == provider), None)
        if chosen is None:
            chosen = table.pair(provider, model)
        if chosen is None:
            chosen = next((c for c in table.pairs if c.provider == provider), None)
        if chosen is None:
            raise provider_unavailable(
                provider,
                response_id,
                "it is not configured now, has no API key set, or does not list responses in apis",
            )
        return chosen

    def check_available(self, response_id: str, candidate: Candidate) -> None:
        """503 naming the provider while ``candidate`` is out of rotation."""
        available, wait_s = self._breakers.available([candidate])
        if not available:
            raise provider_unavailable(
                candidate.provider,
                response_id,
                "it is out of rotation after failures",
                retry_after_s=wait_s,
            )

    async def forward(
        self,
        candidate: Candidate,
        method: str,
        response_id: str,
        suffix: str,
        query: bytes,
    ) -> UpstreamResponse:
        """``method`` on ``{base_url}/responses/{id}{suffix}`` at the holding provider; its
        answer as is, or 503 naming it when it cannot be reached or fails (5xx)."""
        url = f"{candidate.base_url}/responses/{quote(response_id, safe='')}{suffix}"
        if query:
            url += "?" + query.decode("latin-1")
        try:
            answer = await self._client.request(
                method, url, candidate.headers, None, candidate.timeout_s
            )
        except UpstreamFailure as failure:
            raise provider_unavailable(candidate.provider, response_id, failure.message) from None
        if answer.status >= 500:
            raise provider_unavailable(
                candidate.provider, response_id, f"it answered HTTP {answer.status}"
            )
        return answer
