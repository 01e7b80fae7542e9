"""When things run: schedules ("03:00,15:00" UTC, or "every 6h"), durations, and the
backoff between retries."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from backup.errors import ConfigError

DURATION = re.compile(r"^([0-9]+)([smhd])$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
TIME_OF_DAY = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
DAY = 86400


def parse_duration(text: str, name: str) -> int:
    """Seconds in "30s", "15m", "6h" or "7d"; a ConfigError naming `name` otherwise."""
    match = DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ConfigError(f'{name}="{text}": use a positive duration such as 30s, 15m, 6h or 7d')
    return int(match.group(1)) * UNIT_SECONDS[match.group(2)]


def format_duration(seconds: float) -> str:
    """A short human form: 45s, 12m, 3h 20m, 2d 4h."""
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 2 * DAY:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // DAY}d {seconds % DAY // 3600}h"


@dataclass(frozen=True)
class Schedule:
    """Either every `interval` seconds, or daily at `times` (hour, minute) in UTC."""

    text: str
    interval: int | None = None
    times: tuple[tuple[int, int], ...] = ()

    @classmethod
    def parse(cls, text: str, name: str) -> Schedule:
        text = text.strip()
        if text.startswith("every "):
            try:
                interval = parse_duration(text.removeprefix("every "), name)
            except ConfigError:
                raise ConfigError(f'{name}="{text}": use e.g. "every 6h" (s, m, h or d)') from None
            return cls(text=text, interval=interval)
        times = []
        for part in text.split(","):
            match = TIME_OF_DAY.match(part.strip())
            if not match:
                raise ConfigError(
                    f'{name}="{text}": use UTC times like "03:00" or "03:00,15:00", or "every 6h"'
                )
            times.append((int(match.group(1)), int(match.group(2))))
        return cls(text=text, times=tuple(sorted(set(times))))

    @property
    def period(self) -> int:
        """The longest gap between two runs, in seconds."""
        if self.interval is not None:
            return self.interval
        minutes = [hour * 60 + minute for hour, minute in self.times]
        gaps = [b - a for a, b in zip(minutes, [*minutes[1:], minutes[0] + 1440], strict=True)]
        return max(gaps) * 60

    def next_after(self, moment: float) -> float:
        """The first run strictly after `moment` (epoch seconds); for an interval, one
        interval after it."""
        if self.interval is not None:
            return moment + self.interval
        now = datetime.fromtimestamp(moment, UTC)
        candidates = []
        for hour, minute in self.times:
            candidate = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
            if candidate.timestamp() <= moment:
                candidate += timedelta(days=1)
            candidates.append(candidate.timestamp())
        return min(candidates)


def backoff(failures: int, first: float, ceiling: float) -> float:
    """Seconds before retry number `failures` (1, 2, ...): first, 2 x first, 4 x first, ...
    up to `ceiling`."""
    return float(min(first * 2 ** max(0, failures - 1), max(first, ceiling)))
