from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests.tools import REPO, load_local_fleet


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def local_fleet() -> ModuleType:
    return load_local_fleet()
