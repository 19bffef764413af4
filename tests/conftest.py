from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server of the test session's own (flush it between uses if needed)."""
    server = RedisServer().start()
    yield server
    server.close()
