"""The response cache: an opt-in, tenant-scoped store of final answers, by request hash.

- ``plan`` (policy.py) says whether a request uses the cache, and under which key.
- ``lookup`` reads an answer (a store call; a failure is a miss).
- ``entry`` turns a fresh answer into what is stored, or None when it must not be: an answer
  over ``CACHE_MAX_ENTRY_BYTES`` or content-filtered (errors never get this far).
- ``keep`` writes it in the background: the client's answer does not wait for the store.
- Single flight: identical concurrent misses of one scope on this replica make one upstream
  call.  The first (the leader) goes upstream; the others wait for its answer and are served
  it as hits.  When the leader's answer is not stored (an error, a cut stream, a filtered or
  oversized answer) each waiting request goes upstream on its own: an error is not an answer
  to share.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson

from service.apis import Api
from service.caching.formats import FORMATS, Format
from service.caching.policy import CachePolicy, Plan
from service.observability.metrics import Metrics
from service.quotas.limits import Record
from service.store.cache import Answers

log = logging.getLogger("best.cache")


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored answer: when, by which pair, and the route's JSON answer."""

    stored_ms: int
    provider: str
    model: str
    body: bytes

    def encode(self) -> bytes:
        head = orjson.dumps([self.stored_ms, self.provider, self.model])
        return head + b"\n" + self.body

    @classmethod
    def decode(cls, raw: bytes) -> Entry | None:
        head, _, body = raw.partition(b"\n")
        try:
            stored_ms, provider, model = orjson.loads(head)
        except (orjson.JSONDecodeError, ValueError, TypeError):
            return None
        if not isinstance(stored_ms, int) or not body:
            return None
        return cls(stored_ms, str(provider), str(model), body)

    def age_s(self) -> int:
        return max(0, int(time.time() * 1000) - self.stored_ms) // 1000


# The answer of a leader going upstream, for the identical requests waiting on it.
Flight = asyncio.Future[Entry | None]


class ResponseCache:
    def __init__(
        self, policy: CachePolicy, answers: Answers, metrics: Metrics, max_entry_bytes: int
    ) -> None:
        self.policy = policy
        self._answers = answers
        self._max_entry_bytes = max_entry_bytes
        self._results = {r: metrics.cache_requests.labels(r) for r in ("hit", "miss", "bypass")}
        self._flights: dict[str, Flight] = {}
        self._writes: set[asyncio.Task[None]] = set()

    async def flush(self) -> None:
        """Wait until the answers being stored are written."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def close(self) -> None:
        await self.flush()

    def plan(
        self,
        api: Api,
        token: Record | None,
        ttl_header: bytes | None,
        cache_control: bytes | None,
        body: dict[str, Any],
    ) -> Plan | None:
        return self.policy.plan(api, token, ttl_header, cache_control, body)

    def count(self, result: str) -> None:
        self._results[result].inc()

    @staticmethod
    def format(api: Api) -> Format:
        return FORMATS[api]

    # -- reading and writing -----------------------------------------------------------------

    async def lookup(self, plan: Plan) -> Entry | None:
        """The answer stored for ``plan``, when it is younger than the plan's TTL."""
        raw = await self._answers.get(plan.digest)
        if raw is None:
            return None
        entry = Entry.decode(raw)
        if entry is None or entry.age_s() >= plan.ttl_s:
            return None  # a request asking for a shorter TTL than the entry was stored with
        return entry

    def entry(
        self,
        plan: Plan,
        body: bytes,
        served_by: tuple[str, str] | None,
        answer: Any = None,
    ) -> Entry | None:
        """What would be stored of the 200 answer ``body`` (``answer``: already parsed);
        None when it must not be."""
        if plan.ttl_s == 0 or len(body) > self._max_entry_bytes:
            return None
        if answer is None:
            try:
                answer = orjson.loads(body)
            except orjson.JSONDecodeError:
                return None
        if not isinstance(answer, dict) or not FORMATS[plan.api].storable(answer):
            return None
        provider, model = served_by or ("", "")
        return Entry(int(time.time() * 1000), provider, model, body)

    def keep(self, plan: Plan, entry: Entry) -> None:
        """Store ``entry`` for the plan's TTL, in the background."""
        task = asyncio.ensure_future(
            self._answers.put(plan.digest, entry.encode(), plan.ttl_s * 1000)
        )
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    # -- single flight -----------------------------------------------------------------------

    def join(self, plan: Plan) -> tuple[Flight, bool]:
        """The flight of ``plan``'s key on this replica, and whether this request leads it
        (goes upstream, and must ``land`` it whatever happens) or follows (waits for the
        leader's answer)."""
        flight = self._flights.get(plan.digest)
        if flight is not None:
            return flight, False
        flight = self._flights[plan.digest] = asyncio.get_running_loop().create_future()
        return flight, True

    def land(self, plan: Plan, flight: Flight, entry: Entry | None) -> None:
        """The leader's answer (None: nothing to share) goes to the requests that wait for it;
        idempotent."""
        if self._flights.get(plan.digest) is flight:
            del self._flights[plan.digest]
        if not flight.done():
            flight.set_result(entry)

    @staticmethod
    async def follow(flight: Flight, timeout_s: float) -> Entry | None:
        """Wait for the leader's answer (None: go upstream yourself)."""
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(flight)
        except TimeoutError:
            return None
