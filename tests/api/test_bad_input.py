"""Bad input, in process: every case answers the right status and an OpenAI error body, never
reaches a provider, and nothing yields a 500 (docs/api/openai.md, "Errors").  Sync tests: the
app runs on a loop of its own (``BackgroundApp``), a real fake provider on loopback behind it."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import STABLE_SCORING, assert_openai_error, chat_body
from tests.fakes.upstream import FakeProvider
from tests.harness import write_config
from tests.inprocess import USER_TOKEN as TOKEN
from tests.inprocess import BackgroundApp, inprocess_settings, provider_entry, provider_keys

MAX_BODY_BYTES = 4096


@dataclass
class Fleet:
    """The one provider (``only``) and the app in front of it."""

    provider: FakeProvider
    background: BackgroundApp

    def reset(self) -> None:
        self.provider.release()
        self.provider.clear_behaviors()
        self.provider.clear()

    def http(
        self, token: str | None = TOKEN, headers: dict[str, str] | None = None
    ) -> httpx.Client:
        return self.background.client(token, headers)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    directory = tmp_path_factory.mktemp("bad-input")
    with FakeProvider(["chat-1", "embed-1"], api_key="k") as provider:
        entry = provider_entry("only", provider.base_url, 1.0, models=["chat-1", "embed-1"])
        config = write_config(directory / "config", [entry], scoring=STABLE_SCORING)
        settings = inprocess_settings(
            config,
            directory / "data",
            auth_tokens=(TOKEN,),
            max_body_bytes=MAX_BODY_BYTES,
            env=provider_keys(["only"]),
        )
        with BackgroundApp(settings) as background:
            yield Fleet(provider, background)


@pytest.fixture
def http(fleet: Fleet) -> Iterator[httpx.Client]:
    fleet.reset()
    with fleet.http() as client:
        yield client
    assert fleet.provider.chat_requests == 0, "bad input reached the provider"
    assert fleet.provider.embedding_requests == 0, "bad input reached the provider"


def post_raw(http: httpx.Client, path: str, content: bytes) -> httpx.Response:
    return http.post(path, content=content, headers={"content-type": "application/json"})


# -- bodies that are not a usable JSON object ----------------------------------------------

NOT_AN_OBJECT = [
    pytest.param(b"", id="empty"),
    pytest.param(b"   \n", id="blank"),
    pytest.param(b'{"model": "chat-1", "messages": [', id="truncated-json"),
    pytest.param(b"{'model': 'chat-1'}", id="single-quotes"),
    pytest.param(b"\xff\xfe\x00garbage", id="not-utf8"),
    pytest.param(b"[" * 1500 + b"]" * 1500, id="too-deep"),
    pytest.param(b"[1, 2, 3]", id="array"),
    pytest.param(b'"a string"', id="string"),
    pytest.param(b"42", id="number"),
    pytest.param(b"null", id="null"),
]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"])
@pytest.mark.parametrize("content", NOT_AN_OBJECT)
def test_body_that_is_not_a_json_object_is_400(
    http: httpx.Client, path: str, content: bytes
) -> None:
    assert_openai_error(post_raw(http, path, content), 400)


def test_invalid_json_says_so(http: httpx.Client) -> None:
    error = assert_openai_error(post_raw(http, "/v1/chat/completions", b"{nope"), 400)
    assert error["code"] == "invalid_json"
    assert "JSON" in error["message"]


def _nested(levels: int) -> bytes:
    """A JSON list ``levels`` deep, as a field of the body (the body itself is one level)."""
    return b"[" * (levels - 1) + b"]" * (levels - 1)


@pytest.mark.parametrize("levels", [255, 600, 1024])
@pytest.mark.parametrize(
    ("path", "template"),
    [
        pytest.param("/v1/chat/completions", b'{"model": "chat-1", "tools": %s}', id="chat"),
        pytest.param(
            "/v1/chat/completions",
            b'{"model": "chat-1", "stream": true, "tools": %s}',
            id="stream",
        ),
        pytest.param("/v1/embeddings", b'{"model": "embed-1", "input": %s}', id="embeddings"),
    ],
)
def test_json_nested_deeper_than_the_limit_is_400_naming_it(
    http: httpx.Client, path: str, template: bytes, levels: int
) -> None:
    error = assert_openai_error(post_raw(http, path, template % _nested(levels)), 400)
    assert "254 levels" in error["message"]


def test_json_nested_up_to_the_limit_is_served(fleet: Fleet) -> None:
    fleet.reset()
    body = b'{"model": "chat-1", "messages": [{"role": "user", "content": "hi"}], "x": %s}'
    with fleet.http() as http:
        response = post_raw(http, "/v1/chat/completions", body % _nested(254))
    assert response.status_code == 200, response.text


# -- well-formed JSON with fields of the wrong type ----------------------------------------

WRONG_CHAT_FIELDS = [
    pytest.param({"model": 7}, "model", id="model-int"),
    pytest.param({"model": ["chat-1"]}, "model", id="model-list"),
    pytest.param({"messages": "hello"}, "messages", id="messages-string"),
    pytest.param({"messages": {"role": "user"}}, "messages", id="messages-object"),
    pytest.param({"messages": []}, "messages", id="messages-empty"),
    pytest.param({"messages": ["hi"]}, "messages", id="messages-of-strings"),
    pytest.param({"messages": None}, "messages", id="messages-null"),
    pytest.param({"stream": "yes"}, "stream", id="stream-string"),
    pytest.param({"stream": 1}, "stream", id="stream-int"),
    pytest.param({"max_tokens": -1}, "max_tokens", id="max_tokens-negative"),
    pytest.param({"max_tokens": "10"}, "max_tokens", id="max_tokens-string"),
    pytest.param({"max_tokens": 1.5}, "max_tokens", id="max_tokens-float"),
    pytest.param({"max_tokens": True}, "max_tokens", id="max_tokens-bool"),
    pytest.param({"max_completion_tokens": -5}, "max_completion_tokens", id="max_completion"),
    pytest.param({"stream": True, "stream_options": "usage"}, "stream_options", id="options"),
]


@pytest.mark.parametrize(("override", "param"), WRONG_CHAT_FIELDS)
def test_chat_field_of_the_wrong_type_is_400_naming_it(
    http: httpx.Client, override: dict[str, Any], param: str
) -> None:
    body = {**chat_body("chat-1"), **override}
    response = http.post("/v1/chat/completions", json=body)
    error = assert_openai_error(response, 400)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_chat_without_messages_is_400(http: httpx.Client) -> None:
    error = assert_openai_error(http.post("/v1/chat/completions", json={"model": "chat-1"}), 400)
    assert error["param"] == "messages"


WRONG_EMBEDDING_BODIES = [
    pytest.param({"input": "x"}, "model", id="no-model"),
    pytest.param({"model": 3, "input": "x"}, "model", id="model-int"),
    pytest.param({"model": "embed-1"}, "input", id="no-input"),
    pytest.param({"model": "embed-1", "input": ""}, "input", id="empty-input"),
    pytest.param({"model": "embed-1", "input": []}, "input", id="empty-list"),
    pytest.param({"model": "embed-1", "input": 5}, "input", id="input-int"),
]


@pytest.mark.parametrize(("body", "param"), WRONG_EMBEDDING_BODIES)
def test_embeddings_with_wrong_fields_is_400(
    http: httpx.Client, body: dict[str, Any], param: str
) -> None:
    error = assert_openai_error(http.post("/v1/embeddings", json=body), 400)
    assert error["param"] == param


# -- size, routes, methods ------------------------------------------------------------------


def test_body_over_max_body_bytes_is_413(http: httpx.Client) -> None:
    body = chat_body("chat-1", text="x" * MAX_BODY_BYTES)
    error = assert_openai_error(http.post("/v1/chat/completions", json=body), 413)
    assert error["code"] == "payload_too_large"
    assert_openai_error(http.post("/v1/embeddings", json={"model": "embed-1", "input": body}), 413)


def test_chunked_body_over_the_limit_is_413(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while reading
        yield b'{"model": "chat-1", "messages": [{"role": "user", "content": "'
        for _ in range(MAX_BODY_BYTES // 512 + 2):
            yield b"y" * 512
        yield b'"}]}'

    response = http.post("/v1/chat/completions", content=chunks())
    assert_openai_error(response, 413, "payload_too_large")


def test_body_just_under_the_limit_is_served(fleet: Fleet, http: httpx.Client) -> None:
    body = chat_body("chat-1", text="z" * (MAX_BODY_BYTES - 200))
    assert len(json.dumps(body)) < MAX_BODY_BYTES
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    fleet.reset()  # this one was meant to reach the provider


@pytest.mark.parametrize("path", ["/v1/nothing", "/v2/chat/completions", "/", "/admin/x"])
def test_unknown_route_is_404(http: httpx.Client, path: str) -> None:
    assert_openai_error(http.get(path), 404)
    assert_openai_error(http.post(path, json={}), 404)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/chat/completions"),
        ("PUT", "/v1/chat/completions"),
        ("GET", "/v1/embeddings"),
        ("POST", "/v1/models"),
        ("DELETE", "/v1/models"),
        ("POST", "/health"),
        ("POST", "/metrics"),
    ],
)
def test_wrong_method_is_405(http: httpx.Client, method: str, path: str) -> None:
    assert_openai_error(http.request(method, path), 405)


# -- authentication --------------------------------------------------------------------------

PROTECTED = [
    ("POST", "/v1/chat/completions", chat_body("chat-1")),
    ("POST", "/chat/completions", chat_body("chat-1")),
    ("POST", "/v1/embeddings", {"model": "embed-1", "input": "x"}),
    ("GET", "/v1/models", None),
    ("GET", "/models", None),
    ("GET", "/stats", None),
]


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-the-token", "Bearer", f"Basic {TOKEN}", TOKEN, "Bearer sk-best-client"],
    ids=["missing", "unknown", "empty", "basic-scheme", "no-scheme", "prefix-of-token"],
)
def test_missing_or_unknown_token_is_401_with_www_authenticate(
    fleet: Fleet,
    http: httpx.Client,
    method: str,
    path: str,
    body: Any,
    authorization: str | None,
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    with fleet.http(token=None, headers=headers) as anonymous:
        response = anonymous.request(method, path, json=body)
    assert_openai_error(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


# -- random bodies ---------------------------------------------------------------------------


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["int", "float", "str", "bool", "null", "neg"]
    if depth < 3:
        kinds += ["list", "dict"]
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.randint(-(2**70), 2**70)
    if kind == "neg":
        return -rng.randint(0, 10)
    if kind == "float":
        return rng.choice([0.0, -1.5, 1e308, 3.14])
    if kind == "str":
        return rng.choice(["", "chat-1", "priority-auto", "a,b", "only/chat-1", "\u0000\u2603"])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    keys = ["role", "content", "model", "messages", "stream", "max_tokens", "x"]
    return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def _mutations(seed: int, count: int) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    fields = ["model", "messages", "stream", "max_tokens", "stream_options", "tools", "input"]
    for _ in range(count):
        body: dict[str, Any] = chat_body("chat-1")
        for _ in range(rng.randint(1, 3)):
            name = rng.choice(fields)
            if rng.random() < 0.2:
                body.pop(name, None)
            else:
                body[name] = _random_value(rng)
        yield body


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"])
def test_random_bodies_never_yield_a_500(
    fleet: Fleet, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    with fleet.http() as http:
        for body in _mutations(seed=len(path), count=150):
            response = http.post(path, json=body)
            assert response.status_code < 500 or response.status_code in (502, 503, 504), (
                body,
                response.text,
            )
            if response.status_code != 200:
                assert_openai_error(response, response.status_code)
            elif body.get("stream") is True:
                assert response.text.rstrip().endswith("data: [DONE]")
    assert not [r for r in caplog.records if r.exc_info], "an error was logged with a traceback"
    fleet.reset()


# -- the token comes first (issue: auth before anything) --------------------------------------


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (b'{"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}', "model"),
        (b"{not json", "json"),
        (b"x" * (MAX_BODY_BYTES * 4), "oversized"),
        (b"[" * 300 + b"]" * 300, "deep"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"])
def test_a_wrong_token_is_401_whatever_the_body_says(
    fleet: Fleet, path: str, body: bytes, what: str
) -> None:
    fleet.reset()  # an earlier test's served request is not this one's
    headers = {"Authorization": "Bearer sk-wrong", "Content-Type": "application/json"}
    with fleet.http(token=None) as anonymous:
        response = anonymous.post(path, content=body, headers=headers)
    assert_openai_error(response, 401)
    assert fleet.provider.chat_requests == 0 and fleet.provider.embedding_requests == 0
