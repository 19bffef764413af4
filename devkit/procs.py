"""Ports, polling and child processes: the one implementation the tests, the benchmark and
``deploy/local_fleet.py`` share."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def eventually(
    probe: Callable[[], T | None],
    what: str,
    timeout: float = 15.0,
    interval: float = 0.02,
    ignore: tuple[type[BaseException], ...] = (OSError,),
) -> T:
    """Poll ``probe`` until it returns a truthy value, and return that value.  Exceptions of
    the ``ignore`` kinds count as "not yet"; after ``timeout`` seconds raise TimeoutError
    naming ``what`` and the last such exception."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = probe()
        except ignore as exc:
            last = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            suffix = f" (last error: {last!r})" if last is not None else ""
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}{suffix}")
        time.sleep(interval)
