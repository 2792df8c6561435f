"""The plan being drafted, shared by the phases of one decision.

Each phase reads the workers' states as earlier phases left them (a worker
that reconcile failed is not drained by scale-down) and adds to the same Plan.
Nothing here does I/O.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .. import lifecycle
from ..lifecycle import State
from ..model import Worker
from .plan import Drain, Plan, Terminate, Transition


@dataclass
class Draft:
    now: float
    live: list[Worker]
    plan: Plan = field(default_factory=Plan)
    state: dict[str, State] = field(default_factory=dict)     # worker id -> state as decided so far
    since: dict[str, float] = field(default_factory=dict)     # worker id -> when it entered that state
    moved_from: list[tuple[Worker, State]] = field(default_factory=list)   # (worker, state it left)

    @classmethod
    def start(cls, now: float, workers: Sequence[Worker]) -> Draft:
        live = [w for w in workers if w.state in lifecycle.LIVE]
        return cls(now, live, state={w.id: w.state for w in live}, since={w.id: w.state_since for w in live})

    def move(self, w: Worker, to: State, reason: str) -> None:
        frm = self.state[w.id]
        lifecycle.check(frm, to)
        self.state[w.id] = to
        self.since[w.id] = self.now
        self.moved_from.append((w, frm))
        self.plan.transitions.append(Transition(w.id, to, reason))

    def end(self, w: Worker, to: State, reason: str) -> None:
        """Move to retired/failed and remove its resource."""
        self.move(w, to, reason)
        # ads to withdraw only if it ever joined (or was seen just now)
        withdraw = w.last_seen > 0 or w.id in self.plan.seen
        self.plan.terminations.append(Terminate(w.id, w.cloud, w.resource_id, reason, withdraw=withdraw))

    def drain(self, w: Worker, reason: str, why: str | None = None) -> None:
        self.move(w, State.DRAINING, reason)
        self.plan.drains.append(Drain(w.id, why or reason))

    def in_state(self, *states: State) -> list[Worker]:
        return [w for w in self.live if self.state[w.id] in states]
