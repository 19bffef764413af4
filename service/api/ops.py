"""The FastAPI app of the admin and operations surface (tokens, health, readiness, metrics,
stats, models) with its OpenAPI document (``/openapi.json``) and viewer (``/docs``).

``service.app.App`` hands it every path that is not a hot route.  Every error raised here,
FastAPI's own included (404, 405, validation), goes through ``render_error``: one OpenAI
error body everywhere, a 400 naming the field instead of FastAPI's 422.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException
from starlette.routing import Route

from service.api import admin, health, hot_routes, models, responses, stats
from service.api.ops_errors import render_error
from service.api.schemas import ErrorBody
from service.errors import GatewayError
from service.gateway import Gateway

DESCRIPTION = """OpenAI-compatible LLM gateway, which speaks Anthropic's Messages API too.
Chat, embeddings, responses, completions and messages are served by a plain ASGI edge for
speed; this document describes them too. Every error is `{"error": {"message", "type",
"param", "code"}}`, except on Anthropic's routes (`/v1/messages*`): `{"type": "error",
"error": {"type", "message"}}`."""


def create_ops_app(gateway: Gateway) -> FastAPI:
    app = FastAPI(
        title="BEST gateway",
        version="0.1.0",
        description=DESCRIPTION,
        redoc_url=None,
    )
    app.state.gateway = gateway
    routers = (
        hot_routes.router,
        models.router,
        responses.router,
        health.router,
        stats.router,
        admin.router,
        admin.teams_router,
        admin.usage_router,
    )
    for router in routers:
        app.include_router(router)
    # Every route, flat (the app nests included routers): what a 405's Allow is read from.
    app.state.routes = [
        route
        for route in (*app.routes, *(r for router in routers for r in router.routes))
        if isinstance(route, Route)
    ]
    for kind in (GatewayError, RequestValidationError, HTTPException, Exception):
        app.add_exception_handler(kind, render_error)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _finish(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    # Anthropic's routes are in the document, not in the app's router.
                    routes=[*app.routes, *hot_routes.anthropic_router.routes],
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


# Statuses every operation of a kind can answer, whatever the route: a route behind a token
# answers 401 without a valid one; a route reading a body answers 400 for one that is not JSON
# (or not an object) and 413 for one over its size limit.
_SECURED = {401: "Missing, unknown, revoked or expired token"}
_WITH_BODY = {
    400: "Invalid JSON or a malformed request; `param` names the field",
    413: "Body over the route's size limit",
}


def _finish(document: dict[str, Any]) -> dict[str, Any]:
    """Three fixes to what FastAPI generates.  Bodies that routes read themselves (declared
    with ``body_doc``) move into the components, referenced by name.  FastAPI's default 422,
    which this app never sends, becomes the 400 it does send, with the gateway's error body.
    Every operation declares the errors its kind answers (``_SECURED``, ``_WITH_BODY``)."""
    schemas: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    # ErrorBody is in the components: the hot routes document it.
    error = {"$ref": f"#/components/schemas/{ErrorBody.__name__}"}
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            content = operation.get("requestBody", {}).get("content", {})
            for media in content.values():
                schema = media.get("schema", {})
                if "title" in schema and "$ref" not in schema:
                    schemas.update(schema.pop("$defs", {}))
                    schemas.setdefault(schema["title"], schema)
                    media["schema"] = {"$ref": f"#/components/schemas/{schema['title']}"}
            answers = operation.get("responses", {})
            declared = dict(_SECURED) if operation.get("security") else {}
            if "requestBody" in operation:
                declared.update(_WITH_BODY)
            if answers.pop("422", None) is not None:
                declared[400] = "Invalid request; `param` names the field"
            for status, description in declared.items():
                answers.setdefault(
                    str(status),
                    {
                        "description": description,
                        "content": {"application/json": {"schema": error}},
                    },
                )
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return document
