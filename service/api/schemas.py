"""The bodies of the HTTP API as pydantic models.

Admin bodies (``TokenCreate``, ``TokenUpdate``, ``TeamCreate``, ``TeamUpdate``) are validated
by these models: unknown keys are errors, and every error names its field.  The other models
describe answers and the hot routes' bodies for the OpenAPI document only: the hot routes are
validated by hand in ``service.api.chat`` (cheaper than a model per request), and answers are
rendered as they are.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict, JsonValue

from service.errors import MAX_INT
from service.quotas.tokens import MAX_BUDGET_USD, TokenError, iso_utc, parse_expiry
from service.routing.conversations import RESPONSE_ID_PATTERN
from service.settings import MAX_CACHE_TTL_S


def _not_bool_or_text(value: Any) -> Any:
    # `true` or "5" is not a limit; 5.0 is (JSON does not tell integers from floats).
    if isinstance(value, bool | str):
        raise ValueError("must be an integer")
    return value


# The Field before the BeforeValidator: after it, pydantic writes its bounds into the JSON
# schema under their Python names (ge, le) rather than minimum and maximum.
# Lua numbers are doubles: a limit stays an exact integer in the store up to 2**53.
MAX_LIMIT = 10**15
Limit = Annotated[
    int,
    Field(ge=0, le=MAX_LIMIT, description="per minute (rpm, tpm) or at once; 0 or null = none"),
    BeforeValidator(_not_bool_or_text),
]


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Whitespace as both Python and JSON Schema's regex dialect (ECMA-262) see it, once control
# characters are out: Python's \s, plus the byte order mark that ECMA-262 counts too.
_EDGES = re.compile(r"^[\s\ufeff]+|[\s\ufeff]+$")


def _name(value: str) -> str:
    """A display name: no control characters (they would break a log line or a table), and
    something besides whitespace; returned without its leading and trailing whitespace."""
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    stripped = _EDGES.sub("", value)
    if not stripped:
        raise ValueError("must not be empty or blank")
    return stripped


# The document's pattern says what _name checks: no control character, one that is not blank.
NAME_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\ufeff\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
Name = Annotated[
    str, Field(strict=True, json_schema_extra={"pattern": NAME_PATTERN}), AfterValidator(_name)
]
Budget = Annotated[
    float,
    Field(ge=0, le=MAX_BUDGET_USD, description="USD per budget_period; null = no budget"),
    BeforeValidator(_not_bool_or_text),
]
CacheTtl = Annotated[
    int,
    # The bounds before the validator: so they reach the JSON Schema as minimum and maximum.
    Field(
        ge=0,
        le=MAX_CACHE_TTL_S,
        description="seconds a cached answer is served (response cache); 0 = off; null = "
        "not set (a token follows its team, a static token CACHE_DEFAULT_TTL_S)",
    ),
    BeforeValidator(_not_bool_or_text),
]
Period = Literal["day", "week", "month", "total"]
TeamId = Annotated[
    str,
    Field(strict=True, pattern=r"^[a-z0-9_-]{1,64}$", description="a-z, 0-9, '-', '_'"),
]


def _iso_time(value: str) -> str:
    # The registry's rule (format, range), so there is one rule for expiry.
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

    # Documented as what it must be when sent (a name); None only stands for "not sent".
    name: Annotated[Name | None, WithJsonSchema({"type": "string", "pattern": NAME_PATTERN})] = None

    @field_validator("name")
    @classmethod
    def _name_is_not_cleared(cls, value: str | None) -> str | None:
        # Runs only when the key is sent.
        if value is None:
            raise ValueError("cannot be null: it always has a name")
        return value


def _given(key: str, kind: str) -> JsonDict:
    """JSON Schema: ``key`` is sent, and its value is of JSON type ``kind``."""
    return {"required": [key], "properties": {key: {"type": kind}}}


# A budget and its period are set together (no silent default period), in one request: the
# rule holds on the body alone, whatever the record held before.
BUDGET_RULES: list[JsonValue] = [
    {"if": _given("budget_usd", "number"), "then": _given("budget_period", "string")},
    {"if": _given("budget_period", "string"), "then": _given("budget_usd", "number")},
]
# An update clears the period only with the budget (budget_usd: null clears both).
CLEARING_RULE: JsonDict = {
    "if": _given("budget_period", "null"),
    "then": _given("budget_usd", "null"),
}


class Limits(Body):
    """The limits a token and a team both have; null = none.  (Listed after the name: the
    name's problem comes first in an error.)"""

    model_config = ConfigDict(json_schema_extra={"allOf": BUDGET_RULES})

    rpm: Limit | None = None
    tpm: Limit | None = None
    max_concurrency: Limit | None = None
    budget_usd: Budget | None = None
    budget_period: Period | None = None
    cache_ttl_s: CacheTtl | None = None

    @model_validator(mode="after")
    def _budget_with_its_period(self) -> Self:
        if self.budget_usd is not None and self.budget_period is None:
            raise TokenError(
                "budget_period is required with budget_usd: day, week, month or total",
                param="budget_period",
            )
        if self.budget_period is not None and self.budget_usd is None:
            raise TokenError("budget_period needs a budget_usd", param="budget_period")
        return self


class Update(Limits, Renamed):
    """Limits as an update: only the keys sent change."""

    model_config = ConfigDict(json_schema_extra={"allOf": [*BUDGET_RULES, CLEARING_RULE]})

    @model_validator(mode="after")
    def _period_cleared_with_its_budget(self) -> Self:
        sent = self.model_fields_set
        if "budget_period" in sent and self.budget_period is None and "budget_usd" not in sent:
            raise TokenError(
                "budget_period is cleared with its budget: send budget_usd: null",
                param="budget_period",
            )
        return self


class TokenCreate(Limits, Named):
    team: TeamId | None = None
    expires_at: IsoTime | None = None


class TokenUpdate(Update):
    """Null also clears the team or the expiry."""

    team: TeamId | None = None
    expires_at: IsoTime | None = None


class TeamCreate(Limits, Named):
    id: TeamId | None = Field(None, description="default: team-<12 hex>")


class TeamUpdate(Update):
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


Count = Annotated[int, Field(ge=0, le=MAX_INT)]


class ChatMessage(Answer):
    role: str
    content: Any = Field(
        None, description="a string, an array of content parts, or null: the provider checks it"
    )


class StreamOptions(Answer):
    include_usage: bool | None = None


class ChatCompletionRequest(Answer):
    """Any other OpenAI field (tools, temperature, ...) passes through to the provider."""

    model: str | None = Field(
        "priority-auto",
        description="`priority-auto` (also empty or null), a model id, `provider/model`, "
        "or `a,b,c` in order",
    )
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = False
    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    stream_options: StreamOptions | None = None


class ChatCompletion(Answer):
    id: str
    object: str
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None = None


class EmbeddingsRequest(Answer):
    model: str = Field(pattern=r"\S", description="a model id (not blank)")
    input: Annotated[str, Field(min_length=1)] | Annotated[list[Any], Field(min_length=1)]


class EmbeddingList(Answer):
    object: str
    data: list[dict[str, Any]]
    model: str
    usage: dict[str, Any] | None = None


class ResponseRequest(Answer):
    """Any other OpenAI field (instructions, tools, store, ...) passes through."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["input"], "properties": {"input": {"not": {"type": "null"}}}},
                {
                    "required": ["previous_response_id"],
                    "properties": {"previous_response_id": {"type": "string"}},
                },
                {"required": ["prompt"], "properties": {"prompt": {"type": "object"}}},
            ]
        }
    )

    model: str | None = Field(
        "priority-auto",
        description="`priority-auto` (also empty or null), a model id, `provider/model`, "
        "or `a,b,c` in order",
    )
    input: str | list[dict[str, Any] | str] | None = Field(
        None, description="required unless previous_response_id or prompt is given"
    )
    previous_response_id: str | None = Field(
        None,
        pattern=RESPONSE_ID_PATTERN,
        description="continues a stored response at the provider that holds it",
    )
    prompt: dict[str, Any] | None = Field(
        None, description="a stored prompt (id, version, variables), instead of input"
    )
    stream: bool | None = False
    max_output_tokens: Count | None = None


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
    model: str | None = Field("priority-auto")
    prompt: (
        str
        | Annotated[list[str], Field(min_length=1)]
        | Annotated[list[Count], Field(min_length=1)]
        | Annotated[list[Annotated[list[Count], Field(min_length=1)]], Field(min_length=1)]
    ) = Field(
        description="a string, or a non-empty array of strings, of token ids, or of arrays "
        "of token ids"
    )
    stream: bool | None = False
    max_tokens: Count | None = None
    stream_options: StreamOptions | None = None


class TextCompletion(Answer):
    id: str
    object: str
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None = None


# -- Anthropic's Messages API (documentation; validated by hand in service.anthropic.request) --
#
# The request models hold the fields the gateway checks, as it checks them (null included
# where it takes null); every other field (a tool's description, a thinking block's
# signature, cache_control...) passes unchecked, and a native provider's refusal is relayed.
# Blocks of Anthropic's server tools (server_tool_use, web_search_tool_result...) pass
# through to a native provider and are not listed.

# Integers up to MAX_INT, the bound of every route.
PositiveCount = Annotated[int, Field(ge=1, le=MAX_INT)]
SignedCount = Annotated[int, Field(ge=-MAX_INT, le=MAX_INT)]


class TextBlockParam(Answer):
    type: Literal["text"]
    text: str


class Base64Source(Answer):
    type: Literal["base64"]
    media_type: str
    data: str


class UrlSource(Answer):
    type: Literal["url"]
    url: str


class FileSource(Answer):
    type: Literal["file"]
    file_id: str = Field(description="the Files API's id")


class PlainTextSource(Answer):
    type: Literal["text"]
    data: str


class ImageBlockParam(Answer):
    """An image from the Files API reaches a native provider only (a translation refuses it)."""

    type: Literal["image"]
    source: Annotated[Base64Source | UrlSource | FileSource, Field(discriminator="type")]


class BlocksSource(Answer):
    type: Literal["content"]
    content: list[Annotated[TextBlockParam | ImageBlockParam, Field(discriminator="type")]]


class DocumentBlockParam(Answer):
    """A document by URL or from the Files API reaches a native provider only (a translation
    refuses it)."""

    type: Literal["document"]
    source: Annotated[
        Base64Source | PlainTextSource | BlocksSource | UrlSource | FileSource,
        Field(discriminator="type"),
    ]


class SearchResultBlockParam(Answer):
    type: Literal["search_result"]
    source: str
    title: str
    content: list[TextBlockParam]


class ToolUseBlockParam(Answer):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


ToolResultPart = Annotated[
    TextBlockParam | ImageBlockParam | DocumentBlockParam | SearchResultBlockParam,
    Field(discriminator="type"),
]


class ToolResultBlockParam(Answer):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[ToolResultPart] | None = None
    is_error: bool | None = None


class ThinkingBlockParam(Answer):
    type: Literal["thinking"]
    thinking: str


class RedactedThinkingBlockParam(Answer):
    type: Literal["redacted_thinking"]
    data: str


class UserMessage(Answer):
    role: Literal["user"]
    content: (
        str
        | list[
            Annotated[
                TextBlockParam
                | ImageBlockParam
                | DocumentBlockParam
                | SearchResultBlockParam
                | ToolResultBlockParam,
                Field(discriminator="type"),
            ]
        ]
    )


class AssistantMessage(Answer):
    role: Literal["assistant"]
    content: (
        str
        | list[
            Annotated[
                TextBlockParam
                | ToolUseBlockParam
                | ThinkingBlockParam
                | RedactedThinkingBlockParam,
                Field(discriminator="type"),
            ]
        ]
    )


class Tool(Answer):
    """A client tool (``type`` absent, null or ``custom``)."""

    name: str
    input_schema: dict[str, Any] = Field(description="the JSON Schema of the tool's input")
    type: Literal["custom"] | None = None


class ServerTool(Answer):
    """One of Anthropic's server tools (``web_search_20250305``...): a native provider runs
    it; a translation leaves it out."""

    # Not checked beyond "not a client tool's": a translation drops every such tool.
    type: Annotated[
        Any,
        WithJsonSchema(
            {"not": {"enum": [None, "custom"]}, "description": "such as web_search_20250305"}
        ),
    ]
    name: str


class ToolChoice(Answer):
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAuto(ToolChoice):
    type: Literal["auto"]


class ToolChoiceAny(ToolChoice):
    type: Literal["any"]


class ToolChoiceTool(ToolChoice):
    type: Literal["tool"]
    name: str


class ToolChoiceNone(ToolChoice):
    type: Literal["none"]


class ThinkingEnabled(Answer):
    type: Literal["enabled"]
    budget_tokens: PositiveCount = Field(
        description="Anthropic's API wants at least 1024, and fewer than max_tokens"
    )


class ThinkingDisabled(Answer):
    type: Literal["disabled"]


class ThinkingAdaptive(Answer):
    type: Literal["adaptive"]


class MessagesInput(Answer):
    """What a request and a token count share; any other field passes through to a native
    provider (a translation sends only the fields it knows)."""

    model: str = Field(
        description="`priority-auto` (also empty), a model id, `provider/model`, `a,b,c` in "
        "order, or a name config/aliases.yaml maps (`claude-*`)"
    )
    messages: list[Annotated[UserMessage | AssistantMessage, Field(discriminator="role")]] = Field(
        min_length=1
    )
    system: str | list[TextBlockParam] | None = None
    tools: list[Tool | ServerTool] | None = None
    tool_choice: (
        Annotated[
            ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone,
            Field(discriminator="type"),
        ]
        | None
    ) = None
    thinking: (
        Annotated[
            ThinkingEnabled | ThinkingDisabled | ThinkingAdaptive, Field(discriminator="type")
        ]
        | None
    ) = None


class MessagesMetadata(Answer):
    user_id: str | None = None


class MessagesRequest(MessagesInput):
    max_tokens: PositiveCount
    stream: bool = Field(False, description="server-sent events, in Anthropic's named events")
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, description="0 to 1 at Anthropic")
    top_p: float | None = None
    top_k: SignedCount | None = None
    metadata: MessagesMetadata | None = None


class CountTokensRequest(MessagesInput):
    pass


class TextBlock(Answer):
    type: Literal["text"]
    text: str


class ToolUseBlock(Answer):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ThinkingBlock(Answer):
    type: Literal["thinking"]
    thinking: str
    signature: str


class RedactedThinkingBlock(Answer):
    type: Literal["redacted_thinking"]
    data: str


class ServerBlock(Answer):
    """A block of Anthropic's server tools (``server_tool_use``, ``web_search_tool_result``...),
    relayed from a native provider."""

    type: str


class MessagesUsage(Answer):
    input_tokens: int = Field(description="the prompt's tokens not read from or written to a cache")
    output_tokens: int
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


class MessageAnswer(Answer):
    """Anthropic's message object; its ``model`` is the name the client asked for."""

    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[TextBlock | ToolUseBlock | ThinkingBlock | RedactedThinkingBlock | ServerBlock]
    stop_reason: str | None = Field(
        description="end_turn, max_tokens, stop_sequence, tool_use or refusal (a native "
        "provider may send another of Anthropic's); null when the provider gave none"
    )
    stop_sequence: str | None
    usage: MessagesUsage


class TokenCount(Answer):
    input_tokens: int


class AnthropicErrorDetail(BaseModel):
    type: str = Field(
        description="invalid_request_error, authentication_error, permission_error, "
        "not_found_error, request_too_large, rate_limit_error, api_error or overloaded_error"
    )
    message: str
    code: str | None = Field(
        None, description="on a 401 or 403, the cause, when the gateway knows it"
    )


class AnthropicErrorBody(BaseModel):
    """Every error of Anthropic's routes, in Anthropic's shape."""

    type: Literal["error"]
    error: AnthropicErrorDetail
