"""Waiting, for the tests and the benchmarks: poll until something holds, or fail saying what.

    from tests.waiting import wait_until
    worker = wait_until("a busy worker", lambda: busy_worker(app), timeout=60)

This is the one polling loop; everything else that waits (Appliance.wait in
tests/integration/conftest.py, ec2_support.wait_for, bench/common.py's
Appliance.wait, ...) is a thin wrapper that adds its own diagnostics.

* It returns the predicate's first truthy value, so a predicate can hand back what it found.
* It polls once more at the deadline, so a slow machine still gets its last chance.
* An exception from the predicate ends the wait at once, unless its type is in
  `retry_on`: then it counts as "not yet" and is reported as the last value if
  time runs out. List there what your probe raises while the thing is still on
  its way (a `docker exec` that fails, JSON not written yet).
* On timeout it raises WaitTimeout, an AssertionError (pytest reports a failed
  check), naming `what`, the timeout, the last value seen, and whatever
  `context()` returns (recent events, logs).

Checking that something does NOT happen ("no worker launched", "nothing
changed") is not a sleep: wait for the scheduler daemon to complete a few more
cycles (wait_cycles, or Appliance.wait_cycles in the fixtures), then assert.
Each cycle observes, decides and acts once, so a few cycles are a few chances
for the thing to happen, however fast or slow the machine is.

Standard library only: the benchmarks import it too.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """What did not happen in time, and the last thing seen instead."""


def wait_until(what: str, predicate: Callable[[], T], timeout: float, every: float = 1.0, *,
               retry_on: tuple[type[BaseException], ...] = (),
               context: Callable[[], str] | None = None) -> T:
    """Call predicate() every `every` seconds until it returns something truthy, and return that.

    what      what is awaited, for the failure message ("the workers to retire")
    timeout   seconds before giving up with WaitTimeout
    retry_on  exception types from the predicate that mean "not yet" (others propagate at once)
    context   called only on timeout; its text is added to the message (logs, events)
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = predicate()
        except retry_on as err:
            last = err
        else:
            if last:
                return last
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(every, remaining))
    message = f"timed out after {timeout:g}s waiting for {what}; last: {last!r}"
    if context is not None:
        try:
            message += "\n" + context()
        except Exception as err:      # the diagnostics must not hide the timeout itself
            message += f"\n(could not gather the diagnostics: {err!r})"
    raise WaitTimeout(message)


def wait_cycles(read_cycle: Callable[[], int | None], n: int = 3, timeout: float = 60, every: float = 0.2, *,
                retry_on: tuple[type[BaseException], ...] = (),
                context: Callable[[], str] | None = None) -> int:
    """Wait until the scheduler daemon has completed `n` more cycles than when this was called.

    read_cycle() returns the daemon's cycle counter: the "cycle" of the heartbeat
    it writes into its store after every cycle, which `cloud_status --json` shows
    as scheduler.cycle (None while there is none). A counter that goes down means
    the daemon restarted; its new cycles count as well.

    n must be at least 2 for a cycle that saw the caller's last action: the first
    cycle to complete may have begun before it. Returns the counter at the end.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seen = {"last": None, "done": 0}

    def advanced():
        now = read_cycle()
        if now is None:
            return None
        last = seen["last"]
        if last is not None:
            seen["done"] += now - last if now >= last else now     # now < last: a restarted daemon
        seen["last"] = now
        return now if seen["done"] >= n else None      # > 0 once done: some cycle completed

    def progress() -> str:
        text = f"cycle counter {seen['last']}, {seen['done']} of {n} cycles completed"
        return text + ("\n" + context() if context is not None else "")
    return wait_until(f"the scheduler to complete {n} more cycle(s)", advanced, timeout, every,
                      retry_on=retry_on, context=progress)
