"""Liveness, readiness and the Prometheus scrape: no auth, cheap, never touching providers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import Response

from service.api.dependencies import GatewayDep
from service.api.ops_errors import orjson_response
from service.api.schemas import Health, Readiness

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health, summary="Liveness, store and auth mode")
async def health(gw: GatewayDep) -> Response:
    store = "embedded" if not gw.store.shared else ("degraded" if gw.store.degraded else "redis")
    return orjson_response(
        {
            "status": "ok",
            "store": store,
            "auth": "enabled" if gw.tokens.auth_enabled else "disabled",
            "draining": gw.draining,
        }
    )


@router.get(
    "/ok",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    summary="Liveness: the process is up",
)
async def ok() -> Response:
    return Response(b"ok", media_type="text/plain")


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: the problems say why"}},
    summary="Readiness: store reachable, a model routable, not draining",
)
async def ready(gw: GatewayDep) -> Response:
    store_ok = await gw.store.ping() if gw.store.shared else True
    routable = gw.catalog.table.routable
    problems = []
    if gw.draining:
        problems.append("draining")
    if not gw.started:
        problems.append("starting")
    if not store_ok:
        problems.append("store unreachable")
    if routable == 0:
        problems.append("no routable model")
    return orjson_response(
        {"ready": not problems, "problems": problems, "routable_models": routable},
        status=503 if problems else 200,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {
                "text/plain": {"schema": {"type": "string"}},
                "application/openmetrics-text": {"schema": {"type": "string"}},
            }
        }
    },
    summary="Prometheus text format, or OpenMetrics with exemplars when the Accept header "
    "asks (every worker)",
)
async def metrics(gw: GatewayDep, accept: Annotated[str, Header()] = "") -> Response:
    body, content_type = gw.metrics.render(accept)
    return Response(body, media_type=content_type)
