"""The only code that talks to providers: pooled keep-alive HTTP over aiohttp.

One request in, one response out; library errors become ``UpstreamFailure`` here and
nowhere else.  Policy (which provider, retries, cooldowns) lives in ``routing``.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from service.upstream.errors import BAD_BODY, CONNECT, SERVER_ERROR, TIMEOUT, UpstreamFailure


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    body: bytes
    content_type: bytes
    retry_after: str | None


class UpstreamStream:
    """An open streaming response; iterate ``chunks()`` and always ``close()``."""

    __slots__ = ("_response", "content_type", "retry_after", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.content_type = response.headers.get("content-type", "").encode()
        self.retry_after = response.headers.get("retry-after")

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except TimeoutError:
            raise UpstreamFailure(TIMEOUT, "upstream stream stalled") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamFailure(CONNECT, f"upstream stream broke: {exc!r}") from None

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except TimeoutError:
            raise UpstreamFailure(TIMEOUT, "upstream timed out") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamFailure(CONNECT, f"upstream connection failed: {exc!r}") from None

    def close(self) -> None:
        self._response.close()


class UpstreamClient:
    """A pooled HTTP client shared by every request of the process."""

    def __init__(self, connect_timeout_s: float = 10.0) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[str, str | None] = {}

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0, ttl_dns_cache=300, keepalive_timeout=30, enable_cleanup_closed=True
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            skip_auto_headers=("User-Agent",),
            auto_decompress=True,
            # aiohttp's trust_env looks proxies up in a worker thread on every request;
            # _proxy_for does it once per host instead.
            trust_env=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _proxy_for(self, url: str) -> str | None:
        """The HTTP(S)_PROXY that applies to ``url`` (honouring NO_PROXY), cached per origin."""
        origin = url.split("/", 3)[:3]
        key = "/".join(origin)
        if key not in self._proxies:
            scheme, host = origin[0].rstrip(":"), origin[2]
            proxies = urllib.request.getproxies_environment()
            bypass = urllib.request.proxy_bypass_environment(  # type: ignore[attr-defined]
                host.split(":")[0], proxies
            )
            self._proxies[key] = None if bypass else proxies.get(scheme)
        return self._proxies[key]

    def _timeout(
        self, total_s: float | None, read_s: float | None, bound_s: float
    ) -> aiohttp.ClientTimeout:
        """A connect timeout never longer than the attempt's own bound ``bound_s``."""
        connect = min(self._connect_timeout_s, bound_s)
        return aiohttp.ClientTimeout(
            total=total_s, connect=connect, sock_connect=connect, sock_read=read_s
        )

    async def post(
        self,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        timeout_s: float,
        first_byte_s: float | None = None,
    ) -> UpstreamResponse:
        """POST and read the whole answer within ``timeout_s``; with ``first_byte_s``, the
        status line must arrive within it (a TIMEOUT failure otherwise, the request closed)."""
        return await self._request("POST", url, headers, body, timeout_s, first_byte_s)

    async def open_stream(
        self, url: str, headers: Mapping[str, str], body: bytes, idle_timeout_s: float
    ) -> UpstreamStream:
        """POST and return once the status line and headers arrived; each later read of the
        body may wait at most ``idle_timeout_s``."""
        session = self._require_session()
        try:
            # Connecting, the TLS handshake and the headers together get the attempt's own
            # bound, not the client's fixed connect timeout.
            async with asyncio.timeout(idle_timeout_s):
                response = await session.post(
                    url,
                    data=body,
                    headers=headers,
                    timeout=self._timeout(None, idle_timeout_s, idle_timeout_s),
                    proxy=self._proxy_for(url),
                )
        except TimeoutError:
            raise UpstreamFailure(
                TIMEOUT, f"upstream did not answer within {idle_timeout_s:g}s"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamFailure(CONNECT, f"upstream connection failed: {exc!r}") from None
        return UpstreamStream(response)

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout_s: float,
    ) -> UpstreamResponse:
        """Any request, its whole answer read within ``timeout_s``; any status is returned
        (a failure to get one raises UpstreamFailure)."""
        return await self._request(method, url, headers, body, timeout_s)

    async def get_json(self, url: str, headers: Mapping[str, str], timeout_s: float) -> Any:
        """GET a JSON document (model lists, leaderboards); raises UpstreamFailure."""
        response = await self._request("GET", url, headers, None, timeout_s)
        if response.status != 200:
            raise UpstreamFailure(
                SERVER_ERROR, f"GET {url} answered HTTP {response.status}", status=response.status
            )
        try:
            return orjson.loads(response.body)
        except orjson.JSONDecodeError:
            raise UpstreamFailure(BAD_BODY, f"GET {url} answered invalid JSON") from None

    async def _request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout_s: float,
        first_byte_s: float | None = None,
    ) -> UpstreamResponse:
        session = self._require_session()
        first_byte = asyncio.timeout(first_byte_s if first_byte_s else None)
        try:
            async with (
                first_byte,
                session.request(
                    method,
                    url,
                    data=body,
                    headers=headers,
                    timeout=self._timeout(timeout_s, None, timeout_s),
                    proxy=self._proxy_for(url),
                ) as response,
            ):
                first_byte.reschedule(None)  # the rest of the answer has timeout_s
                return UpstreamResponse(
                    response.status,
                    await response.read(),
                    response.headers.get("content-type", "").encode(),
                    response.headers.get("retry-after"),
                )
        except TimeoutError:
            if first_byte.expired():
                raise UpstreamFailure(
                    TIMEOUT, f"{url} sent no first byte within {first_byte_s:g}s"
                ) from None
            raise UpstreamFailure(TIMEOUT, f"{url} did not answer within {timeout_s:g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamFailure(CONNECT, f"{url}: connection failed: {exc!r}") from None

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() was not called")
        return self._session
