"""JSON logs, one object per line, for the app and for uvicorn itself.

uvicorn loads app/logging.json (`--log-config`) in its supervisor and in every worker;
`configure_logging` gives the same format to code that runs without it (tests, scripts).
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

FIELDS = "%(levelname)s %(name)s %(message)s"
RENAMED = {"levelname": "level", "name": "logger"}
# uvicorn attaches an ANSI-coloured copy of each message: useless in JSON.
IGNORED = [*RESERVED_ATTRS, "color_message"]


def json_formatter() -> JsonFormatter:
    # "time": ISO 8601 in UTC, with microseconds.
    return JsonFormatter(FIELDS, rename_fields=RENAMED, timestamp="time", reserved_attrs=IGNORED)


def configure_logging(level: str) -> None:
    logger = logging.getLogger("berth")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(json_formatter())
        logger.addHandler(handler)
        logger.propagate = False
