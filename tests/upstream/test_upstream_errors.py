"""Classification of upstream answers: what fails over, what cools, what goes to the client."""

from __future__ import annotations

import email.utils

import orjson
import pytest

from service.upstream.errors import (
    AUTH,
    BAD_BODY,
    CONTEXT_LENGTH,
    IN_BAND_ERROR,
    MODEL_NOT_FOUND,
    RATE_LIMITED,
    SERVER_ERROR,
    TIMEOUT,
    ClientFault,
    UpstreamFailure,
    check_completion,
    check_embeddings,
    error_message,
    failure_for_status,
    parse_retry_after,
)

NOW = 1_750_000_000.0
JSON = b"application/json"


def http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5", 5.0), (" 30 ", 30.0), ("1.5", 1.5), ("0", 0.0), ("-3", 0.0)],
)
def test_retry_after_in_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


def test_retry_after_as_http_date_in_the_future() -> None:
    assert parse_retry_after(http_date(NOW + 42), now=NOW) == pytest.approx(42.0)


def test_retry_after_as_http_date_in_the_past_is_zero() -> None:
    assert parse_retry_after(http_date(NOW - 600), now=NOW) == 0.0


def test_retry_after_as_http_date_uses_the_clock_by_default() -> None:
    import time

    value = parse_retry_after(http_date(time.time() + 120))
    assert value is not None and 110 <= value <= 121


@pytest.mark.parametrize(
    "value", [None, "", "   ", "soon", "Tomorrow at noon", "nan", "inf", "1e999"]
)
def test_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


def body(message: str, code: str | None = None, type_: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "code": code, "type": type_}})


def test_429_is_rate_limited_for_the_whole_provider_with_retry_after() -> None:
    failure = failure_for_status(429, body("slow down"), "7", JSON)
    assert isinstance(failure, UpstreamFailure)
    assert failure.reason == RATE_LIMITED
    assert failure.scope == "provider"
    assert failure.retry_after_s == 7.0
    assert failure.status == 429
    assert "slow down" in failure.message


@pytest.mark.parametrize("status", [401, 403])
def test_bad_provider_key_cools_the_provider(status: int) -> None:
    failure = failure_for_status(status, body("invalid api key"), None, JSON)
    assert isinstance(failure, UpstreamFailure)
    assert (failure.reason, failure.scope) == (AUTH, "provider")


def test_404_is_a_missing_model_of_that_pair() -> None:
    failure = failure_for_status(404, b"Not Found", None, b"text/plain")
    assert isinstance(failure, UpstreamFailure)
    assert (failure.reason, failure.scope) == (MODEL_NOT_FOUND, "pair")
    assert "Not Found" in failure.message


@pytest.mark.parametrize("status", [500, 502, 503, 504, 529])
def test_5xx_fails_over_and_cools_the_pair(status: int) -> None:
    failure = failure_for_status(status, b"", "2", b"")
    assert isinstance(failure, UpstreamFailure)
    assert (failure.reason, failure.scope) == (SERVER_ERROR, "pair")
    assert failure.retry_after_s == 2.0
    assert failure.message == f"upstream answered HTTP {status}"


@pytest.mark.parametrize(
    "payload",
    [
        body("too long", code="context_length_exceeded"),
        body("too long", type_="context_length_exceeded"),
    ],
)
def test_400_context_length_fails_over_without_cooling(payload: bytes) -> None:
    failure = failure_for_status(400, payload, None, JSON)
    assert isinstance(failure, UpstreamFailure)
    assert (failure.reason, failure.scope) == (CONTEXT_LENGTH, "none")


@pytest.mark.parametrize("status", [400, 409, 413, 422])
def test_other_4xx_is_the_clients_fault_and_relayed_untouched(status: int) -> None:
    payload = body("messages must not be empty", code="invalid_request")
    fault = failure_for_status(status, payload, None, JSON)
    assert isinstance(fault, ClientFault)
    assert (fault.status, fault.body, fault.content_type) == (status, payload, JSON)


def test_408_is_a_timeout() -> None:
    failure = failure_for_status(408, b"", None, b"")
    assert isinstance(failure, UpstreamFailure)
    assert (failure.reason, failure.scope) == (TIMEOUT, "pair")


def test_error_message_reads_openai_and_plain_bodies() -> None:
    assert error_message(body("boom"), "HTTP 500") == "HTTP 500: boom"
    assert error_message(b'{"error": "boom"}', "HTTP 500") == "HTTP 500: boom"
    assert error_message(b"<html>bad gateway</html>", "HTTP 502") == (
        "HTTP 502: <html>bad gateway</html>"
    )
    assert error_message(b"", "HTTP 502") == "HTTP 502"
    assert error_message(b"[1]", "HTTP 502") == "HTTP 502"
    assert len(error_message(b"x" * 10_000, "HTTP 502")) < 300


def test_check_completion_accepts_a_completion() -> None:
    assert check_completion({"choices": [{"message": {"content": "hi"}}]}) is None


@pytest.mark.parametrize(
    ("parsed", "reason"),
    [
        ({"error": {"message": "overloaded"}}, IN_BAND_ERROR),
        ({"error": "overloaded", "choices": [{}]}, IN_BAND_ERROR),
        ({"choices": []}, BAD_BODY),
        ({"id": "x"}, BAD_BODY),
        ({"choices": "nope"}, BAD_BODY),
        ([{"choices": [{}]}], BAD_BODY),
        ("ok", BAD_BODY),
        (None, BAD_BODY),
    ],
)
def test_check_completion_refuses_unusable_bodies(parsed: object, reason: str) -> None:
    failure = check_completion(parsed)
    assert failure is not None
    assert failure.reason == reason
    assert failure.scope == "pair"


def test_in_band_error_message_is_kept() -> None:
    failure = check_completion({"error": {"message": "model overloaded"}})
    assert failure is not None and "model overloaded" in failure.message


def test_check_embeddings() -> None:
    assert check_embeddings({"data": [{"embedding": [0.1]}]}) is None
    for parsed, reason in (
        ({"error": {"message": "x"}}, IN_BAND_ERROR),
        ({"data": []}, BAD_BODY),
        ([], BAD_BODY),
    ):
        failure = check_embeddings(parsed)
        assert failure is not None and failure.reason == reason
