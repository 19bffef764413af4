"""Unique ids without a syscall per request: a random per-process prefix and a counter.

They name quota entries in the shared store, so they must be unique across the fleet; a
client-supplied ``x-request-id`` is echoed back but never used for that."""

from __future__ import annotations

import itertools
import os


class IdGenerator:
    __slots__ = ("_counter", "_prefix")

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex() + "-"
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):x}"
