"""An issuer's key set against a real JWKS server on loopback: caching per Cache-Control,
refetches of unknown kids (single-flight, once per 30 s), and an unreachable server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from service.identities.config import Issuer, load_auth
from service.identities.jwks import REFETCH_S, JwksFetcher, KeySet, max_age
from tests.identities.issuer import JwksServer, Key, issuer_entry, write_auth


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def keys() -> list[Key]:
    return [Key("rsa-1"), Key("ec-1", "EC"), Key("rsa-2")]


@pytest.fixture
def server(keys: list[Key]) -> Iterator[JwksServer]:
    jwks = JwksServer(keys[:2], max_age=120).start()
    yield jwks
    jwks.stop()


def _issuer(tmp_path: Path, url: str) -> Issuer:
    write_auth(tmp_path, issuer_entry(url))
    return load_auth(tmp_path).issuers[0]


@pytest.fixture
async def fetcher() -> AsyncIterator[JwksFetcher]:
    client = JwksFetcher(timeout_s=2)
    yield client
    await client.close()


@pytest.mark.anyio
async def test_keys_are_fetched_once_and_served_from_cache_for_max_age(
    tmp_path: Path, server: JwksServer, fetcher: JwksFetcher
) -> None:
    clock = Clock()
    keyset = KeySet(_issuer(tmp_path, server.url), fetcher, clock)
    assert (await keyset.key("rsa-1")) is not None
    assert (await keyset.key("ec-1")) is not None
    clock.now += 119
    assert (await keyset.key("rsa-1")) is not None
    await asyncio.sleep(0.05)
    assert server.requests == 1
    # Past max-age: the next lookup answers from the cache and refreshes behind it.
    clock.now += 2
    assert (await keyset.key("rsa-1")) is not None
    for _ in range(100):
        if server.requests == 2:
            break
        await asyncio.sleep(0.01)
    assert server.requests == 2


@pytest.mark.anyio
async def test_a_burst_of_unknown_kids_causes_one_refetch(
    tmp_path: Path, server: JwksServer, fetcher: JwksFetcher
) -> None:
    clock = Clock()
    keyset = KeySet(_issuer(tmp_path, server.url), fetcher, clock)
    await keyset.key("rsa-1")
    clock.now += REFETCH_S
    server.delay_s = 0.2  # the fetch is still under way while the burst arrives
    found = await asyncio.gather(*(keyset.key(f"forged-{i}") for i in range(50)))
    assert found == [None] * 50
    assert server.requests == 2
    # Within 30 s of that refetch another unknown kid costs the provider nothing.
    clock.now += REFETCH_S - 1
    assert await keyset.key("forged-again") is None
    assert server.requests == 2


@pytest.mark.anyio
async def test_a_rotated_key_is_found_by_refetching(
    tmp_path: Path, server: JwksServer, fetcher: JwksFetcher, keys: list[Key]
) -> None:
    clock = Clock()
    keyset = KeySet(_issuer(tmp_path, server.url), fetcher, clock)
    assert await keyset.key("rsa-2") is None  # not published yet
    server.keys = [keys[2]]  # the issuer rotates: rsa-1 retired, rsa-2 signs
    assert await keyset.key("rsa-2") is None  # the refetch allowance is spent
    clock.now += REFETCH_S
    assert await keyset.key("rsa-2") == keys[2].jwk
    assert server.requests == 2


@pytest.mark.anyio
async def test_keys_stay_in_use_while_the_server_is_down(
    tmp_path: Path, server: JwksServer, fetcher: JwksFetcher, keys: list[Key]
) -> None:
    clock = Clock()
    keyset = KeySet(_issuer(tmp_path, server.url), fetcher, clock)
    assert await keyset.key("rsa-1") == keys[0].jwk
    server.down = True
    clock.now += 10_000  # long past max-age, and a refetch is allowed
    assert await keyset.key("unknown") is None  # refetched: the server answered 503
    assert await keyset.key("rsa-1") == keys[0].jwk
    assert await keyset.key("ec-1") == keys[1].jwk
    assert server.requests == 2


@pytest.mark.anyio
async def test_an_unreachable_server_leaves_no_keys(tmp_path: Path, fetcher: JwksFetcher) -> None:
    keyset = KeySet(_issuer(tmp_path, "http://127.0.0.1:9/jwks"), fetcher, Clock())
    assert await keyset.key("rsa-1") is None


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, 300.0),
        ("public, max-age=120", 120.0),
        ("max-age=0, must-revalidate", 10.0),
        ("no-store", 10.0),
        ("max-age=99999999", 86_400.0),
        ("private", 300.0),
    ],
)
def test_cache_lifetime_follows_cache_control(header: str | None, seconds: float) -> None:
    assert max_age(header) == seconds
