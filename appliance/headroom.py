"""Warm headroom: how many idle workers a cloud keeps ready, and when. Pure, no I/O.

A cloud's `min_idle: N` (and a shape's) keeps N idle workers ready for the next
jobs, so a job submitted to an empty queue starts in about a second instead of
waiting for a worker to boot. `min_idle_window: "08:00-18:00"` (UTC, or
"08:00-18:00 Europe/Berlin" in a time zone) keeps them only during those hours
of each day. What the scheduler does with it is appliance/scheduler/headroom.py;
this module only says what is wanted, so cloud_status and the scheduler agree.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WINDOW_EXAMPLE = '"08:00-18:00" (UTC) or "08:00-18:00 Europe/Berlin"'
_WINDOW_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})(?:\s+(\S+))?\s*$")


class WindowError(ValueError):
    """A `min_idle_window` that is not a daily window: the message says what is wrong."""


@dataclass(frozen=True)
class DailyWindow:
    """Hours of each day, [start, end) in minutes after midnight in `zone` ("UTC" or an
    IANA name). A window whose end is before its start runs over midnight (22:00-06:00)."""
    start: int
    end: int
    zone: str = "UTC"

    def open_at(self, now: float) -> bool:
        t = datetime.fromtimestamp(now, UTC if self.zone == "UTC" else ZoneInfo(self.zone))
        minute = t.hour * 60 + t.minute
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def __str__(self) -> str:
        text = f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"
        return text if self.zone == "UTC" else f"{text} {self.zone}"


def parse_window(value: Any) -> DailyWindow:
    """'HH:MM-HH:MM', UTC, or followed by an IANA time zone; raises WindowError saying why not."""
    if not isinstance(value, str):
        raise WindowError(f"expected a daily window such as {WINDOW_EXAMPLE}, got {value!r}")
    m = _WINDOW_RE.match(value)
    if not m:
        raise WindowError(f"expected a daily window such as {WINDOW_EXAMPLE}, got {value!r}")
    sh, sm, eh, em, zone = m.groups()
    start = _minute(int(sh), int(sm), "start", value, allow_24=False)
    end = _minute(int(eh), int(em), "end", value, allow_24=True)
    if start == end % 1440:
        raise WindowError(f"the window {value!r} starts when it ends; leave min_idle_window out to keep "
                          f"min_idle all day")
    zone = zone or "UTC"
    if zone != "UTC":
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise WindowError(f"unknown time zone {zone!r} in {value!r}: give an IANA name such as "
                              f"Europe/Berlin or America/Chicago, or none for UTC") from None
    return DailyWindow(start, end, zone)


def _minute(hour: int, minute: int, which: str, value: str, allow_24: bool) -> int:
    if minute > 59 or hour > 24 or (hour == 24 and (minute or not allow_24)):
        raise WindowError(f"the {which} of {value!r} is not a time of day (HH:MM, 00:00 to "
                          f"{'24:00' if allow_24 else '23:59'})")
    return hour * 60 + minute


@dataclass(frozen=True)
class Wanted:
    """The idle workers a cloud should keep ready now."""
    cloud: int                           # its own min_idle: workers of any shape
    shapes: tuple[tuple[str, int], ...]  # (shape name, min_idle) of shapes with their own
    off: str = ""                        # why none are kept now although some are configured

    @property
    def configured(self) -> bool:
        return self.cloud > 0 or bool(self.shapes)

    @property
    def total(self) -> int:
        """Workers kept when every count is met: shape quotas count toward the cloud's."""
        return 0 if self.off else max(self.cloud, sum(n for _, n in self.shapes))


def wanted(config: Any, enabled: bool, now: float) -> Wanted:
    """What `config` (a CloudConfig) asks to keep at `now`: nothing when the cloud is
    disabled or its window is closed (`off` says which)."""
    shapes = tuple((s.name, s.min_idle) for s in config.shapes if s.min_idle > 0)
    w = Wanted(config.min_idle, shapes)
    if not w.configured:
        return w
    if not enabled:
        return Wanted(w.cloud, shapes, "disabled")
    window = config.min_idle_window
    if window is not None and not window.open_at(now):
        return Wanted(w.cloud, shapes, f"outside min_idle_window {window}")
    return w

