from appliance import backoff
from appliance.model import CloudHealth


def test_launch_errors_back_off_with_growing_delays_capped():
    h = CloudHealth("c", True, 5)
    delays = []
    for _ in range(10):
        h = backoff.after_launch_error(h, "capacity", "no capacity", now=0.0)
        delays.append(h.backoff_until)
    assert delays[:4] == [10, 20, 40, 80] and delays[-1] == backoff.MAX_DELAY
    assert h.last_error == "capacity: no capacity" and not h.breaker_open


def test_auth_errors_wait_longer_and_retry_after_is_honoured():
    h = backoff.after_launch_error(CloudHealth("c", True, 5), "auth", "bad key", now=0.0)
    assert h.backoff_until == 120
    h = backoff.after_launch_error(CloudHealth("c", True, 5), "throttle", "slow down", now=0.0, retry_after=300)
    assert h.backoff_until == 300


def test_breaker_opens_after_quick_failures_and_a_join_resets():
    h = CloudHealth("c", True, 5)
    for i in range(backoff.BREAKER_AFTER - 1):
        h = backoff.after_quick_failure(h, "exited at once", now=float(i))
        assert not h.breaker_open
    h = backoff.after_quick_failure(h, "exited at once", now=10.0)
    assert h.breaker_open and h.failures == backoff.BREAKER_AFTER
    h = backoff.after_join(h)
    assert not h.breaker_open and h.failures == 0 and h.backoff_until == 0
    assert h.last_error == "exited at once"   # kept for the record


def test_base_delay_is_configurable_and_scales_the_slow_kinds():
    h = CloudHealth("c", True, 5)
    delays = []
    for _i in range(4):
        h = backoff.after_quick_failure(h, "exited at once", now=0.0, base=1.0)
        delays.append(h.backoff_until)
    assert delays == [1, 2, 4, 8]
    h = backoff.after_launch_error(CloudHealth("c", True, 5), "image", "no such image", now=0.0, base=1.0)
    assert h.backoff_until == 6
    # the default is unchanged
    assert backoff.delay_for(1, "image") == 60 and backoff.delay_for(1) == 10


def test_a_week_of_errors_in_a_row_stays_at_the_longest_delay():
    """Capacity errors never open the breaker: after 1,025 in a row (a week at the longest
    delay) the doubling must not overflow a float, or every cycle would fail."""
    for failures in (33, 1025, 10**6):
        assert backoff.delay_for(failures) == backoff.MAX_DELAY
