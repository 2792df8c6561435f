"""How a cloud's health changes with failures and successes. Pure functions.

A launch error backs the cloud off with a growing delay (the demand meanwhile
falls through to the next cloud by priority). Workers that fail to join, or
die before joining, are "quick failures": after BREAKER_AFTER of them in a row
the breaker opens and the cloud launches nothing until an operator re-enables
it, so a broken image is not relaunched for ever.
"""
from __future__ import annotations

from dataclasses import replace

from .model import CloudHealth

BASE_DELAY = 10.0     # scheduler.backoff_base: the first delay; each failure in a row doubles it
MAX_DELAY = 600.0
BREAKER_AFTER = 5
# errors an operator must fix wait longer before the first retry (multiples of the base)
SLOW_KINDS = {"auth": 12.0, "config": 12.0, "image": 6.0}


def delay_for(failures: int, kind: str = "other", base: float = BASE_DELAY) -> float:
    first = base * SLOW_KINDS.get(kind, 1.0)
    # the exponent stops growing long before a float would overflow (a week of capacity
    # errors is over 1,000 in a row: 2.0 ** 1025 raised OverflowError and stopped every cycle)
    return min(first * 2 ** min(max(failures - 1, 0), 32), MAX_DELAY)


def after_launch_error(h: CloudHealth, kind: str, message: str, now: float,
                       retry_after: float | None = None, base: float = BASE_DELAY) -> CloudHealth:
    failures = h.failures + 1
    delay = max(delay_for(failures, kind, base), retry_after or 0.0)
    return replace(h, failures=failures, backoff_until=now + delay,
                   last_error=f"{kind}: {message}", last_error_at=now)


def after_quick_failure(h: CloudHealth, message: str, now: float, base: float = BASE_DELAY) -> CloudHealth:
    failures = h.failures + 1
    return replace(h, failures=failures, backoff_until=now + delay_for(failures, base=base),
                   last_error=message, last_error_at=now,
                   breaker_open=h.breaker_open or failures >= BREAKER_AFTER)


def after_join(h: CloudHealth) -> CloudHealth:
    """A worker joined the pool: the cloud works. The last error stays for the record."""
    if h.failures == 0 and h.backoff_until == 0 and not h.breaker_open:
        return h
    return replace(h, failures=0, backoff_until=0.0, breaker_open=False)
