"""Responses of the FastAPI routes: JSON rendered by orjson (as on the hot routes), and the
one exception handler of the FastAPI side: every exception becomes one of the gateway's own,
rendered by ``service.api.errors`` like on the hot routes."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route

from service import errors
from service.api.errors import INTERNAL
from service.api.http import ClientGone, error_response
from service.validation import Problem, problems

log = logging.getLogger("best.http")


def orjson_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def as_gateway_error(request: Request, exc: Exception) -> errors.GatewayError:
    """The gateway's own error for anything raised while serving a FastAPI route."""
    if isinstance(exc, errors.GatewayError):
        return exc
    if isinstance(exc, RequestValidationError):
        return _invalid_request(exc)
    if isinstance(exc, HTTPException):
        # Starlette raises these for paths and methods it has no route for.
        if exc.status_code == 405:
            return errors.method_not_allowed(request.method, _methods_of(request))
        if exc.status_code == 404:
            return errors.not_found(f"No route {request.method} {request.url.path}.")
        return errors.bad_request(str(exc.detail))
    if isinstance(exc, ClientGone):
        return errors.bad_request("The client closed the connection.")
    log.error("%s %s: unexpected error", request.method, request.url.path, exc_info=exc)
    return INTERNAL


async def render_error(request: Request, exc: Exception) -> Response:
    """The one exception handler of the FastAPI app (registered for every exception type)."""
    rendered = error_response(as_gateway_error(request, exc))
    response = Response(rendered.body, status_code=rendered.status)
    response.raw_headers = [
        *rendered.headers,
        (b"content-length", str(len(rendered.body)).encode()),
    ]
    return response


def _methods_of(request: Request) -> set[str]:
    """Every method some route answers on the request's path (Starlette's own 405 names only
    the first route matching the path, and a path here has one route per method)."""
    routes: list[Route] = request.app.state.routes  # built by create_ops_app
    allowed: set[str] = set()
    for route in routes:
        if route.matches(request.scope)[0] != Match.NONE:
            allowed |= route.methods or set()
    return allowed


def invalid_request(found: list[Problem]) -> errors.GatewayError:
    """400 listing every problem; ``param`` names the first field at fault."""
    text = "; ".join(f"{p.where}: {p.text}" if p.loc else p.text for p in found)
    return errors.bad_request(f"Invalid request: {text}.", param=found[0].where if found else None)


def _invalid_request(exc: RequestValidationError) -> errors.GatewayError:
    """FastAPI's 422 (a bad path or query parameter, a body it parsed) becomes the gateway's 400."""
    if any(error.get("type") == "json_invalid" for error in exc.errors()):
        return errors.bad_request("Request body is not valid JSON.", code="invalid_json")
    return invalid_request(problems(exc.errors(), drop=("body", "path", "query", "header")))
