"""Script calls made during one event-loop turn go to Redis as one pipeline.

Under load many requests reach their admission (or settlement) in the same turn; sending
them together costs one write and one read instead of one per request, which is most of
the store's cost per request.  Each call is still its own atomic script: batching changes
how calls travel, not what they do.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

RedisClient = Redis | RedisCluster

LAZY_S = 0.002


class ScriptBatcher:
    def __init__(self, client: RedisClient, sources: dict[str, str]) -> None:
        self._client = client
        self._sources = sources
        self._shas = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in sources.items()}
        self._queue: list[tuple[str, list[str], list[Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def call(
        self, name: str, keys: list[str], args: list[Any], urgent: bool = True
    ) -> asyncio.Future[Any]:
        """Queue a script call.  A call that is not urgent (settlement after a response) may
        wait up to LAZY_S for an urgent one to travel with, saving a round trip."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((name, keys, args, future))
        if self._flusher is None:
            if urgent:
                self._start()
            elif self._timer is None:
                self._timer = loop.call_later(LAZY_S, self._start)
        return future

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the rest of this loop turn queue its calls
        batch, self._queue, self._flusher = self._queue, [], None
        try:
            results = await self._execute(batch)
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:
                # A server forgot the scripts (it restarted, or is a promoted replica: Redis
                # does not copy loaded scripts to replicas).  Load them and run again only the
                # calls it refused: the others ran, and must not count twice.
                for source in self._sources.values():
                    await self._client.script_load(source)
                again = await self._execute([batch[i] for i in missing])
                for i, result in zip(missing, again, strict=True):
                    results[i] = result
        except BaseException as exc:  # hand the failure to every waiting caller
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _execute(self, batch: list[tuple[str, list[str], list[Any], Any]]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for name, keys, args, _ in batch:
            # Not pipe.evalsha(): redis-py refuses it in a Cluster pipeline; the raw command
            # works on every topology (each call's keys share one slot).
            pipe.execute_command("EVALSHA", self._shas[name], len(keys), *keys, *args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results
