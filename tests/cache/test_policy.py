"""Who caches what: the key (a hash of route, scope and canonical body), the opt-in levels,
the headers, and a request that does not use the cache costs it nothing."""

from __future__ import annotations

from typing import Any

import pytest

from service.apis import Api
from service.caching import policy
from service.caching.policy import CachePolicy, cache_key, directives, scope_of
from service.errors import BadRequest
from service.quotas.limits import Record
from tests.cache.conftest import Gateway
from tests.cache.test_cache import CHAT, post
from tests.cache.upstream import ScriptedUpstream


def test_the_key_ignores_order_and_delivery_fields_and_names_route_and_scope() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi", "name": "x"}]}
    reordered = {"messages": [{"name": "x", "content": "hi", "role": "user"}], "model": "m"}
    delivered = {
        **body,
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "u",
        "metadata": {"a": 1},
    }
    key = cache_key(Api.CHAT, "team:a", body)
    assert (
        key == cache_key(Api.CHAT, "team:a", reordered) == cache_key(Api.CHAT, "team:a", delivered)
    )
    assert len(key) == 64 and "hi" not in key
    assert key != cache_key(Api.CHAT, "team:b", body)
    assert key != cache_key(Api.COMPLETIONS, "team:a", body)
    assert key != cache_key(Api.CHAT, "team:a", {**body, "temperature": 0})


def test_scope_is_the_team_else_the_token() -> None:
    alone = Record.parse({"id": "abc"})
    member = Record.parse({"id": "abc", "team": "abc"})
    assert scope_of(alone) == "token:abc"
    assert scope_of(member) == "team:abc"  # a team named like a token id is another scope


class _Teams:
    def __init__(self, teams: dict[str, Record]) -> None:
        self._teams = teams

    def team(self, team_id: str) -> Record | None:
        return self._teams.get(team_id)


@pytest.mark.parametrize(
    ("token", "team", "ttl"),
    [
        ({"kind": "managed"}, None, 0),
        ({"kind": "static"}, None, 30),  # CACHE_DEFAULT_TTL_S
        ({"kind": "static", "cache_ttl_s": "0"}, None, 0),
        ({"kind": "managed", "team": "t"}, {"cache_ttl_s": "90"}, 90),
        ({"kind": "managed", "team": "t", "cache_ttl_s": "5"}, {"cache_ttl_s": "90"}, 5),
        ({"kind": "managed", "team": "t", "cache_ttl_s": "0"}, {"cache_ttl_s": "90"}, 0),
        ({"kind": "managed", "team": "t"}, {}, 0),
    ],
)
def test_a_tokens_ttl_wins_over_its_teams_and_static_tokens_take_the_default(
    token: dict[str, str], team: dict[str, str] | None, ttl: int
) -> None:
    teams = {"t": Record.parse({"id": "t", **team})} if team is not None else {}
    rules = CachePolicy(_Teams(teams), default_ttl_s=30)  # type: ignore[arg-type]
    assert rules.ttl_of(Record.parse({"id": "x", **token})) == ttl


@pytest.mark.parametrize("value", [b"-1", b"1.5", b"soon", b"", b"99999999999"])
def test_an_unusable_ttl_header_is_a_bad_request(value: bytes) -> None:
    with pytest.raises(BadRequest) as raised:
        policy.requested_ttl(value)
    assert raised.value.param == "x-best-cache-ttl"


def test_cache_control_directives() -> None:
    assert directives(b"no-cache") == (True, False)
    assert directives(b"max-age=0, No-Store") == (False, True)
    assert directives(None) == (False, False)


@pytest.mark.anyio
@pytest.mark.parametrize("store_url", ["embedded"], indirect=True)
async def test_a_request_that_does_not_use_the_cache_hashes_nothing_and_reads_nothing(
    gateway: Gateway, upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: Any) -> Any:
        raise AssertionError("the cache was touched")

    monkeypatch.setattr(policy, "cache_key", forbidden)
    async with gateway() as app:
        monkeypatch.setattr(app.gateway.cache, "lookup", forbidden)
        monkeypatch.setattr(app.gateway.cache, "keep", forbidden)
        monkeypatch.setattr(app.gateway.cache, "join", forbidden)
        answers = [await post(app, CHAT), await post(app, {**CHAT, "stream": True})]
        metrics = app.gateway.metrics.render()[0].decode()
    assert [a.status_code for a in answers] == [200, 200]
    assert all("x-best-cache" not in a.headers for a in answers)
    assert upstream.calls["chat"] == 2
    assert 'best_cache_requests_total{result="miss"} 0.0' in metrics
