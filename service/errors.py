"""The gateway's client-facing errors and the one place that renders them.

Every error leaves the gateway as an OpenAI error body:
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import orjson


class GatewayError(Exception):
    """An error answered to the client; status, OpenAI type and code say what went wrong."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or []

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def unauthorized(message: str) -> GatewayError:
    return GatewayError(
        401,
        message,
        type="authentication_error",
        code="invalid_api_key",
        headers=[(b"www-authenticate", b"Bearer")],
    )


def not_found(message: str, code: str = "not_found") -> GatewayError:
    return GatewayError(404, message, code=code)


def model_not_found(model: str) -> GatewayError:
    return GatewayError(
        404,
        f"The model `{model}` does not exist or no configured provider serves it.",
        code="model_not_found",
        param="model",
    )


def method_not_allowed(method: str) -> GatewayError:
    return GatewayError(405, f"Method {method} is not allowed here.", code="method_not_allowed")


def payload_too_large(limit: int) -> GatewayError:
    return GatewayError(
        413, f"Request body is larger than the limit of {limit} bytes.", code="payload_too_large"
    )


def rate_limited(
    message: str, retry_after_s: float, headers: list[tuple[bytes, bytes]] | None = None
) -> GatewayError:
    seconds = max(1, int(retry_after_s + 0.999))
    return GatewayError(
        429,
        message,
        type="rate_limit_error",
        code="rate_limit_exceeded",
        headers=[(b"retry-after", str(seconds).encode()), *(headers or [])],
    )


def upstream_failed(status: int, message: str) -> GatewayError:
    code = {502: "upstream_error", 503: "service_unavailable", 504: "upstream_timeout"}[status]
    return GatewayError(status, message, type="api_error", code=code)


def unavailable(message: str) -> GatewayError:
    return GatewayError(503, message, type="api_error", code="service_unavailable")
