"""The failover table and cooldowns, end to end (docs/routing.md).

Every test has a *lane* of its own: providers ``<lane>-p1`` (best) .. ``<lane>-pN`` serving
``<lane>-m`` and ``<lane>-other``, so a cooldown one test causes never leaks into another
while the whole module shares one gateway (MAX_ATTEMPTS=3).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import (
    Fleet,
    ProviderSpec,
    assert_openai_error,
    chat_body,
    start_fleet,
)
from tests.fakes.upstream import Behavior, FakeProvider

MAX_ATTEMPTS = 3
HANG_TIMEOUT_S = 0.5

# lane -> (providers, per-provider timeout_s)
LANES: dict[str, tuple[int, float | None]] = {
    "ra-int": (2, None),
    "ra-frac": (2, None),
    "ra-date": (2, None),
    "ra-none": (2, None),
    "e500": (2, None),
    "e502": (2, None),
    "e503": (2, None),
    "e401": (2, None),
    "e403": (2, None),
    "e404": (2, None),
    "garbage": (2, None),
    "empty": (2, None),
    "nochoice": (2, None),
    "inband": (2, None),
    "dies": (2, None),
    "hang": (2, HANG_TIMEOUT_S),
    "ctx": (2, None),
    "bad": (2, None),
    "bound": (4, None),
    "all429": (2, None),
    "alltime": (2, HANG_TIMEOUT_S),
    "mixed": (2, None),
    "expire": (2, None),
    "extend": (2, None),
}


@dataclass
class Lane:
    name: str
    providers: list[str]
    fakes: list[FakeProvider]

    @property
    def model(self) -> str:
        return f"{self.name}-m"

    @property
    def other(self) -> str:
        return f"{self.name}-other"

    @property
    def p1(self) -> FakeProvider:
        return self.fakes[0]

    @property
    def p2(self) -> FakeProvider:
        return self.fakes[1]


def lane_specs() -> list[ProviderSpec]:
    specs = []
    for lane, (size, timeout) in LANES.items():
        for i in range(1, size + 1):
            specs.append(
                ProviderSpec(
                    f"{lane}-p{i}",
                    [f"{lane}-m", f"{lane}-other"],
                    priority=size + 1 - i,
                    timeout_s=timeout,
                )
            )
    return specs


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = start_fleet(
        tmp_path_factory.mktemp("failover-config"),
        lane_specs(),
        env={"MAX_ATTEMPTS": str(MAX_ATTEMPTS)},
        inprocess=True,
    )
    yield fleet
    fleet.stop()


@pytest.fixture(autouse=True)
def _reset(fleet: Fleet) -> None:
    fleet.reset()


def lane(fleet: Fleet, name: str) -> Lane:
    size, _ = LANES[name]
    providers = [f"{name}-p{i}" for i in range(1, size + 1)]
    return Lane(name, providers, [fleet[p] for p in providers])


def ask(fleet: Fleet, model: str, http: httpx.Client | None = None) -> httpx.Response:
    if http is not None:
        return http.post("/v1/chat/completions", json=chat_body(model))
    with fleet.http() as client:
        return client.post("/v1/chat/completions", json=chat_body(model))


def served_by(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.headers["x-best-provider"]


def cooldown_remaining(fleet: Fleet, provider: str, model: str) -> float:
    """``cooldown_remaining_s`` of the pair in /stats (0 when the pair has no row)."""
    with fleet.http() as http:
        stats = http.get("/stats").json()
    for row in stats["providers"]:
        if row["provider"] == provider and row["model"] == model:
            return float(row["cooldown_remaining_s"])
    return 0.0


# -- 429: the whole provider cools for Retry-After ----------------------------------------

RETRY_AFTER_FORMS = [
    pytest.param("ra-int", 30, 30.0, id="seconds"),
    pytest.param("ra-frac", 2.5, 2.5, id="fractional-seconds"),
    pytest.param(
        "ra-date",
        datetime.now(UTC) + timedelta(hours=2),  # computed at import: beyond the 1 h ceiling
        None,
        id="http-date",
    ),
    pytest.param("ra-none", None, 10.0, id="absent"),
]


@pytest.mark.parametrize(("name", "retry_after", "expected_s"), RETRY_AFTER_FORMS)
def test_429_fails_over_and_cools_the_provider_for_retry_after(
    fleet: Fleet, name: str, retry_after: object, expected_s: float | None
) -> None:
    ln = lane(fleet, name)
    ln.p1.queue(Behavior.rate_limited(retry_after))  # type: ignore[arg-type]
    assert served_by(ask(fleet, ln.model)) == ln.providers[1]
    assert ln.p1.chat_requests == 1

    remaining = cooldown_remaining(fleet, ln.providers[0], ln.model)
    if expected_s is None:  # an HTTP date an hour ahead, clamped to the 1 h ceiling
        assert 3500 < remaining <= 3600
    else:
        assert expected_s - 1.5 < remaining <= expected_s

    # The next requests skip the cooling provider without calling it, for any of its models.
    assert served_by(ask(fleet, ln.model)) == ln.providers[1]
    assert served_by(ask(fleet, ln.other)) == ln.providers[1]
    assert ln.p1.chat_requests == 1
    assert ln.p2.chat_requests == 3


# -- failures that cool the (provider, model) pair ----------------------------------------

PAIR_FAILURES = [
    pytest.param("e500", Behavior.server_error(500), id="500"),
    pytest.param("e502", Behavior.server_error(502), id="502"),
    pytest.param("e503", Behavior.server_error(503), id="503"),
    pytest.param("e404", Behavior.model_not_found(), id="404-model"),
    pytest.param("garbage", Behavior.garbage(), id="garbage-body"),
    pytest.param("empty", Behavior.empty(), id="empty-body"),
    pytest.param("nochoice", Behavior.no_choices(), id="empty-choices"),
    pytest.param("inband", Behavior.inband_error(), id="in-band-error"),
    pytest.param("dies", Behavior.stream_dies(), id="truncated-body"),
    pytest.param("hang", Behavior.hang(), id="hang-past-timeout_s", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("name", "behavior"), PAIR_FAILURES)
def test_failure_fails_over_and_opens_the_pair_breaker_only_on_evidence(
    fleet: Fleet, name: str, behavior: Behavior
) -> None:
    ln = lane(fleet, name)
    ln.p1.queue(behavior, model=ln.model)
    started = time.monotonic()
    response = ask(fleet, ln.model)
    assert served_by(response) == ln.providers[1]
    assert response.headers["x-best-model"] == ln.model
    assert response.json()["choices"][0]["message"]["content"] == "echo: hello there"
    if name == "hang":
        assert time.monotonic() - started < HANG_TIMEOUT_S + 2
    assert ln.p1.chat_requests == 1

    # One failure is no verdict: nothing cools, the next request goes to p1 again (and its
    # success resets the count).
    assert cooldown_remaining(fleet, ln.providers[0], ln.model) == 0
    assert served_by(ask(fleet, ln.model)) == ln.providers[0]
    assert ln.p1.chat_requests == 2

    # failure_threshold (3) failures in a row open the pair's breaker ...
    ln.p1.queue(behavior, behavior, behavior, model=ln.model)
    for _ in range(3):
        assert served_by(ask(fleet, ln.model)) == ln.providers[1]
    assert ln.p1.chat_requests == 5
    assert cooldown_remaining(fleet, ln.providers[0], ln.model) > 5
    # ... so the same model skips p1 without calling it ...
    assert served_by(ask(fleet, ln.model)) == ln.providers[1]
    assert ln.p1.chat_requests == 5
    # ... while p1's other models are still served by it.
    assert served_by(ask(fleet, ln.other)) == ln.providers[0]
    assert ln.p1.chat_requests == 6


@pytest.mark.parametrize("name", ["e401", "e403"])
def test_bad_provider_key_fails_over_and_cools_the_provider_for_minutes(
    fleet: Fleet, name: str
) -> None:
    ln = lane(fleet, name)
    ln.p1.queue(Behavior.unauthorized() if name == "e401" else Behavior.forbidden())
    assert served_by(ask(fleet, ln.model)) == ln.providers[1]
    assert 290 < cooldown_remaining(fleet, ln.providers[0], ln.model) <= 300
    assert served_by(ask(fleet, ln.other)) == ln.providers[1]
    assert ln.p1.chat_requests == 1


# -- failures that are about the request ---------------------------------------------------


def test_context_length_exceeded_fails_over_without_cooling(fleet: Fleet) -> None:
    ln = lane(fleet, "ctx")
    ln.p1.queue(Behavior.context_length_exceeded())
    assert served_by(ask(fleet, ln.model)) == ln.providers[1]
    assert cooldown_remaining(fleet, ln.providers[0], ln.model) == 0
    # p1 is still first in line for the same model.
    assert served_by(ask(fleet, ln.model)) == ln.providers[0]
    assert ln.p1.chat_requests == 2


def test_other_400_is_returned_untouched_without_failover_or_cooldown(fleet: Fleet) -> None:
    ln = lane(fleet, "bad")
    ln.p1.queue(Behavior.bad_request("Invalid value for 'temperature': 9 > 2."))
    response = ask(fleet, ln.model)
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "Invalid value for 'temperature': 9 > 2.",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "invalid_value",
        }
    }
    assert ln.p2.chat_requests == 0
    assert cooldown_remaining(fleet, ln.providers[0], ln.model) == 0
    assert served_by(ask(fleet, ln.model)) == ln.providers[0]

    ln.p1.queue(Behavior.bad_request("Invalid value for 'temperature': 9 > 2."))
    with pytest.raises(openai.BadRequestError) as caught:
        fleet.client().chat.completions.create(
            model=ln.model, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.code == "invalid_value"
    assert caught.value.param == "temperature"


# -- what the client gets when nothing works -----------------------------------------------


def test_attempts_are_bounded_by_max_attempts(fleet: Fleet) -> None:
    ln = lane(fleet, "bound")
    for fake in ln.fakes:
        fake.set_behavior(Behavior.server_error(500))
    response = ask(fleet, ln.model)
    assert_openai_error(response, 502)
    assert [f.chat_requests for f in ln.fakes] == [1, 1, 1, 0]


def test_every_attempt_rate_limited_then_everything_cooling_is_429(fleet: Fleet) -> None:
    ln = lane(fleet, "all429")
    for fake in ln.fakes:
        fake.set_behavior(Behavior.rate_limited(30))
    response = ask(fleet, ln.model)
    assert_openai_error(response, 429, "rate_limit_exceeded")
    assert 1 <= int(response.headers["retry-after"]) <= 30
    assert [f.chat_requests for f in ln.fakes] == [1, 1]

    # Now every candidate is cooling: refused at once, no provider called.
    with pytest.raises(openai.RateLimitError) as caught:
        fleet.client().chat.completions.create(
            model=ln.model, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.code == "rate_limit_exceeded"
    retry_after = int(caught.value.response.headers["retry-after"])
    assert 25 <= retry_after <= 30
    assert [f.chat_requests for f in ln.fakes] == [1, 1]


@pytest.mark.slow  # waits out every attempt's timeout
def test_every_attempt_timing_out_is_504(fleet: Fleet) -> None:
    ln = lane(fleet, "alltime")
    for fake in ln.fakes:
        fake.set_behavior(Behavior.hang())
    started = time.monotonic()
    response = ask(fleet, ln.model)
    error = assert_openai_error(response, 504)
    assert time.monotonic() - started < 2 * HANG_TIMEOUT_S + 2
    assert "timed out" in error["message"]
    assert [f.chat_requests for f in ln.fakes] == [1, 1]


@pytest.mark.slow  # waits out a 1 s request deadline
def test_overall_deadline_bounds_every_attempt_together(
    tmp_path: Path, fleet_guard: list[Fleet]
) -> None:
    """REQUEST_TIMEOUT_S is one deadline for the whole request, not per attempt."""
    specs = [ProviderSpec("slow1", ["dl-m"], priority=2), ProviderSpec("slow2", ["dl-m"])]
    deadline_fleet = start_fleet(tmp_path, specs, env={"REQUEST_TIMEOUT_S": "1"}, inprocess=True)
    fleet_guard.append(deadline_fleet)
    for fake in deadline_fleet.fakes.values():
        fake.set_behavior(Behavior.hang())
    started = time.monotonic()
    response = ask(deadline_fleet, "dl-m")
    elapsed = time.monotonic() - started
    assert_openai_error(response, 504, "upstream_timeout")
    assert 0.9 < elapsed < 2.5
    # The first attempt used up the deadline: no second attempt got a fresh timeout.
    assert deadline_fleet["slow1"].chat_requests == 1
    assert deadline_fleet["slow2"].chat_requests == 0


def test_mixed_failures_are_502_with_the_last_upstream_message(fleet: Fleet) -> None:
    ln = lane(fleet, "mixed")
    ln.p1.set_behavior(Behavior.rate_limited(5))
    ln.p2.set_behavior(Behavior.error(503, message="the very last words of p2"))
    response = ask(fleet, ln.model)
    error = assert_openai_error(response, 502)
    assert "the very last words of p2" in error["message"]
    assert error["type"] == "api_error"


# -- cooldown lifetime ---------------------------------------------------------------------


@pytest.mark.slow  # waits out a Retry-After
def test_cooldown_expires_after_retry_after(fleet: Fleet) -> None:
    ln = lane(fleet, "expire")
    ln.p1.queue(Behavior.rate_limited(1))
    cooled_at = time.monotonic()
    assert served_by(ask(fleet, ln.model)) == ln.providers[1]
    with fleet.http() as http:
        assert served_by(ask(fleet, ln.model, http)) == ln.providers[1]
        assert ln.p1.chat_requests == 1
        deadline = cooled_at + 5
        while served_by(ask(fleet, ln.model, http)) != ln.providers[0]:
            assert time.monotonic() < deadline, "the cooldown never expired"
            time.sleep(0.1)
    assert time.monotonic() - cooled_at >= 0.9
    assert ln.p1.chat_requests == 2


def test_a_new_failure_never_shortens_a_cooldown(fleet: Fleet) -> None:
    ln = lane(fleet, "extend")
    # Two requests reach p1 before either answer: a long cooldown first, then a short one.
    ln.p1.queue(
        replace(Behavior.rate_limited(60), delay_s=0.3),
        replace(Behavior.rate_limited(1), delay_s=0.8),
    )
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: ask(fleet, ln.model), range(2)))
    assert [served_by(a) for a in answers] == [ln.providers[1]] * 2
    assert ln.p1.chat_requests == 2
    assert cooldown_remaining(fleet, ln.providers[0], ln.model) > 55
    assert served_by(ask(fleet, ln.model)) == ln.providers[1]
    assert ln.p1.chat_requests == 2
