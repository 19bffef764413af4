"""The Lua scripts, read once from ``lua/`` and called by SHA (reloaded after a NOSCRIPT)."""

from __future__ import annotations

from importlib import resources

NAMES = (
    "quota",
    "breaker_cool",
    "breaker_state",
    "breaker_fail",
    "breaker_probe",
    "breaker_release",
    "breaker_close",
    "put_record",
)


def load_sources() -> dict[str, str]:
    folder = resources.files("service.store") / "lua"
    return {name: (folder / f"{name}.lua").read_text(encoding="utf-8") for name in NAMES}
