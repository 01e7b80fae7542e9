"""JSON logs, one object per line, for the app and for uvicorn itself.

uvicorn loads berth/logging.json (`--log-config`) in its supervisor and in every worker;
`configure_logging` gives the same format to code that runs without it (tests, scripts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _quoted  # C, as json.dumps uses
from typing import TextIO

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

FIELDS = "%(levelname)s %(name)s %(message)s"
RENAMED = {"levelname": "level", "name": "logger"}
# uvicorn attaches an ANSI-coloured copy of each message: useless in JSON.
IGNORED = [*RESERVED_ATTRS, "color_message"]


def json_formatter() -> JsonFormatter:
    # "time": ISO 8601 in UTC, with microseconds.
    return JsonFormatter(FIELDS, rename_fields=RENAMED, timestamp="time", reserved_attrs=IGNORED)


class BatchedStreamHandler(logging.Handler):
    """Writes formatted lines to `stream` in batches: when MAX_LINES have gathered, when
    `flush` is called (every FLUSH_SECONDS by `flush_periodically`, and at shutdown), or at
    once for ERROR and above. One write per request cost half the app's throughput (the
    container runtime reads every write); a batch costs one. A crash loses at most the
    last FLUSH_SECONDS of access lines, never an error."""

    MAX_LINES = 256
    FLUSH_SECONDS = 0.1

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
            if len(self.lines) >= self.MAX_LINES or record.levelno >= logging.ERROR:
                self.flush()
        except Exception:
            self.handleError(record)

    def append(self, line: str) -> None:
        """A line formatted already (see `access_line`)."""
        with self.lock if self.lock else contextlib.nullcontext():
            self.lines.append(line)
        if len(self.lines) >= self.MAX_LINES:
            self.flush()

    def flush(self) -> None:
        with self.lock if self.lock else contextlib.nullcontext():
            if self.lines:
                self.stream.write("\n".join(self.lines) + "\n")
                self.stream.flush()
                self.lines.clear()

    async def flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.FLUSH_SECONDS)
            self.flush()


ACCESS = BatchedStreamHandler(sys.stderr)
ACCESS.setFormatter(json_formatter())


ACCESS_LOGGER = logging.getLogger("berth.access")


def access_line(
    *,
    request_id: str,
    method: str,
    path: str,
    status: int,
    duration_ms: float,
    client: str | None,
) -> None:
    """The access line of one request: the JSON object, keys and order that
    `log.info("request", extra=...)` through `json_formatter` writes, built directly. The
    logging module's record, formatter and handler chain cost about 25 us per request, the
    largest part of the runtime's own cost (bench/tuning.md). `request_id` is plain ASCII
    already (berth/runtime.py checks it); every other string is JSON-escaped."""
    if not ACCESS_LOGGER.isEnabledFor(logging.INFO):
        return
    ACCESS.append(
        '{"level": "INFO", "logger": "berth.access", "message": "request", '
        f'"request_id": "{request_id}", "method": {_quoted(method)}, '
        f'"path": {_quoted(path)}, "status": {status}, "duration_ms": {duration_ms!r}, '
        f'"client": {_quoted(client) if client is not None else "null"}, '
        f'"time": "{datetime.now(UTC).isoformat()}"}}'
    )


def configure_access_log() -> BatchedStreamHandler:
    """The per-request log goes through its own batched handler."""
    logger = logging.getLogger("berth.access")
    if ACCESS not in logger.handlers:
        logger.addHandler(ACCESS)
        logger.propagate = False
    return ACCESS


def configure_logging(level: str) -> None:
    logger = logging.getLogger("berth")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(json_formatter())
        logger.addHandler(handler)
        logger.propagate = False
