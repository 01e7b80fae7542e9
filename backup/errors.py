"""The failures the backup service reports: each carries one line for the operator."""

from __future__ import annotations

# sysexits.h EX_CONFIG, as berth/preflight.py: a configuration error, not a crash.
EX_CONFIG = 78


class BackupError(Exception):
    """A step that failed; the message is one line naming what and why."""


class ConfigError(BackupError):
    """A setting that cannot work; the message names the variable."""


class Stopping(BaseException):
    """SIGTERM or SIGINT arrived: unwind, removing partial files on the way."""
