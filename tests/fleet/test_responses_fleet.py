"""Sticky conversations across a fleet: two gateway replicas on one real Redis, two
Responses-capable fake providers, driven by the real openai SDK.

``alpha`` ranks first for every model; a conversation created at ``beta`` must still go to
``beta`` on every turn, from either replica, and never to ``alpha``, even when ``beta`` is down.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest

from tests.fakes.upstream import FakeProvider
from tests.harness import GatewayProcess, RedisServer, write_config

pytestmark = pytest.mark.slow  # every test here runs gateway processes (and Redis servers)

TOKEN = "fleet-token"
ADMIN = "fleet-admin"
ALL = ["chat", "embeddings", "responses", "completions"]
MODELS = ["conv-model", "down-model", "items-model", "quota-model"]


@dataclass
class Pair:
    redis: RedisServer
    replicas: list[GatewayProcess]
    alpha: FakeProvider
    beta: FakeProvider

    def client(self, replica: int, token: str = TOKEN) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.replicas[replica].url + "/v1", api_key=token, max_retries=0, timeout=20
        )


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    redis = RedisServer().start()
    alpha = FakeProvider(MODELS, api_key="key-a").start()
    beta = FakeProvider(MODELS, api_key="key-b").start()
    config = write_config(
        tmp_path_factory.mktemp("responses-fleet"),
        [
            {
                "name": name,
                "api_key_env_var": f"{name.upper()}_KEY",
                "base_url": fake.base_url,
                "base_priority": priority,
                "models": MODELS,
                "apis": ALL,
            }
            for name, fake, priority in (("alpha", alpha, 2), ("beta", beta, 1))
        ],
        scoring={"weights": {"health_penalty": 0}},
    )
    env = {
        "REDIS_URL": redis.url,
        "ALPHA_KEY": "key-a",
        "BETA_KEY": "key-b",
        "AUTH_TOKENS": TOKEN,
        "ADMIN_TOKENS": ADMIN,
        "LOG_LEVEL": "warning",
    }
    replicas = [GatewayProcess(config, env) for _ in range(2)]
    try:
        for replica in replicas:
            replica.start()
        yield Pair(redis, replicas, alpha, beta)
    finally:
        for replica in replicas:
            replica.stop()
        alpha.stop()
        beta.stop()
        redis.close()


@pytest.fixture(autouse=True)
def _clear(pair: Pair) -> None:
    for fake in (pair.alpha, pair.beta):
        fake.clear_behaviors()
        fake.clear()


def test_a_conversation_reaches_its_creating_provider_from_every_replica(pair: Pair) -> None:
    # Turn 1 at replica 0, pinned to beta; alpha ranks first for the model and is healthy.
    first = pair.client(0).responses.with_raw_response.create(model="beta/conv-model", input="one")
    assert first.headers["x-best-provider"] == "beta"
    previous = first.parse().id
    texts = []
    for turn, (replica, stream) in enumerate([(1, False), (0, True), (1, True), (0, False)]):
        client = pair.client(replica)
        if stream:
            raw = client.responses.with_raw_response.create(
                model="conv-model", input=f"turn {turn}", previous_response_id=previous, stream=True
            )
            events = list(raw.parse())
            assert events[-1].type == "response.completed"
            response = events[-1].response
        else:
            raw = client.responses.with_raw_response.create(
                model="conv-model", input=f"turn {turn}", previous_response_id=previous
            )
            response = raw.parse()
        assert raw.headers["x-best-provider"] == "beta", turn
        texts.append(response.output_text)
        previous = response.id
    # Each turn saw the one before it: the provider found the stored conversation.
    assert texts[0] == "echo: turn 0 | previous: echo: one"
    assert texts[3].startswith("echo: turn 3 | previous: echo: turn 2")
    assert pair.alpha.response_requests == 0
    assert pair.beta.response_requests == 5

    # The other way round: a conversation alpha created stays at alpha.
    at_alpha = pair.client(1).responses.create(model="conv-model", input="from alpha")
    follow = pair.client(0).responses.with_raw_response.create(
        model="conv-model", input="again", previous_response_id=at_alpha.id
    )
    assert follow.headers["x-best-provider"] == "alpha"
    assert pair.beta.response_requests == 5


def test_stored_response_calls_go_through_another_replica(pair: Pair) -> None:
    created = pair.client(0).responses.create(model="beta/items-model", input="keep this")
    other = pair.client(1)
    fetched = other.responses.with_raw_response.retrieve(created.id)
    assert fetched.headers["x-best-provider"] == "beta"
    assert fetched.parse().id == created.id
    assert fetched.parse().output_text == "echo: keep this"
    items = other.responses.input_items.list(created.id)
    assert [item.content[0].text for item in items.data] == ["keep this"]  # type: ignore[union-attr]
    cancelled = other.responses.cancel(created.id)
    assert cancelled.id == created.id and cancelled.status == "cancelled"
    other.responses.delete(created.id)
    assert created.id not in pair.beta.stored_responses
    # Gone at the provider: its 404 comes back through either replica.
    with pytest.raises(openai.NotFoundError):
        pair.client(0).responses.retrieve(created.id)
    stored_calls = [r for r in pair.beta.requests if r.path.startswith("/v1/responses/")]
    assert len(stored_calls) == 5
    assert not [r for r in pair.alpha.requests if r.path.startswith("/v1/responses")]


def test_a_down_creating_provider_gives_503_and_no_switch(pair: Pair) -> None:
    created = pair.client(0).responses.create(model="beta/down-model", input="before")
    pair.beta.stop()
    try:
        for replica, stream in ((1, False), (0, True)):
            with pytest.raises(openai.APIStatusError) as caught:
                pair.client(replica).responses.create(
                    model="down-model",
                    input="after",
                    previous_response_id=created.id,
                    stream=stream,
                )
            assert caught.value.status_code == 503
            assert "`beta`" in caught.value.message
        with pytest.raises(openai.APIStatusError) as fetching:
            pair.client(1).responses.retrieve(created.id)
        assert fetching.value.status_code == 503 and "`beta`" in fetching.value.message
        assert pair.alpha.response_requests == 0
        assert not [r for r in pair.alpha.requests if r.path.startswith("/v1/responses")]
    finally:
        pair.beta.start()


def test_usage_settles_the_token_quota(pair: Pair) -> None:
    """Each request reserves its prompt estimate plus max_output_tokens (120-odd tokens);
    settled to the upstream's real usage (a handful), three fit in a 250-token minute,
    which they would not if the reservations stood."""
    with httpx.Client(
        base_url=pair.replicas[0].url, headers={"Authorization": f"Bearer {ADMIN}"}
    ) as admin:
        made = admin.post("/admin/tokens", json={"name": "resp", "tpm": 250})
    assert made.status_code == 201, made.text
    token = made.json()["token"]
    for replica, stream in ((0, False), (1, True), (0, False)):
        client = pair.client(replica, token)
        raw = client.responses.with_raw_response.create(
            model="quota-model", input="a few words", max_output_tokens=100, stream=stream
        )
        assert raw.status_code == 200
        if stream:
            assert list(raw.parse())[-1].type == "response.completed"
    # The fourth would fit too; a reservation too big for the whole minute never does.
    with pytest.raises(openai.RateLimitError):
        pair.client(1, token).responses.create(
            model="quota-model", input="x", max_output_tokens=1000
        )
