"""The OpenAPI document (docs/api/admin.md): it is a valid OpenAPI 3 document, it describes every
route, and schemathesis, generating requests from it for a bounded number of cases, finds no
input that yields a 5xx or a body that is not an error in the route's shape (OpenAI's, or
Anthropic's on /v1/messages*).  All in process: the app is driven through ASGI, only the fake
provider listens on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate

from service.app import App
from service.gateway import Gateway
from tests.inprocess import ADMIN_TOKEN, client, inprocess_settings, running_app

# Per operation (33 operations): about 500 requests.
MAX_EXAMPLES = 15

EVERY_ROUTE = {
    ("post", "/v1/chat/completions"),
    ("post", "/chat/completions"),
    ("post", "/v1/embeddings"),
    ("post", "/embeddings"),
    ("post", "/v1/responses"),
    ("get", "/v1/responses/{response_id}"),
    ("delete", "/v1/responses/{response_id}"),
    ("get", "/v1/responses/{response_id}/input_items"),
    ("post", "/v1/responses/{response_id}/cancel"),
    ("post", "/v1/completions"),
    ("post", "/completions"),
    ("post", "/v1/messages"),
    ("post", "/v1/messages/count_tokens"),
    ("get", "/v1/models/{model_id}"),
    ("get", "/models/{model_id}"),
    ("get", "/v1/models"),
    ("get", "/models"),
    ("get", "/health"),
    ("get", "/ok"),
    ("get", "/ready"),
    ("get", "/metrics"),
    ("get", "/stats"),
    ("get", "/admin/tokens"),
    ("post", "/admin/tokens"),
    ("get", "/admin/tokens/{token_id}"),
    ("patch", "/admin/tokens/{token_id}"),
    ("delete", "/admin/tokens/{token_id}"),
    ("get", "/admin/teams"),
    ("post", "/admin/teams"),
    ("get", "/admin/teams/{team_id}"),
    ("patch", "/admin/teams/{team_id}"),
    ("delete", "/admin/teams/{team_id}"),
    ("get", "/admin/usage"),
}


@pytest.fixture
async def document(single_provider_config: Path, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    settings = inprocess_settings(single_provider_config, tmp_path, env={"P_KEY": "k"})
    async with running_app(settings) as app, client(app, token=None) as http:
        response = await http.get("/openapi.json")
        assert response.status_code == 200
        docs = await http.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        yield response.json()


@pytest.mark.anyio
async def test_the_document_is_valid_openapi_and_describes_every_route(
    document: dict[str, Any],
) -> None:
    validate(document)
    routes = {(m, path) for path, ops in document["paths"].items() for m in ops}
    assert routes == EVERY_ROUTE
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            # Validation errors are the gateway's 400, never FastAPI's 422 body.
            assert "422" not in operation["responses"], (method, path)
    chat = document["paths"]["/v1/chat/completions"]["post"]
    body = chat["requestBody"]["content"]["application/json"]["schema"]
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    assert body == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    components = document["components"]["schemas"]
    assert {"model", "messages", "stream"} <= set(components["ChatCompletionRequest"]["properties"])
    create = document["paths"]["/admin/tokens"]["post"]["requestBody"]["content"]
    assert create["application/json"]["schema"] == {"$ref": "#/components/schemas/TokenCreate"}
    # Unknown keys in admin bodies are errors, and the document says so.
    assert components["TokenCreate"]["additionalProperties"] is False


@pytest.mark.anyio
async def test_the_document_describes_anthropics_messages_routes(
    document: dict[str, Any],
) -> None:
    paths = document["paths"]
    assert set(paths["/v1/messages"]) == {"post"}
    assert set(paths["/v1/messages/count_tokens"]) == {"post"}
    message, count = paths["/v1/messages"]["post"], paths["/v1/messages/count_tokens"]["post"]
    components = document["components"]["schemas"]

    def body(operation: dict[str, Any]) -> dict[str, Any]:
        ref: str = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        schema: dict[str, Any] = components[ref.rsplit("/", 1)[1]]
        return schema

    assert {"model", "messages", "max_tokens"} <= set(body(message)["required"])
    assert "max_tokens" not in body(count).get("required", [])
    answer = message["responses"]["200"]["content"]
    assert answer["application/json"]["schema"] == {"$ref": "#/components/schemas/MessageAnswer"}
    events = answer["text/event-stream"]["schema"]["properties"]["event"]["enum"]
    assert {"message_start", "content_block_delta", "message_stop", "error"} <= set(events)
    usage = components["MessagesUsage"]["properties"]
    assert {"cache_read_input_tokens", "cache_creation_input_tokens"} <= set(usage)
    assert count["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TokenCount"
    }
    # Errors in Anthropic's shape; 529 when the providers are overloaded, and a count is
    # never refused for its model or a provider.
    anthropic_error = {"$ref": "#/components/schemas/AnthropicErrorBody"}
    statuses = {"400", "401", "403", "404", "413", "429", "502", "503", "504", "529"}
    assert set(message["responses"]) == {"200", *statuses}
    assert set(count["responses"]) == {"200", "400", "401", "403", "413", "503"}
    for operation in (message, count):
        for status, response in operation["responses"].items():
            if status != "200":
                assert response["content"]["application/json"]["schema"] == anthropic_error
    assert "overloaded_error" in message["responses"]["529"]["description"]
    # The token goes in x-api-key or a bearer, either.
    assert message["security"] == [{"HTTPBearer": []}, {"ApiKey": []}]
    api_key = document["components"]["securitySchemes"]["ApiKey"]
    assert (api_key["type"], api_key["in"], api_key["name"]) == ("apiKey", "header", "x-api-key")


# -- schemathesis --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzzed_app(
    single_provider_config: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[App]:
    """One token that is both a user and an admin token, so every route is reachable."""
    settings = inprocess_settings(
        single_provider_config,
        tmp_path_factory.mktemp("fuzz-data"),
        auth_tokens=(ADMIN_TOKEN,),
        env={"P_KEY": "k"},
    )
    yield App(Gateway.build(settings))
    # schemathesis ran the app's lifespan (the gateway's start) in its own event loop.
    schemathesis.python.asgi.shutdown_lifespans()


@pytest.mark.slow  # hundreds of generated requests
def test_generated_requests_never_get_a_5xx(fuzzed_app: App) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.lower(), op.path) for op in operations} == EVERY_ROUTE
    calls: dict[str, int] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def no_5xx(case: Any) -> None:
            response = case.call(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            calls[case.operation.label] = calls.get(case.operation.label, 0) + 1
            where = f"{case.method} {case.formatted_path} -> {response.status_code}: "
            where += response.text[:300]
            assert response.status_code < 500, where
            if response.status_code >= 400:
                answer = response.json()
                error = answer["error"]
                if case.formatted_path.startswith("/v1/messages"):
                    assert answer["type"] == "error", where
                    assert {"type", "message"} <= set(error) <= {"type", "message", "code"}, where
                else:
                    assert set(error) == {"message", "type", "param", "code"}, where
                assert error["message"], where

        no_5xx()
    assert len(calls) == len(EVERY_ROUTE)
