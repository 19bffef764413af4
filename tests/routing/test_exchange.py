"""What an attempt sends: the client's own bytes when the candidate's model is the one it
named, else its body with ``model`` replaced."""

from __future__ import annotations

import orjson

from service.apis import Api
from service.routing.exchange import ForwardExchange
from service.routing.scoring import Score
from service.routing.table import Candidate

RAW = b'{ "model": "llama-3",\n  "messages": [{"role": "user", "content": "hi"}] }'
BODY = orjson.loads(RAW)


def candidate(model: str) -> Candidate:
    score = Score(leaderboard=0, params_b=0, context=0, adjustment=0, total=1)
    return Candidate.build("p", model, score, "http://upstream/v1", "key", 30)


def test_the_clients_bytes_go_to_a_candidate_of_the_model_it_named() -> None:
    url, headers, payload = ForwardExchange(Api.CHAT, BODY, raw=RAW).request(candidate("llama-3"))
    assert payload is RAW
    assert url == "http://upstream/v1/chat/completions"
    assert headers["Authorization"] == "Bearer key"


def test_another_model_gets_the_body_with_its_model() -> None:
    exchange = ForwardExchange(Api.CHAT, BODY, raw=RAW)
    _, _, payload = exchange.request(candidate("llama-3.3-70b"))
    assert orjson.loads(payload) == {**BODY, "model": "llama-3.3-70b"}


def test_without_raw_bytes_the_body_is_serialized() -> None:
    _, _, payload = ForwardExchange(Api.EMBEDDINGS, BODY).request(candidate("llama-3"))
    assert orjson.loads(payload) == BODY and payload != RAW
