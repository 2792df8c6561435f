"""Spend accounting and budget caps, table-driven. Pure functions: no store, no clock."""
from __future__ import annotations

import pytest

from appliance.budget import DAY, HOUR, Caps, Spending, budget_allows, cost_per_hour, spend_at, spent

NOW = 1_000_000.0

SPENT = [
    # (name, records, since, until, expected spend)
    ("one hour of a 0.36/h worker", [Spending(0.36, NOW - HOUR)], NOW - DAY, NOW, 0.36),
    ("per second: 10 s at 3.60/h", [Spending(3.6, NOW - 10)], NOW - DAY, NOW, 0.01),
    ("an ended worker counts until its end", [Spending(1.0, NOW - 3 * HOUR, NOW - 2 * HOUR)], NOW - DAY, NOW, 1.0),
    ("a worker started before the window counts from the window's start", [Spending(1.0, NOW - 30 * HOUR)],
     NOW - DAY, NOW, 24.0),
    ("a worker that ended before the window counts nothing", [Spending(1.0, NOW - 30 * HOUR, NOW - 25 * HOUR)],
     NOW - DAY, NOW, 0.0),
    ("a worker ending after the window counts until the window's end", [Spending(2.0, NOW - 2 * HOUR, NOW)],
     NOW - 2 * HOUR, NOW - HOUR, 2.0),
    ("a worker starting after the window counts nothing", [Spending(1.0, NOW + 10)], NOW - DAY, NOW, 0.0),
    ("a worker without a price costs nothing", [Spending(None, NOW - HOUR)], NOW - DAY, NOW, 0.0),
    ("workers add up", [Spending(0.5, NOW - HOUR), Spending(0.25, NOW - 2 * HOUR, NOW - HOUR)],
     NOW - DAY, NOW, 0.75),
]


@pytest.mark.parametrize("name,records,since,until,expected", SPENT, ids=[c[0] for c in SPENT])
def test_spent(name, records, since, until, expected):
    assert spent(records, since, until) == pytest.approx(expected)


RATE = [
    # (name, records, cost per hour at NOW)
    ("running workers count", [Spending(0.5, NOW - 10), Spending(0.25, NOW - HOUR)], 0.75),
    ("ended workers do not", [Spending(0.5, NOW - HOUR, NOW - 1), Spending(0.25, NOW - HOUR)], 0.25),
    ("a worker ending right now no longer costs", [Spending(0.5, NOW - HOUR, NOW)], 0.0),
    ("not yet started", [Spending(0.5, NOW + 1)], 0.0),
    ("unpriced", [Spending(None, NOW - 1)], 0.0),
]


@pytest.mark.parametrize("name,records,expected", RATE, ids=[c[0] for c in RATE])
def test_cost_per_hour(name, records, expected):
    assert cost_per_hour(records, NOW) == pytest.approx(expected)


def test_spend_at_is_the_rate_now_and_the_last_24_hours():
    records = [Spending(1.0, NOW - 30 * HOUR), Spending(2.0, NOW - 48 * HOUR, NOW - 23 * HOUR)]
    s = spend_at(iter(records), NOW)          # any iterable, read once
    assert s.per_hour == pytest.approx(1.0)
    assert s.last_day == pytest.approx(24.0 + 2.0)


RUNNING = [Spending(4.9, NOW - HOUR)]          # 4.90/h now, 4.90 spent in the last day

ALLOWS = [
    # (name, launch cost per hour, records, caps, expected: None (allowed) or the reason)
    ("no caps", 100.0, RUNNING, Caps(), None),
    ("under max_per_hour", 0.05, RUNNING, Caps(max_per_hour=5.0), None),
    ("exactly at max_per_hour is allowed", 0.10, RUNNING, Caps(max_per_hour=5.0), None),
    ("over max_per_hour", 0.17, RUNNING, Caps(max_per_hour=5.0),
     "budget: max_per_hour 5.00 reached (4.90/h now, +0.17/h)"),
    ("max_per_day: the day's spend plus the next hour at the new rate fits", 0.5,
     [Spending(1.0, NOW - 20 * HOUR)], Caps(max_per_day=21.5), None),
    ("max_per_day: it does not", 0.6, [Spending(1.0, NOW - 20 * HOUR)], Caps(max_per_day=21.5),
     "budget: max_per_day 21.50 reached (20.00 in the last 24 h, 1.00/h now, +0.60/h)"),
    ("max_per_day: spend older than 24 h is forgotten", 1.0, [Spending(10.0, NOW - 3 * DAY, NOW - 2 * DAY)],
     Caps(max_per_day=2.0), None),
    ("max_per_day counts workers that ended today", 1.0, [Spending(10.0, NOW - 5 * HOUR, NOW - 3 * HOUR)],
     Caps(max_per_day=20.0), "budget: max_per_day 20.00 reached (20.00 in the last 24 h, 0.00/h now, +1.00/h)"),
    ("the hourly cap is named first when both are reached", 1.0, RUNNING, Caps(5.0, 5.0),
     "budget: max_per_hour 5.00 reached (4.90/h now, +1.00/h)"),
    ("a launch that costs nothing is allowed even over the caps", 0.0, RUNNING, Caps(1.0, 1.0), None),
]


@pytest.mark.parametrize("name,launch,records,caps,expected", ALLOWS, ids=[c[0] for c in ALLOWS])
def test_budget_allows(name, launch, records, caps, expected):
    assert budget_allows(launch, records, caps, NOW) == expected


def test_a_cloud_budget_names_its_cloud():
    assert budget_allows(0.17, RUNNING, Caps(max_per_hour=5.0), NOW, where="aws") == \
        "budget: aws max_per_hour 5.00 reached (4.90/h now, +0.17/h)"


def test_a_cap_below_what_runs_refuses_launches_and_still_accounts_the_running_workers():
    # an operator lowered the cap under the running spend: the workers keep running and
    # keep being counted; only launches are refused (the module has nothing that stops one)
    records = [Spending(3.0, NOW - 2 * HOUR), Spending(3.0, NOW - HOUR)]
    assert cost_per_hour(records, NOW) == pytest.approx(6.0)
    assert spend_at(records, NOW + HOUR).last_day == pytest.approx(6.0 + 3.0 + 6.0)
    assert budget_allows(0.01, records, Caps(max_per_hour=1.0), NOW).startswith("budget: max_per_hour 1.00 reached")
    assert budget_allows(0.0, records, Caps(max_per_hour=1.0), NOW) is None
