"""The manual keeps up with the code: every environment variable the gateway reads is
documented, and nothing cites a contract users never see."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.settings import VARIABLES

REPO = Path(__file__).resolve().parent.parent
CONFIGURATION = REPO / "docs" / "configuration.md"


def variables_in_settings_source() -> set[str]:
    """The names settings.py reads, from its source: each field's alias (``_var("NAME"``)."""
    source = (REPO / "service" / "settings.py").read_text()
    return set(re.findall(r'_var\(\s*"([A-Z][A-Z0-9_]*)"', source))


def test_the_source_and_the_settings_model_agree() -> None:
    """The extraction below finds what the model really reads (it would miss a variable read
    some other way, and then this fails)."""
    assert variables_in_settings_source() == set(VARIABLES)
    assert {"PORT", "REDIS_URL", "AUTH_TOKENS"} <= set(VARIABLES)


@pytest.mark.parametrize("name", sorted(variables_in_settings_source()))
def test_every_setting_is_documented(name: str) -> None:
    page = CONFIGURATION.read_text()
    # A row of the table names the variable in backticks, as `NAME`.
    assert f"`{name}`" in page, f"{name} is read by service/settings.py but not in {CONFIGURATION}"


def project_text_files() -> list[Path]:
    files = [REPO / "README.md"]
    for folder in ("service", "tests", "docs"):
        files += [
            p
            for p in sorted((REPO / folder).rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".png"
        ]
    return files


def test_nothing_cites_the_spec() -> None:
    word = re.compile(r"\b" + "SP" + r"EC\b")  # spelt apart, so this file does not cite it
    citing = [
        f"{path.relative_to(REPO)}:{number}"
        for path in project_text_files()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if word.search(line)
    ]
    assert citing == []
