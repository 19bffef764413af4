"""The Lua scripts, read once from ``lua/`` and called by SHA (reloaded after a NOSCRIPT)."""

from __future__ import annotations

from importlib import resources

NAMES = ("quota", "cool", "put_record", "routing_state")


def load_sources() -> dict[str, str]:
    folder = resources.files("service.store") / "lua"
    return {name: (folder / f"{name}.lua").read_text(encoding="utf-8") for name in NAMES}
