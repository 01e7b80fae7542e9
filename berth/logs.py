"""JSON logs, one object per line, for the app and for uvicorn itself.

uvicorn loads berth/logging.json (`--log-config`) in its supervisor and in every worker;
`configure_logging` gives the same format to code that runs without it (tests, scripts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
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


# One request's access line, not formatted yet: request id, method, path, status, seconds
# it took, the client's (address, port), and the wall-clock time it ended.
AccessFields = tuple[bytes, str, str, int, float, "tuple[str, int] | None", float]


class BatchedStreamHandler(logging.Handler):
    """Writes lines to `stream` in batches: when MAX_LINES have gathered, when `flush` is
    called (every FLUSH_SECONDS by `flush_periodically`, and at shutdown), or at once for
    ERROR and above. One write per request cost half the app's throughput (the container
    runtime reads every write); a batch costs one. A crash loses at most the last
    FLUSH_SECONDS of access lines, never an error.

    Access lines are kept as their fields and formatted at the flush, all in one loop: in a
    request, between FastAPI's own work, formatting one line cost three times what it costs
    in the flush's loop (bench/tuning.md)."""

    MAX_LINES = 256
    FLUSH_SECONDS = 0.1

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self.lines: list[str | AccessFields] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
            if len(self.lines) >= self.MAX_LINES or record.levelno >= logging.ERROR:
                self.flush()
        except Exception:
            self.handleError(record)

    def append(self, fields: AccessFields) -> None:
        """One access line's fields (see `access_line`), from the event loop's thread. No
        lock: `list.append` is atomic, and `flush` swaps the list out before writing it."""
        lines = self.lines
        lines.append(fields)
        if len(lines) >= self.MAX_LINES:
            self.flush()

    def flush(self) -> None:
        with self.lock if self.lock else contextlib.nullcontext():
            lines, self.lines = self.lines, []
            if lines:
                text = [line if isinstance(line, str) else format_access(line) for line in lines]
                self.stream.write("\n".join(text) + "\n")
                self.stream.flush()

    async def flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.FLUSH_SECONDS)
            self.flush()


ACCESS = BatchedStreamHandler(sys.stderr)
ACCESS.setFormatter(json_formatter())


ACCESS_LOGGER = logging.getLogger("berth.access")


def access_line(
    request_id: bytes,
    method: str,
    path: str,
    status: int,
    seconds: float,
    client: tuple[str, int] | None,
) -> None:
    """The access line of one request, written with the next batch: only its fields here,
    positionally, and everything else (decoding, rounding, formatting) at the flush."""
    if ACCESS_LOGGER.isEnabledFor(logging.INFO):
        ACCESS.append((request_id, method, path, status, seconds, client, time.time()))


def format_access(fields: AccessFields) -> str:
    """The JSON object, keys and order that `log.info("request", extra=...)` through
    `json_formatter` writes, built directly: the logging module's record, formatter and
    handler chain cost about 25 us per request (bench/tuning.md). `request_id` is plain
    ASCII already (berth/runtime.py checks it); every other string is JSON-escaped."""
    request_id, method, path, status, seconds, client, ended = fields
    return (
        '{"level": "INFO", "logger": "berth.access", "message": "request", '
        f'"request_id": "{request_id.decode()}", "method": {_quoted(method)}, '
        f'"path": {_quoted(path)}, "status": {status}, '
        f'"duration_ms": {round(seconds * 1000, 2)!r}, '
        f'"client": {_quoted(client[0]) if client else "null"}, '
        f'"time": "{CLOCK.iso(ended)}"}}'
    )


class Clock:
    """A time as `datetime.fromtimestamp(t, UTC).isoformat()` writes it with microseconds,
    at a third of its cost: the date and time to the second are formatted once per second,
    only the microseconds per line."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def iso(self, timestamp: float) -> str:
        second = int(timestamp)
        if second != self._second:
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._prefix}.{int((timestamp - second) * 1_000_000):06d}+00:00"


CLOCK = Clock()


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
