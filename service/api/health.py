"""Liveness, readiness and the Prometheus scrape: no auth, cheap, never touching providers."""

from __future__ import annotations

from service.api.http import Request, Response, json_response
from service.gateway import Gateway


async def health(gw: Gateway, request: Request) -> Response:
    store = "embedded" if not gw.store.shared else ("degraded" if gw.store.degraded else "redis")
    return json_response(
        {
            "status": "ok",
            "store": store,
            "auth": "enabled" if gw.tokens.auth_enabled else "disabled",
            "draining": gw.draining,
        }
    )


async def ok(gw: Gateway, request: Request) -> Response:
    return Response(200, b"ok", [(b"content-type", b"text/plain")])


async def ready(gw: Gateway, request: Request) -> Response:
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
    return json_response(
        {"ready": not problems, "problems": problems, "routable_models": routable},
        status=503 if problems else 200,
    )


async def metrics(gw: Gateway, request: Request) -> Response:
    body, content_type = gw.metrics.render()
    return Response(200, body, [(b"content-type", content_type.encode())])
