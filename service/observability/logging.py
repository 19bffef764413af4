"""Process logging: one line per event, level from LOG_LEVEL."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=FORMAT, stream=sys.stderr, force=True)
    # Access logs cost time per request and carry nothing /metrics does not.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
