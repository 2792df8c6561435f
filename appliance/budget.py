"""Spend accounting and budget caps. Pure: worker records in, numbers and verdicts out.

Each worker costs its shape's price per hour for as long as it lives, counted
per second (as EC2 and most clouds bill), from its start to its end (or now,
while it runs). A budget {max_per_hour, max_per_day}, globally and per cloud,
is checked before each launch only: a launch that would go over a cap does
not happen, and its demand waits with the reason. A cap never stops, drains
or otherwise touches a running worker, even when it is exceeded (a lowered
cap, a price change): its jobs always finish, so nothing here returns a
worker to remove.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .lifecycle import ENDED
from .model import Worker

HOUR = 3600.0
DAY = 86400.0
# money is compared to a millionth, so that 4.90 + 0.10 is not "over" 5.00
EPSILON = 1e-6
# max_per_day looks this many hours ahead at the rate after a launch (see budget_allows)
LOOKAHEAD_HOURS = 1.0
CAPS = ("max_per_hour", "max_per_day")
# a waiting group's reason names each budget cap that stopped its launches (within()):
# 'budget: [CLOUD ]max_per_hour 2.00 reached (...)', without CLOUD for the global budget
BUDGET_REACHED_RE = re.compile(r"budget: (?:([a-z0-9][a-z0-9-]*) )?(max_per_hour|max_per_day) \S+ reached")
_REACHED_PART_RE = re.compile(BUDGET_REACHED_RE.pattern + r"[^;]*")     # up to the next wait ('; ')


@dataclass(frozen=True)
class Spending:
    """One worker's share of the bill."""
    price: float | None              # per hour; None: unpriced (costs nothing as far as we know)
    start: float                     # when it was launched
    end: float | None = None         # when it ended; None: still running
    cloud: str = ""
    shape: str = ""


@dataclass(frozen=True)
class Caps:
    """A budget: None leaves that cap off."""
    max_per_hour: float | None = None
    max_per_day: float | None = None

    @property
    def any(self) -> bool:
        return self.max_per_hour is not None or self.max_per_day is not None


@dataclass(frozen=True)
class Spend:
    """What the pool costs now, and what it cost over the last day."""
    per_hour: float
    last_day: float


def spending_of(workers: Iterable[Worker], shape_of: Callable[[str, str], tuple[str, float | None]]
                ) -> list[Spending]:
    """Each worker's share of the bill: from its launch to its end (retired or failed), or
    on while it lives. shape_of(cloud, recorded shape) gives its shape's name and price per
    hour (None: unpriced): config.Config.priced_shape."""
    out = []
    for w in workers:
        shape, price = shape_of(w.cloud, w.shape)
        out.append(Spending(price, w.created_at, w.state_since if w.state in ENDED else None, w.cloud, shape))
    return out


def cost_per_hour(records: Iterable[Spending], now: float) -> float:
    """The price per hour of the workers alive at `now`."""
    return sum(r.price or 0.0 for r in records if r.start <= now and (r.end is None or r.end > now))


def spent(records: Iterable[Spending], since: float, until: float) -> float:
    """What the workers cost between `since` and `until`, per second: a worker
    that lived across the window's edges counts only its seconds inside."""
    total = 0.0
    for r in records:
        end = until if r.end is None else min(r.end, until)
        seconds = end - max(r.start, since)
        if r.price and seconds > 0:
            total += r.price * seconds / HOUR
    return total


def spend_at(records: Iterable[Spending], now: float) -> Spend:
    """Cost per hour now and spend over the last 24 hours. The day is a rolling
    window, not a calendar day: it needs no time zone, and a cap cannot be
    spent twice over in the hours around midnight."""
    records = list(records)
    return Spend(cost_per_hour(records, now), spent(records, now - DAY, now))


def budget_allows(launch_cost_per_hour: float, spend: Iterable[Spending], caps: Caps, now: float,
                  where: str = "") -> str | None:
    """None if launching workers costing `launch_cost_per_hour` more stays within
    the caps, else why not ('budget: max_per_hour 5.00 reached (4.90/h now, +0.17/h)').

    max_per_hour: the cost per hour now plus the launch's must stay under it.
    max_per_day: the last 24 hours' spend plus the next hour at the new rate
    must stay under it. Looking an hour ahead (the horizon of max_per_hour)
    stops launches before the cap is reached rather than after, since workers
    already running keep spending and are never stopped.

    A launch that costs nothing (unpriced shapes) is always allowed: it adds no
    spend, so an over-budget priced cloud never blocks a free local one.
    `where` names the budget's scope in the reason (a cloud), empty for the global one.
    """
    return within(launch_cost_per_hour, spend_at(spend, now), caps, where)


def within(launch_cost_per_hour: float, now_spend: Spend, caps: Caps, where: str = "") -> str | None:
    """budget_allows on a Spend already summed (the scheduler sums once per cycle)."""
    if launch_cost_per_hour <= 0:
        return None
    rate = now_spend.per_hour + launch_cost_per_hour
    scope = f"{where} " if where else ""
    if caps.max_per_hour is not None and rate > caps.max_per_hour + EPSILON:
        return (f"budget: {scope}max_per_hour {caps.max_per_hour:.2f} reached "
                f"({now_spend.per_hour:.2f}/h now, +{launch_cost_per_hour:.2f}/h)")
    if caps.max_per_day is not None and now_spend.last_day + rate * LOOKAHEAD_HOURS > caps.max_per_day + EPSILON:
        return (f"budget: {scope}max_per_day {caps.max_per_day:.2f} reached "
                f"({now_spend.last_day:.2f} in the last 24 h, {now_spend.per_hour:.2f}/h now, "
                f"+{launch_cost_per_hour:.2f}/h)")
    return None


def add_spend(totals: dict, records: Iterable[Spending], since: float, until: float) -> dict:
    """Running totals {"cloud/shape": spend, "_until": time accounted up to} plus what the
    records cost between since and until."""
    out = dict(totals)
    for r in records:
        cost = spent([r], since, until)
        if cost:
            key = f"{r.cloud}/{r.shape}"
            out[key] = out.get(key, 0.0) + cost
    out["_until"] = until
    return out


def reached_caps(groups: Iterable[Mapping]) -> dict[tuple[str, str], str]:
    """The caps that stop launches idle jobs wait for, as the scheduler reported its groups
    (the store's 'demand' rows): (cloud, cap) -> the first reason naming it ('budget:
    max_per_hour 5.00 reached (4.90/h now, +0.17/h)'); cloud '' is the global budget."""
    out: dict[tuple[str, str], str] = {}
    for g in groups:
        if g.get("status") != "waiting":
            continue
        for m in _REACHED_PART_RE.finditer(g.get("reason") or ""):
            out.setdefault((m.group(1) or "", m.group(2)), m.group(0))
    return out
