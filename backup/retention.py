"""Which backups to keep: the newest of each of the last `daily` days that have one, the
newest of each of the last `weekly` ISO weeks that have one, the newest backup of all, and
any backup named as protected (the last one verified good, or one not yet copied off-site)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime


def to_keep(
    stamps: Mapping[str, datetime], *, daily: int, weekly: int, protected: Iterable[str] = ()
) -> set[str]:
    newest_first = sorted(stamps, key=lambda name: stamps[name], reverse=True)
    keep = set(newest_first[:1]) | (set(protected) & set(stamps))
    days: set[object] = set()
    weeks: set[object] = set()
    for name in newest_first:
        day = stamps[name].date()
        week = stamps[name].isocalendar()[:2]
        if day not in days and len(days) < daily:
            keep.add(name)
        if week not in weeks and len(weeks) < weekly:
            keep.add(name)
        days.add(day)
        weeks.add(week)
    return keep
