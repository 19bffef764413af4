"""The bodies of the HTTP API as pydantic models.

Admin bodies (``TokenCreate``, ``TokenUpdate``, ``TeamCreate``, ``TeamUpdate``) are validated
by these models: unknown keys are errors, and every error names its field.  The other models
describe answers and the hot routes' bodies for the OpenAPI document only: the hot routes are
validated by hand in ``service.api.chat`` (cheaper than a model per request), and answers are
rendered as they are.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from service.quotas.tokens import MAX_BUDGET_USD, TokenError, iso_utc, parse_expiry
from service.settings import MAX_CACHE_TTL_S


def _not_bool_or_text(value: Any) -> Any:
    # `true` or "5" is not a limit; 5.0 is (JSON does not tell integers from floats).
    if isinstance(value, bool | str):
        raise ValueError("must be an integer")
    return value


Limit = Annotated[
    int,
    BeforeValidator(_not_bool_or_text),
    Field(ge=0, description="per minute (rpm, tpm) or at once; 0 or null = none"),
]
Name = Annotated[str, Field(strict=True), StringConstraints(strip_whitespace=True, min_length=1)]
Budget = Annotated[
    float,
    BeforeValidator(_not_bool_or_text),
    Field(ge=0, le=MAX_BUDGET_USD, description="USD per budget_period; null = no budget"),
]
CacheTtl = Annotated[
    int,
    BeforeValidator(_not_bool_or_text),
    Field(
        ge=0,
        le=MAX_CACHE_TTL_S,
        description="seconds a cached answer is served (response cache); 0 = off; null = "
        "not set (a token follows its team, a static token CACHE_DEFAULT_TTL_S)",
    ),
]
Period = Literal["day", "week", "month", "total"]
TeamId = Annotated[
    str,
    Field(strict=True, pattern=r"^[a-z0-9_-]{1,64}$", description="a-z, 0-9, '-', '_'"),
]


def _iso_time(value: str) -> str:
    # The registry's rule (format, range, not in the past), so there is one rule for expiry.
    try:
        moment = parse_expiry(value)
    except TokenError as exc:
        raise ValueError(str(exc).removeprefix("expires_at ")) from None
    assert moment is not None  # only None for None, which never reaches this validator
    return iso_utc(moment)


IsoTime = Annotated[
    str,
    Field(
        strict=True,
        description="ISO 8601; without a zone it is UTC",
        json_schema_extra={"format": "date-time"},
    ),
    AfterValidator(_iso_time),
]


class Body(BaseModel):
    """An admin request body: unknown keys are errors, never ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Named(Body):
    name: Name


class Renamed(Body):
    """An update: only the keys present change; null clears a value, but not the name."""

    name: Name | None = None

    @field_validator("name")
    @classmethod
    def _name_is_not_cleared(cls, value: str | None) -> str | None:
        # Runs only when the key is sent.
        if value is None:
            raise ValueError("cannot be null: it always has a name")
        return value


class Limits(Body):
    """The limits a token and a team both have; null = none.  (Listed after the name: the
    name's problem comes first in an error.)"""

    rpm: Limit | None = None
    tpm: Limit | None = None
    max_concurrency: Limit | None = None
    budget_usd: Budget | None = None
    budget_period: Period | None = None
    cache_ttl_s: CacheTtl | None = None


class TokenCreate(Limits, Named):
    team: TeamId | None = None
    expires_at: IsoTime | None = None


class TokenUpdate(Limits, Renamed):
    """Null also clears the team or the expiry."""

    team: TeamId | None = None
    expires_at: IsoTime | None = None


class TeamCreate(Limits, Named):
    id: TeamId | None = Field(None, description="default: team-<12 hex>")


class TeamUpdate(Limits, Renamed):
    pass


# -- answers (documentation) ------------------------------------------------------------------


class Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class TokenUsage(Answer):
    requests_last_minute: int
    tokens_last_minute: int
    in_flight: int
    budget_spent_usd: float | None = None
    budget_reserved_usd: float | None = None


class TokenRecord(Answer):
    id: str
    name: str
    kind: Literal["static", "managed", "identity"]
    team: str | None = None
    rpm: int | None
    tpm: int | None
    max_concurrency: int | None
    budget_usd: float | None = None
    budget_period: Period | None = None
    cache_ttl_s: int | None = None
    created_at: str | None
    expires_at: str | None
    revoked: bool
    usage: TokenUsage | None = None


class TokenCreated(TokenRecord):
    token: str = Field(description="the raw token: shown once, never stored")


class TokenList(Answer):
    object: Literal["list"]
    data: list[TokenRecord]


class TeamRecord(Answer):
    id: str
    name: str
    rpm: int | None
    tpm: int | None
    max_concurrency: int | None
    budget_usd: float | None
    budget_period: Period | None
    cache_ttl_s: int | None = None
    created_at: str | None
    tokens: int | None = Field(None, description="active tokens of the team (in lists)")
    budget_spent_usd: float | None = Field(None, description="settled spend, current period")
    budget_reserved_usd: float | None = Field(None, description="held by requests in flight")


class TeamList(Answer):
    object: Literal["list"]
    data: list[TeamRecord]


class UsageRow(Answer):
    """One group of the ledger; the key is named after ``group_by`` (null: no team/token)."""

    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    unpriced_requests: int
    name: str | None = Field(
        None, description="group_by=token: the token's name (an identity's <issuer>:<claim>)"
    )
    cached_requests: int = Field(
        0,
        description="of the requests, those answered from the response cache (no tokens, no cost)",
    )


class UsageList(Answer):
    object: Literal["list"]
    data: list[UsageRow]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """Every error of every route, OpenAI-shaped."""

    error: ErrorDetail


class Health(Answer):
    status: Literal["ok"]
    store: Literal["embedded", "redis", "degraded"]
    auth: Literal["enabled", "disabled"]
    draining: bool


class Readiness(Answer):
    ready: bool
    problems: list[str]
    routable_models: int


class ModelObject(Answer):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    providers: list[str] | None = None


class ProviderScore(Answer):
    static: float = Field(description="leaderboard, size, context and adjustments x priority")
    live: float = Field(description="what recent fleet-wide health adds (<= 0)")
    live_factor: float = Field(
        description="the fleet-wide live factor (error rate, time to first byte) the static "
        "score is multiplied by; 1 = no adjustment (see live: in scoring.yaml)"
    )
    total: float


class ModelProvider(Answer):
    provider: str
    model: str
    score: ProviderScore
    breaker: Literal["closed", "open", "half_open"] = Field(
        description="the pair's circuit breaker; half_open: one probe at a time, fleet-wide"
    )
    provider_cooling: bool = Field(
        description="the whole provider cools after its 429s or a refused key"
    )
    cooldown_remaining_s: float = Field(
        description="until the pair may be tried again (breaker open or provider cooling)"
    )
    latency_p95_ms: float | None = Field(
        description="recent fleet-wide p95 time to first byte (null: too few figures)"
    )
    apis: list[str]


class ModelDetail(Answer):
    """The OpenAI model object, plus every provider serving the id, best first."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    providers: list[ModelProvider]


class ModelList(Answer):
    object: Literal["list"]
    data: list[ModelObject]


class Stats(Answer):
    totals: dict[str, Any]
    providers: list[dict[str, Any]]


# -- hot routes (documentation; validated by hand in service.api.chat) ------------------------


class ChatMessage(Answer):
    role: str
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(Answer):
    include_usage: bool | None = None


class ChatCompletionRequest(Answer):
    """Any other OpenAI field (tools, temperature, ...) passes through to the provider."""

    model: str = Field(
        "priority-auto",
        description="`priority-auto`, a model id, `provider/model`, or `a,b,c` in order",
    )
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    stream_options: StreamOptions | None = None


class ChatCompletion(Answer):
    id: str
    object: str
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None = None


class EmbeddingsRequest(Answer):
    model: str = Field(min_length=1)
    input: str | list[Any] = Field(min_length=1)


class EmbeddingList(Answer):
    object: str
    data: list[dict[str, Any]]
    model: str
    usage: dict[str, Any] | None = None


class ResponseRequest(Answer):
    """Any other OpenAI field (instructions, tools, store, ...) passes through."""

    model: str = Field(
        "priority-auto",
        description="`priority-auto`, a model id, `provider/model`, or `a,b,c` in order",
    )
    input: str | list[Any] | None = Field(
        None, description="required unless previous_response_id or prompt is given"
    )
    previous_response_id: str | None = Field(
        None, description="continues a stored response at the provider that holds it"
    )
    stream: bool = False
    max_output_tokens: int | None = Field(None, ge=0)


class ResponseObject(Answer):
    id: str
    object: Literal["response"]
    status: str
    model: str
    output: list[dict[str, Any]]
    usage: dict[str, Any] | None = None


class ResponseDeleted(Answer):
    id: str
    object: str
    deleted: bool


class InputItemList(Answer):
    object: Literal["list"]
    data: list[dict[str, Any]]
    has_more: bool


class CompletionRequest(Answer):
    model: str = Field("priority-auto")
    prompt: str | list[Any] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=0)
    stream_options: StreamOptions | None = None


class TextCompletion(Answer):
    id: str
    object: str
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None = None
