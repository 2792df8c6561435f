"""The scheduler cycle's phases: timing, the one-line description, and when a slow cycle is logged."""
from appliance import cycletime
from appliance.cycletime import SlowCycles, judge

PHASES = {"observe_demand": 1.2, "observe_supply": 0.048, "decide": 0.009, "act": 0.0, "record": 0.031}


def test_a_timer_adds_each_block_to_its_phase():
    now = [0.0]
    timer = cycletime.PhaseTimer(clock=lambda: now[0])
    with timer.phase("decide"):
        now[0] += 0.5
    with timer.phase("record"):
        now[0] += 0.25
    now[0] += 0.1                         # outside any phase
    with timer.phase("decide"):
        now[0] += 0.125
    assert timer.phases() == {"observe_demand": 0.0, "observe_supply": 0.0, "decide": 0.625, "act": 0.0,
                              "record": 0.25}
    assert timer.elapsed() == 0.975


def test_a_phase_that_raises_is_still_counted():
    now = [0.0]
    timer = cycletime.PhaseTimer(clock=lambda: now[0])
    try:
        with timer.phase("act"):
            now[0] += 2
            raise RuntimeError
    except RuntimeError:
        pass
    assert timer.phases()["act"] == 2


def test_the_description_names_every_phase_in_order():
    assert cycletime.describe(1.288, PHASES) == (
        "1.29 s: observe demand 1.20 s, observe supply 48 ms, decide 9 ms, act 0 ms, record 31 ms")


def test_time_no_phase_covers_is_said_only_when_it_matters():
    assert "other" not in cycletime.describe(0.02, {p: 0.0 for p in cycletime.PHASES})
    assert cycletime.describe(2.0, {**PHASES, "observe_demand": 0.2}).endswith("other 1.71 s")
    assert cycletime.describe(0.012, {}) == "12 ms"          # a heartbeat from before phases were kept


def test_a_slow_cycle_is_logged_once_then_sparingly_then_its_end():
    state, line = judge(SlowCycles(), 0.3, PHASES, now=100)
    assert line is None and state == SlowCycles()
    state, line = judge(state, 1.29, PHASES, now=101)
    assert line == ("slow scheduler cycle (over 1 s): 1.29 s: observe demand 1.20 s, observe supply 48 ms, "
                    "decide 9 ms, act 0 ms, record 31 ms")
    for t in range(102, 400):                      # slow every second: not another line for ten minutes
        state, line = judge(state, 1.5, PHASES, now=t)
        assert line is None
    state, line = judge(state, 1.5, PHASES, now=701)
    assert line.startswith("scheduler cycles still slow (299 over 1 s in the last 600 s); the latest: 1.50 s:")
    state, line = judge(state, 1.5, PHASES, now=702)
    assert line is None
    state, line = judge(state, 0.2, PHASES, now=703)
    assert line == "scheduler cycles take under 1 s again (slow for 602 s)"
    state, line = judge(state, 0.2, PHASES, now=704)
    assert line is None and state == SlowCycles()
    assert judge(state, 1.01, PHASES, now=705)[1].startswith("slow scheduler cycle")


def test_exactly_the_limit_is_not_slow():
    assert judge(SlowCycles(), 1.0, PHASES, now=1) == (SlowCycles(), None)
