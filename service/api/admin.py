"""/admin/tokens and /admin/teams: management for holders of an ADMIN_TOKENS bearer.

Bodies are validated by ``service.api.schemas`` (every error named by its field, unknown keys
refused); the registry stores what they say.  Its errors (unknown id, store down) are the
gateway's own exceptions, rendered by the app's one handler.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi import Path as PathParam
from fastapi.responses import Response

from service import errors
from service.api.dependencies import GatewayDep, admin_caller, body_doc, json_body
from service.api.ops_errors import orjson_response
from service.api.schemas import (
    ErrorBody,
    TeamCreate,
    TeamList,
    TeamRecord,
    TeamUpdate,
    TokenCreate,
    TokenCreated,
    TokenList,
    TokenRecord,
    TokenUpdate,
    UsageList,
)
from service.gateway import Gateway
from service.quotas.ledger import GroupBy
from service.quotas.teams import to_team
from service.quotas.tokens import to_record

router = APIRouter(
    prefix="/admin/tokens",
    tags=["admin"],
    dependencies=[Depends(admin_caller)],
    responses={
        404: {"model": ErrorBody, "description": "Unknown or revoked token, or admin API off"},
        409: {"model": ErrorBody, "description": "The team named does not exist"},
    },
)

teams_router = APIRouter(
    prefix="/admin/teams",
    tags=["admin"],
    dependencies=[Depends(admin_caller)],
    responses={404: {"model": ErrorBody, "description": "Unknown team, or admin API off"}},
)


async def _settle_pending(gw: Gateway) -> None:
    """Send this replica's settlements still waiting for a ride before a usage view reads the
    store: a finished request's lease is held there until its settlement arrives, and the
    token's next admission here would release it first.  So the view counts in flight what
    that admission counts, not the requests that finished a moment ago."""
    await gw.quotas.flush()


TokenId = Annotated[
    str, PathParam(pattern=r"^[0-9a-f]{1,64}$", description="first 16 hex of the token's SHA-256")
]


@router.get("", response_model=TokenList, summary="Every token, with its usage")
async def list_tokens(gw: GatewayDep) -> Response:
    await _settle_pending(gw)
    return orjson_response({"object": "list", "data": await gw.tokens.list()})


@router.post(
    "",
    status_code=201,
    response_model=TokenCreated,
    openapi_extra=body_doc(TokenCreate),
    summary="Create a token (the raw token is in the answer, once)",
)
async def create_token(
    gw: GatewayDep, body: Annotated[TokenCreate, Depends(json_body(TokenCreate))]
) -> Response:
    return orjson_response(await gw.tokens.create(body.model_dump()), status=201)


async def _live_token(gw: Gateway, token_id: str) -> dict[str, Any]:
    """The token's record; 404 once it is revoked (DELETE is the end of a token's life by id:
    only the list still shows it, with ``revoked: true``)."""
    record = to_record(await gw.tokens.get(token_id))
    if record["revoked"]:
        raise errors.not_found(f"Token {token_id!r} was revoked.", code="token_revoked")
    return record


@router.get("/{token_id}", response_model=TokenRecord, summary="One token")
async def get_token(gw: GatewayDep, token_id: TokenId) -> Response:
    return orjson_response(await _live_token(gw, token_id))


@router.patch(
    "/{token_id}",
    response_model=TokenRecord,
    openapi_extra=body_doc(TokenUpdate),
    summary="Change name, limits or expiry (only the keys sent)",
)
async def update_token(
    gw: GatewayDep,
    token_id: TokenId,
    body: Annotated[TokenUpdate, Depends(json_body(TokenUpdate))],
) -> Response:
    await _live_token(gw, token_id)
    # exclude_unset: a key sent as null clears it; a key not sent stays as it is.
    return orjson_response(await gw.tokens.update(token_id, body.model_dump(exclude_unset=True)))


@router.delete("/{token_id}", response_model=TokenRecord, summary="Revoke a token")
async def revoke_token(gw: GatewayDep, token_id: TokenId) -> Response:
    await _live_token(gw, token_id)
    return orjson_response(await gw.tokens.revoke(token_id))


# -- teams ------------------------------------------------------------------------------------

TeamPath = Annotated[str, PathParam(pattern=r"^[a-z0-9_-]{1,64}$", description="the team's id")]


@teams_router.get("", response_model=TeamList, summary="Every team, with its token count")
async def list_teams(gw: GatewayDep) -> Response:
    await _settle_pending(gw)
    return orjson_response({"object": "list", "data": await gw.teams.list()})


@teams_router.post(
    "",
    status_code=201,
    response_model=TeamRecord,
    openapi_extra=body_doc(TeamCreate),
    responses={409: {"model": ErrorBody, "description": "The id is taken"}},
    summary="Create a team",
)
async def create_team(
    gw: GatewayDep, body: Annotated[TeamCreate, Depends(json_body(TeamCreate))]
) -> Response:
    return orjson_response(await gw.teams.create(body.model_dump(exclude_none=True)), status=201)


@teams_router.get("/{team_id}", response_model=TeamRecord, summary="One team")
async def get_team(gw: GatewayDep, team_id: TeamPath) -> Response:
    fields = await gw.teams.get(team_id)
    await _settle_pending(gw)
    return orjson_response({**to_team(fields), **await gw.teams.spend(fields)})


@teams_router.patch(
    "/{team_id}",
    response_model=TeamRecord,
    openapi_extra=body_doc(TeamUpdate),
    summary="Change name, limits or budget (only the keys sent)",
)
async def update_team(
    gw: GatewayDep,
    team_id: TeamPath,
    body: Annotated[TeamUpdate, Depends(json_body(TeamUpdate))],
) -> Response:
    return orjson_response(await gw.teams.update(team_id, body.model_dump(exclude_unset=True)))


@teams_router.delete(
    "/{team_id}",
    response_model=TeamRecord,
    responses={409: {"model": ErrorBody, "description": "Active tokens still belong to it"}},
    summary="Delete a team (refused while active tokens belong to it)",
)
async def delete_team(gw: GatewayDep, team_id: TeamPath) -> Response:
    return orjson_response(await gw.teams.delete(team_id))


# -- usage ------------------------------------------------------------------------------------

usage_router = APIRouter(
    prefix="/admin/usage", tags=["admin"], dependencies=[Depends(admin_caller)]
)


_DATE: dict[str, Any] = {"format": "date"}


@usage_router.get(
    "",
    response_model=UsageList,
    summary="Spend and tokens from the usage ledger, grouped (UTC days, inclusive)",
)
async def usage(
    gw: GatewayDep,
    group_by: Annotated[GroupBy, Query(description="the ledger's grouping")] = "team",
    start: Annotated[
        str | None,
        Query(
            alias="from",
            description="YYYY-MM-DD; default: 1st of to's month",
            json_schema_extra=_DATE,
        ),
    ] = None,
    end: Annotated[
        str | None,
        Query(alias="to", description="YYYY-MM-DD; default: today", json_schema_extra=_DATE),
    ] = None,
) -> Response:
    rows = await gw.quotas.ledger.query(group_by, start, end)
    if group_by == "token":  # an identity's name says whose it is: "<issuer>:<claim>"
        names = {r.id: r.fields.get("name") for r in gw.tokens.cached("token")}
        for row in rows:
            row["name"] = names.get(row["token"] or "") or None
    return orjson_response({"object": "list", "data": rows})
