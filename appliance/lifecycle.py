"""The worker lifecycle as an explicit state machine.

    requested -> booting -> idle <-> busy -> draining -> retired
    and failed (launch error, boot timeout, vanished, lost)

Every change of state goes through `check`, so an impossible transition is a
bug caught where it happens, not a row that silently lies.
"""
from __future__ import annotations

from enum import Enum


class State(str, Enum):
    REQUESTED = "requested"   # row written, the cloud call is under way
    BOOTING = "booting"       # the cloud accepted it; not yet in the collector
    IDLE = "idle"             # in the collector, no claimed slot
    BUSY = "busy"             # at least one claimed slot
    DRAINING = "draining"     # told to finish its jobs and exit; no new jobs
    RETIRED = "retired"       # gone on purpose (drained, cancelled, removed)
    FAILED = "failed"         # gone by accident (launch error, boot timeout, vanished)

    def __str__(self) -> str:
        return self.value


LIVE = frozenset({State.REQUESTED, State.BOOTING, State.IDLE, State.BUSY, State.DRAINING})
ENDED = frozenset({State.RETIRED, State.FAILED})
STARTING = frozenset({State.REQUESTED, State.BOOTING})
JOINED = frozenset({State.IDLE, State.BUSY, State.DRAINING})

TRANSITIONS: dict[State | None, frozenset[State]] = {
    None: frozenset({State.REQUESTED}),
    State.REQUESTED: frozenset({State.BOOTING, State.FAILED, State.RETIRED}),
    # booting -> retired is a cancel: the demand went away before it joined
    State.BOOTING: frozenset({State.IDLE, State.BUSY, State.DRAINING, State.RETIRED, State.FAILED}),
    # idle/busy -> retired only by an operator's `cloud_admin -k --now`
    State.IDLE: frozenset({State.BUSY, State.DRAINING, State.RETIRED, State.FAILED}),
    State.BUSY: frozenset({State.IDLE, State.DRAINING, State.RETIRED, State.FAILED}),
    State.DRAINING: frozenset({State.RETIRED, State.FAILED}),
    State.RETIRED: frozenset(),
    State.FAILED: frozenset(),
}


class IllegalTransition(ValueError):
    pass


def check(current: State | None, new: State) -> State:
    """Return `new` if current -> new is allowed, else raise IllegalTransition."""
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(f"{current or 'nothing'} -> {new} is not a worker transition")
    return new
