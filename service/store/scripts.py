"""The Lua scripts, read once from ``lua/`` and called by SHA (redis-py reloads on NOSCRIPT)."""

from __future__ import annotations

from importlib import resources

NAMES = ("admit", "settle", "cool")


def load_sources() -> dict[str, str]:
    folder = resources.files("service.store") / "lua"
    return {name: (folder / f"{name}.lua").read_text(encoding="utf-8") for name in NAMES}
