"""Process logging as ``best serve`` sets it up: LOG_LEVEL's level, one formatted line per
event on stderr, and no access log line per request."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest

from service.observability.logging import configure_logging

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\w+) ([\w.]+): (.*)$")


@pytest.fixture
def root_logging() -> Iterator[None]:
    """configure_logging replaces the root handlers (pytest's included): put them back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    access = logging.getLogger("uvicorn.access")
    access_level = access.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    access.setLevel(access_level)


@pytest.mark.parametrize("level", ["warning", "INFO", "debug"])
def test_the_level_comes_from_log_level_and_lines_are_formatted(
    root_logging: None, capsys: pytest.CaptureFixture[str], level: str
) -> None:
    configure_logging(level)
    log = logging.getLogger("best.test")
    log.debug("debug event")
    log.info("info event %d", 7)
    log.warning("warning event")
    lines = capsys.readouterr().err.splitlines()
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    events = [(m.group(1), m.group(2), m.group(3)) for m in parsed if m]
    expected = [
        ("DEBUG", "best.test", "debug event"),
        ("INFO", "best.test", "info event 7"),
        ("WARNING", "best.test", "warning event"),
    ]
    threshold = logging.getLevelName(level.upper())
    assert events == [e for e in expected if logging.getLevelName(e[0]) >= threshold]


def test_access_lines_are_off_even_at_debug(
    root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("debug")
    logging.getLogger("uvicorn.access").info('127.0.0.1 - "GET /v1/models HTTP/1.1" 200')
    logging.getLogger("uvicorn.error").info("Started server process")
    err = capsys.readouterr().err
    assert "GET /v1/models" not in err
    assert "uvicorn.error: Started server process" in err
