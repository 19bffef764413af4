"""Model aliases (``config/aliases.yaml``): a requested model name that no provider serves,
matched against glob patterns in file order, routes as the first match's target.

Claude Code asks for ``claude-sonnet-4-5`` and the like; an alias sends those names to the
models a team routes to instead.  A name some provider serves is never aliased, so a provider
that serves Claude models natively keeps them.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

_CACHE_LIMIT = 4096  # bounded: clients choose these strings


class Aliases:
    """Glob pattern -> target, first match wins; matching ignores case."""

    __slots__ = ("_cache", "_rules", "rules")

    def __init__(self, rules: Iterable[tuple[str, str]] = ()) -> None:
        self.rules: tuple[tuple[str, str], ...] = tuple(rules)
        self._rules = tuple(
            (re.compile(fnmatch.translate(pattern), re.IGNORECASE), target)
            for pattern, target in self.rules
        )
        self._cache: dict[str, str | None] = {}

    def __bool__(self) -> bool:
        return bool(self._rules)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Aliases) and other.rules == self.rules

    def __hash__(self) -> int:
        return hash(self.rules)

    def target(self, model: str) -> str | None:
        """The target of the first pattern matching ``model``; None when none does."""
        if model in self._cache:
            return self._cache[model]
        found = next((target for rule, target in self._rules if rule.match(model)), None)
        if len(self._cache) < _CACHE_LIMIT:
            self._cache[model] = found
        return found
