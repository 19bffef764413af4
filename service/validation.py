"""How pydantic's validation errors read: one short sentence per error, with its location.

Settings, the YAML files and the admin bodies are validated by pydantic models (at load time
or on admin calls, never on the hot path); all three report every error the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

Location = tuple[int | str, ...]


@dataclass(frozen=True)
class Problem:
    loc: Location
    text: str
    input: Any

    @property
    def where(self) -> str:
        return dotted(self.loc)


def dotted(loc: Sequence[int | str]) -> str:
    """``("providers", 0, "base_url")`` -> ``providers[0].base_url``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def message(error: Mapping[str, Any]) -> str:
    """The sentence of one error, without pydantic's internal wording where it is unclear."""
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    # "... or instance of ProviderEntry" names a class of ours, not something of the file.
    text = str(error["msg"]).split(" or instance of ")[0]
    for prefix in ("Value error, ", "Assertion failed, "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    value = error.get("input")
    quoted = isinstance(value, str) and repr(value) in text  # the sentence shows it already
    if isinstance(value, str | int | float | bool) and "got " not in text and not quoted:
        text += f" (got {value!r})"
    return text


def problems(
    errors: ValidationError | Iterable[Mapping[str, Any]], drop: Sequence[str] = ()
) -> list[Problem]:
    """Every error, deduplicated, in document order; ``drop`` removes location parts that
    mean nothing to the reader (FastAPI's ``body``, ``query``...)."""
    if isinstance(errors, ValidationError):
        errors = errors.errors(include_url=False)
    seen: dict[tuple[Location, str], Problem] = {}
    for error in errors:
        loc = tuple(p for p in error["loc"] if p not in drop)
        text = message(error)
        seen.setdefault((loc, text), Problem(loc, text, error.get("input")))
    return list(seen.values())
