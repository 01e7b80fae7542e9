"""Log set-up shared by the app's workers."""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(levelname)s [%(name)s] %(message)s"


def configure_logging(level: str) -> None:
    logger = logging.getLogger("berth")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)
        logger.propagate = False
