"""The worker state machine: every allowed transition, and a sample of forbidden ones."""
import pytest

from appliance.lifecycle import ENDED, LIVE, IllegalTransition, State, check

R, B, I, U, D, T, F = (State.REQUESTED, State.BOOTING, State.IDLE, State.BUSY, State.DRAINING,
                       State.RETIRED, State.FAILED)

ALLOWED = [(None, R), (R, B), (R, F), (R, T), (B, I), (B, U), (B, D), (B, T), (B, F),
           (I, U), (I, D), (I, T), (I, F), (U, I), (U, D), (U, T), (U, F), (D, T), (D, F)]


@pytest.mark.parametrize("a,b", ALLOWED)
def test_allowed(a, b):
    assert check(a, b) is b


@pytest.mark.parametrize("a,b", [(s, t) for s in [None, *State] for t in State if (s, t) not in ALLOWED])
def test_forbidden(a, b):
    with pytest.raises(IllegalTransition):
        check(a, b)


def test_ended_states_are_final_and_disjoint_from_live():
    assert not (LIVE & ENDED) and LIVE | ENDED == set(State)
    for s in ENDED:
        for t in State:
            with pytest.raises(IllegalTransition):
                check(s, t)


def test_draining_never_goes_back_to_taking_jobs():
    for t in (I, U, B):
        with pytest.raises(IllegalTransition):
            check(D, t)
