"""Fixtures of the in-process edge tests that run on each store backend."""

from __future__ import annotations

import pytest

from tests.harness import RedisServer


@pytest.fixture(params=["embedded", "redis"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """The gateway's store: embedded (None), or the session's redis-server."""
    if request.param == "embedded":
        return None
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url
