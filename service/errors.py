"""The gateway's own exceptions: what went wrong, in the gateway's terms.

Routing, quotas, the registry and the request checks raise these; none of them knows an HTTP
status.  The edge (``service/api/errors.py``) maps each class to a status and an OpenAI error
body, in one table, for JSON answers and for the error event that ends a stream alike.
"""

from __future__ import annotations

from collections.abc import Iterable

from service.types import Headers

# The largest integer a request field may hold: the largest every JSON parser reads exactly
# (I-JSON, RFC 7493), clients and providers included; orjson writes no more than 64 bits.
MAX_INT = 2**53 - 1


class GatewayError(Exception):
    """An error answered to the client.  ``code`` overrides the class's OpenAI code."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
        headers: Headers | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s
        self.headers: Headers = headers or []


class BadRequest(GatewayError):
    """The request is malformed in a way the gateway can tell."""


class PayloadTooLarge(GatewayError):
    pass


class Unauthorized(GatewayError):
    """Missing, unknown, revoked or expired token."""


class Forbidden(GatewayError):
    """The caller is known but may not do this (an identity whose team claim names no team)."""


class NotFound(GatewayError):
    """No such route or record."""


class ModelNotFound(NotFound):
    pass


class Conflict(GatewayError):
    """The request contradicts the state of a record (an id taken, a team still in use)."""


class MethodNotAllowed(GatewayError):
    pass


class QuotaExceeded(GatewayError):
    """The caller's own rpm, tpm or concurrency limit (or its team's)."""


class BudgetExceeded(GatewayError):
    """The caller's spend budget (or its team's) is used up for this period."""


class ProvidersRateLimited(GatewayError):
    """Every candidate is rate limited by its provider (or cooling after providers' 429s)."""


class Unavailable(GatewayError):
    """The gateway cannot serve this now: no provider usable, breakers open, store down."""


class BreakersOpen(Unavailable):
    """No candidate can be tried: every one's circuit breaker is open (or being probed)."""


class UpstreamFailed(GatewayError):
    """Every attempt failed (the last upstream error says why)."""


class UpstreamTimeout(GatewayError):
    """Every attempt timed out."""


class StreamFailed(GatewayError):
    """A stream broke after its first event: the stream ends with an error event."""


class ResponseStreamFailed(StreamFailed):
    """A Responses API stream broke after its first event: it ends with the Responses API's
    own ``event: error``, numbered after the last event relayed."""

    def __init__(self, message: str, *, code: str | None = None, sequence_number: int) -> None:
        super().__init__(message, code=code)
        self.sequence_number = sequence_number


class InternalError(GatewayError):
    pass


# Short constructors for the common cases.


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> BadRequest:
    return BadRequest(message, param=param, code=code)


def unauthorized(message: str) -> Unauthorized:
    return Unauthorized(message)


def not_found(message: str, code: str | None = None) -> NotFound:
    return NotFound(message, code=code)


def model_not_found(model: str) -> ModelNotFound:
    return ModelNotFound(
        f"The model `{model}` does not exist or no configured provider serves it.", param="model"
    )


def method_not_allowed(method: str, allowed: Iterable[str]) -> MethodNotAllowed:
    """405 with the ``Allow`` header listing the methods the path answers."""
    return MethodNotAllowed(
        f"Method {method} is not allowed here.",
        headers=[(b"allow", ", ".join(sorted(allowed)).encode())],
    )


def payload_too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes.")


def unavailable(message: str, retry_after_s: float | None = None) -> Unavailable:
    return Unavailable(message, retry_after_s=retry_after_s)
