"""``uv run lint-test``: the everyday check: format, lint, types, then the tests."""

from __future__ import annotations

import subprocess
import sys

STEPS = (
    ("format", ["ruff", "format", "--check", "."]),
    ("lint", ["ruff", "check", "."]),
    ("types", ["mypy", "--strict", "service"]),
    ("tests", ["pytest", "-q"]),
)


def lint_test() -> None:
    for name, command in STEPS:
        print(f"== {name}: {' '.join(command)}", flush=True)
        if subprocess.call([sys.executable, "-m", *command]) != 0:
            sys.exit(f"lint-test: {name} failed")
