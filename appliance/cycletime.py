"""How long the scheduler's cycle took, phase by phase, and when that is worth a log line.

The daemon times each phase of its cycle (observe demand: our schedd's queue and the
remote schedds'; observe supply: the collector and the clouds' listings; decide; act:
the cloud calls, drains and requeues; record: the store's two transactions) and keeps
the last cycle's figures in its heartbeat, where `cloud_status` and /metrics read them.
A slow cycle is logged once, in one line with its phases; while cycles stay slow, again
at most every SLOW_REPEAT seconds, with how many there were; and once when they are
quick again. Everything but PhaseTimer's clock is pure.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

PHASES = ("observe_demand", "observe_supply", "decide", "act", "record")
LABELS = {"observe_demand": "observe demand", "observe_supply": "observe supply", "decide": "decide",
          "act": "act", "record": "record"}
SLOW_CYCLE = 1.0      # seconds: a cycle longer than this is logged, with its phases
SLOW_REPEAT = 600.0   # seconds between two log lines while cycles stay slow


class PhaseTimer:
    """Adds the time spent in each `with timer.phase(name):` block to that phase."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.started = clock()
        self.spent = {p: 0.0 for p in PHASES}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t = self.clock()
        try:
            yield
        finally:
            self.spent[name] += self.clock() - t

    def elapsed(self) -> float:
        return self.clock() - self.started

    def phases(self) -> dict[str, float]:
        return {p: round(s, 4) for p, s in self.spent.items()}


def seconds(value: float) -> str:
    """'12 ms' under a second, '1.42 s' from one."""
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def describe(duration: float, phases: Mapping[str, float]) -> str:
    """'1.42 s: observe demand 1.20 s, observe supply 48 ms, decide 9 ms, act 0 ms, record 31 ms'
    (and 'other ...' when what no phase covers is worth saying: the cycle's own bookkeeping)."""
    parts = [f"{LABELS.get(p, p)} {seconds(phases[p])}" for p in PHASES if p in phases]
    other = duration - sum(phases.get(p, 0.0) for p in PHASES)
    if other >= max(0.05, 0.05 * duration):
        parts.append(f"other {seconds(other)}")
    return f"{seconds(duration)}: {', '.join(parts)}" if parts else seconds(duration)


@dataclass(frozen=True)
class SlowCycles:
    """What the daemon remembers between cycles to log slow ones sparingly."""
    since: float | None = None      # when the current run of slow cycles began (None: cycles are quick)
    logged_at: float = 0.0          # when it was last logged
    count: int = 0                  # slow cycles since then


def judge(state: SlowCycles, duration: float, phases: Mapping[str, float], now: float,
          limit: float = SLOW_CYCLE, repeat: float = SLOW_REPEAT) -> tuple[SlowCycles, str | None]:
    """The new state, and the line to log for this cycle, if any."""
    if duration <= limit:
        if state.since is None:
            return state, None
        return SlowCycles(), (f"scheduler cycles take under {limit:g} s again "
                              f"(slow for {now - state.since:.0f} s)")
    if state.since is None:
        return SlowCycles(now, now, 0), (f"slow scheduler cycle (over {limit:g} s): {describe(duration, phases)}")
    if now - state.logged_at >= repeat:
        return SlowCycles(state.since, now, 0), (
            f"scheduler cycles still slow ({state.count + 1} over {limit:g} s in the last "
            f"{now - state.logged_at:.0f} s); the latest: {describe(duration, phases)}")
    return SlowCycles(state.since, state.logged_at, state.count + 1), None
