"""Script calls made during one event-loop turn go to Redis as one pipeline.

Under load many requests reach their admission (or settlement) in the same turn; sending
them together costs one write and one read instead of one per request.  Each call is still
atomic: batching changes how calls travel, not what they do.

Calls of a script that takes a batch (``MERGED``: lua/quota.lua) go further: the calls of one
turn bound for one server travel as one script call, which reads and writes each owner's
windows once for all its calls.  A script call has a fixed cost (dispatch, arguments, the
script's own setup) that is most of a small call's, and under load it is shared by every
request of the turn.

On a Cluster a command's keys must share a slot, so a batch for one master declares only its
first owner's keys and passes the others as arguments; the script touches one key of each
before writing anything, and a key whose slot the master no longer serves (the slot map moved
under us) fails the batch with nothing done: its calls are sent again one slot per command,
which redis-py routes by MOVED/ASK as any other.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisClusterException, ResponseError

from service.store.backend import StoreUnreachable

RedisClient = Redis | RedisCluster

LAZY_S = 0.002
MERGED = frozenset({"quota"})  # scripts whose arguments are a batch of calls
MERGE_MAX = 64  # calls in one script call at most: Redis runs nothing else meanwhile
OWNER_KEYS = 3  # keys of an owner of a merged call (a token); more (6) for a team's token
OWNER_BASE = 1024  # a merged call's head: its first argument * OWNER_BASE + its owner

QueuedCall = tuple[str, list[str], list[Any], asyncio.Future[Any]]


class _Command:
    """One EVALSHA of a pipeline, and the positions in the batch of the calls it carries.

    A ``merged`` command carries several calls, whose answers come back as a list.  Its
    arguments (see lua/quota.lua; each costs Redis a parse and a Lua string, so there are
    few): the keys not declared (``spread``: all but the first owner's, for a batch of several
    Cluster slots); the owners (distinct key lists, numbered in turn) with more than
    OWNER_KEYS keys; then the number of calls and, for each, its head (its first argument,
    which says what follows, times OWNER_BASE plus its owner) and its other arguments."""

    __slots__ = ("calls", "keys", "merged", "name", "owners", "positions", "sizes", "spread")

    def __init__(self, name: str, merged: bool, spread: bool = False) -> None:
        self.name = name
        self.merged = merged
        self.spread = spread
        self.keys: list[str] = []
        self.calls: list[Any] = []
        self.positions: list[int] = []
        self.owners: dict[tuple[str, ...], int] = {}
        self.sizes: list[int] = []

    def add(self, position: int, keys: list[str], args: list[Any]) -> None:
        self.positions.append(position)
        if not self.merged:
            self.keys, self.calls = keys, args
            return
        owner = self.owners.setdefault(tuple(keys), len(self.owners) + 1)
        if owner > len(self.sizes):
            self.keys += keys
            self.sizes.append(len(keys))
        self.calls += [args[0] * OWNER_BASE + owner, *args[1:]]

    @property
    def declared(self) -> list[str]:
        return self.keys[: self.sizes[0]] if self.spread else self.keys

    @property
    def args(self) -> list[Any]:
        if not self.merged:
            return self.calls
        hidden = self.keys[self.sizes[0] :] if self.spread else []
        wide = [owner for owner, size in enumerate(self.sizes, 1) if size > OWNER_KEYS]
        return [len(hidden), *hidden, len(wide), *wide, len(self.positions), *self.calls]


class ScriptBatcher:
    """``bound_s``: a batch whose calls Redis has not answered within it (retries included)
    fails them all with ``StoreUnreachable``; None: unbounded here."""

    def __init__(
        self, client: RedisClient, sources: dict[str, str], bound_s: float | None = None
    ) -> None:
        self._client = client
        self._bound_s = bound_s
        self._sources = sources
        self._shas = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in sources.items()}
        self._queue: list[QueuedCall] = []
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

    def _commands(
        self, batch: list[QueuedCall], positions: Iterable[int] | None = None
    ) -> list[_Command]:
        """Calls of ``batch`` as script calls: the calls of a ``MERGED`` script grouped by
        server, or (those at ``positions``, sent again after the slot map moved) by slot."""
        cluster = isinstance(self._client, RedisCluster)
        by_slot = positions is not None
        commands: list[_Command] = []
        groups: dict[tuple[str, Any], _Command] = {}
        for position in range(len(batch)) if positions is None else positions:
            name, keys, args, _ = batch[position]
            if name in MERGED:
                group = (name, self._server(keys[0], by_slot) if cluster else None)
                command = groups.get(group)
                if command is None or len(command.positions) >= MERGE_MAX:
                    command = groups[group] = _Command(name, True, cluster and not by_slot)
                    commands.append(command)
            else:
                command = _Command(name, merged=False)
                commands.append(command)
            command.add(position, keys, args)
        return commands

    def _server(self, key: str, by_slot: bool) -> int | str:
        """Where a Cluster sends ``key``'s calls: its master's name, or its slot when asked
        (or when the slot map does not know it)."""
        slot = key_slot(key.encode())
        if by_slot:
            return slot
        assert isinstance(self._client, RedisCluster)
        try:
            return self._client.nodes_manager.get_node_from_slot(slot).name
        except (RedisClusterException, KeyError):  # a slot the map does not cover
            return slot

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the rest of this loop turn queue its calls
        batch, self._queue, self._flusher = self._queue, [], None
        commands = self._commands(batch)
        try:
            if self._bound_s is None:
                done = await self._run_batch(batch, commands)
            else:
                try:
                    async with asyncio.timeout(self._bound_s):
                        done = await self._run_batch(batch, commands)
                except TimeoutError:
                    raise StoreUnreachable(
                        f"no answer within {self._bound_s * 1000:.0f} ms"
                    ) from None
        except BaseException as exc:  # hand the failure to every waiting caller
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for command, result in done:
            failed = isinstance(result, Exception)
            answers = [result] * len(command.positions) if failed or not command.merged else result
            for position, answer in zip(command.positions, answers, strict=True):
                future = batch[position][3]
                if future.done():
                    continue
                if failed:
                    future.set_exception(answer)
                else:
                    future.set_result(answer)

    async def _run_batch(
        self, batch: list[QueuedCall], commands: list[_Command]
    ) -> list[tuple[_Command, Any]]:
        """Each command of ``batch`` with its answer."""
        results = await self._run(commands)
        done = list(zip(commands, results, strict=True))
        moved = [c for c, r in done if c.spread and _misrouted(r)]
        if moved:
            # The slot map moved under a batch of several slots: it ran nothing.  Send its
            # calls again one slot per command; redis-py follows MOVED/ASK for those.
            again = self._commands(batch, [p for c in moved for p in c.positions])
            done = [(c, r) for c, r in done if c not in moved]
            done += zip(again, await self._run(again), strict=True)
        return done

    async def _run(self, commands: list[_Command]) -> list[Any]:
        results = await self._execute(commands)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            # A server forgot the scripts (it restarted, or is a promoted replica: Redis does
            # not copy loaded scripts to replicas).  Load them and run again only the calls it
            # refused: the others ran, and must not count twice.
            for source in self._sources.values():
                await self._client.script_load(source)
            again = await self._execute([commands[i] for i in missing])
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        return results

    async def _execute(self, commands: list[_Command]) -> list[Any]:
        if len(commands) == 1:
            # Alone in its turn (light load): the command without a pipeline, which costs the
            # client less time than a pipeline of one.  A server's refusal comes back as the
            # pipeline returns it.
            try:
                return [await self._client.execute_command(*self._evalsha(commands[0]))]
            except ResponseError as exc:
                return [exc]
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            # Not pipe.evalsha(): redis-py refuses it in a Cluster pipeline; the raw command
            # works on every topology (the keys declared share one slot).
            pipe.execute_command(*self._evalsha(command))
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    def _evalsha(self, command: _Command) -> list[Any]:
        keys = command.declared
        return ["EVALSHA", self._shas[command.name], len(keys), *keys, *command.args]


def _misrouted(result: Any) -> bool:
    """Did a batch of several slots fail because a key's slot is not on the server it ran on
    (the script touches every owner before it writes: it ran nothing)?"""
    text = str(result) if isinstance(result, ResponseError) else ""
    return "non local key" in text or "same slot" in text
