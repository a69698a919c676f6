"""Delivery windows: when a destination may be sent to.

A schedule is a comma-separated list of windows, each an optional day range
and a time range in local time::

    Mon-Fri 19:00-07:00, Sat-Sun 00:00-24:00
    22:00-06:00

A window whose end is not after its start runs past midnight into the next
day, and belongs to the day it starts on. An empty schedule means always.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(
    r"^(?:(?P<first>[A-Za-z]{3})(?:-(?P<last>[A-Za-z]{3}))?\s+)?"
    r"(?P<start>\d{1,2}:\d{2})-(?P<end>\d{1,2}:\d{2})$"
)
_MINUTES_PER_DAY = 24 * 60


class ScheduleError(ValueError):
    """A schedule text that cannot be read."""


@dataclass(frozen=True)
class Window:
    """One window: the weekdays it starts on (0 = Monday) and minutes since midnight."""

    days: frozenset[int]
    start: int
    end: int

    def contains(self, moment: dt.datetime) -> bool:
        minute = moment.hour * 60 + moment.minute
        weekday = moment.weekday()
        if self.start < self.end:
            return weekday in self.days and self.start <= minute < self.end
        # Past midnight: the early part belongs to the window of the day before.
        if weekday in self.days and minute >= self.start:
            return True
        return (weekday - 1) % 7 in self.days and minute < self.end


@dataclass(frozen=True)
class Schedule:
    """A set of windows; an empty set means always open."""

    windows: tuple[Window, ...]
    text: str = ""

    def is_open(self, moment: dt.datetime | None = None) -> bool:
        if not self.windows:
            return True
        moment = moment or dt.datetime.now()
        return any(window.contains(moment) for window in self.windows)

    def next_open(self, moment: dt.datetime | None = None) -> dt.datetime:
        """Return the first minute at or after `moment` when a window is open."""
        moment = (moment or dt.datetime.now()).replace(second=0, microsecond=0)
        for _ in range(8 * _MINUTES_PER_DAY):
            if self.is_open(moment):
                return moment
            moment += dt.timedelta(minutes=1)
        return moment


def _minutes(text: str, label: str, source: str) -> int:
    hours, minutes = (int(part) for part in text.split(":"))
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise ScheduleError(f"invalid {label} time {text!r} in schedule {source!r}: use HH:MM from 00:00 to 24:00")
    return hours * 60 + minutes


def _day(text: str, source: str) -> int:
    try:
        return DAYS.index(text.lower())
    except ValueError:
        raise ScheduleError(
            f"invalid day {text!r} in schedule {source!r}: use Mon, Tue, Wed, Thu, Fri, Sat or Sun"
        ) from None


def parse_schedule(text: str | None) -> Schedule:
    """Parse a schedule text; raise ScheduleError naming the part that is wrong."""
    if not text or not text.strip():
        return Schedule(())
    windows = []
    for part in text.split(","):
        part = part.strip()
        match = _WINDOW.match(part)
        if not match:
            raise ScheduleError(
                f"invalid window {part!r} in schedule {text!r}: write [Day[-Day]] HH:MM-HH:MM, "
                "such as 'Mon-Fri 19:00-07:00'"
            )
        first, last = match.group("first"), match.group("last")
        if first is None:
            days = frozenset(range(7))
        else:
            start_day = _day(first, text)
            end_day = _day(last, text) if last else start_day
            span = (end_day - start_day) % 7
            days = frozenset((start_day + offset) % 7 for offset in range(span + 1))
        start = _minutes(match.group("start"), "start", text)
        end = _minutes(match.group("end"), "end", text)
        if start == end:
            raise ScheduleError(f"empty window {part!r} in schedule {text!r}: start and end are equal")
        windows.append(Window(days, start, end))
    return Schedule(tuple(windows), text)
