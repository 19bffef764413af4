"""Lease renewal: the leases of this replica's requests in flight are renewed every
``RENEW_S``; a replica that dies stops renewing, and its leases expire ``LEASE_MS`` later
(their reservations are then charged in full: spend is never under-counted)."""

from __future__ import annotations

import asyncio
import logging
import time

from service.store.backend import StoreError
from service.store.client import Store
from service.store.keys import QuotaKeys

log = logging.getLogger("best.quotas")

LEASE_MS = 10_000
RENEW_S = 3.0


class Leases:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._held: dict[str, QuotaKeys] = {}  # entry -> its keys, while in flight
        self.clock_offset_ms = 0  # store clock - local clock, from the last admission
        self._renewer: asyncio.Task[None] | None = None

    def hold(self, entry: str, keys: QuotaKeys) -> None:
        """``entry`` was admitted with a lease: renew it until ``release``."""
        self._held[entry] = keys

    def release(self, entry: str) -> None:
        self._held.pop(entry, None)

    async def start(self) -> None:
        self._renewer = asyncio.create_task(self._renew_loop())

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(RENEW_S)
            await self.renew()

    async def renew(self) -> None:
        """Extend every held lease to ``LEASE_MS`` from now (store clock)."""
        leases: dict[str, list[str]] = {}
        for entry, keys in self._held.items():
            leases.setdefault(keys.token_leases, []).append(entry)
            if keys.team_leases is not None:
                leases.setdefault(keys.team_leases, []).append(entry)
        if not leases:
            return
        until = int(time.time() * 1000) + self.clock_offset_ms + LEASE_MS
        try:
            await self._store.renew(leases, until)
        except StoreError as exc:
            log.warning("lease renewal failed: %s", exc)
