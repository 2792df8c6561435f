"""The pool over time: samples, buckets kept at their maximum, bounded, read back as series and charts."""
from __future__ import annotations

import pytest

from appliance import history
from appliance.history import BUCKET, WINDOW
from appliance.store import Store

T0 = 1_000_020.0        # the start of a bucket


def priced(cloud, shape):
    return shape, {"small": 0.5, "big": 2.0}.get(shape)


@pytest.mark.parametrize("idle, running, live, clouds, price_of, want", [
    # nothing at all: every state and configured cloud is a 0, not a gap; no price, no spend series
    (0, 0, [], ["local"], None,
     {"idle_jobs": 0, "running_jobs": 0, "state:booting": 0, "state:idle": 0, "state:busy": 0,
      "state:draining": 0, "cloud:local": 0}),
    # requested workers count as booting, as on the page's tiles; clouds add up their states
    (3, 2, [("local", "", "requested", 1), ("local", "", "booting", 2), ("aws", "small", "busy", 2)],
     ["local", "aws"], None,
     {"idle_jobs": 3, "running_jobs": 2, "state:booting": 3, "state:idle": 0, "state:busy": 2,
      "state:draining": 0, "cloud:local": 3, "cloud:aws": 2}),
    # a priced pool: the spend rate is what the live workers cost per hour, unpriced ones nothing
    (0, 4, [("aws", "small", "busy", 2), ("aws", "big", "draining", 1), ("local", "", "idle", 1)],
     ["aws", "local"], priced,
     {"idle_jobs": 0, "running_jobs": 4, "state:booting": 0, "state:idle": 1, "state:busy": 2,
      "state:draining": 1, "cloud:aws": 3, "cloud:local": 1, "spend_per_hour": 3.0}),
    # a cloud no longer configured still shows while it has workers
    (0, 0, [("gone", "", "draining", 1)], [], priced,
     {"idle_jobs": 0, "running_jobs": 0, "state:booting": 0, "state:idle": 0, "state:busy": 0,
      "state:draining": 1, "cloud:gone": 1, "spend_per_hour": 0.0}),
])
def test_a_sample_of_the_pool(idle, running, live, clouds, price_of, want):
    assert history.sample(idle, running, live, clouds, price_of) == want


@pytest.mark.parametrize("t, bucket", [(T0, T0), (T0 + 59.9, T0), (T0 + 60, T0 + 60), (T0 - 0.1, T0 - 60)])
def test_bucket_of(t, bucket):
    assert history.bucket_of(t) == bucket


@pytest.mark.parametrize("value, whole, top", [
    (0, True, 1), (1, True, 1), (3, True, 5), (7, True, 10), (10, True, 10), (11, True, 20),
    (180, True, 200), (0.3, False, 0.5), (0.0, False, 1), (1.2, False, 2), (42.0, False, 50)])
def test_nice_max(value, whole, top):
    assert history.nice_max(value, whole) == pytest.approx(top)


@pytest.mark.parametrize("span, step", [(15 * 60, 5 * 60), (60 * 60, 10 * 60), (WINDOW, 60 * 60), (5 * 60, 60)])
def test_time_ticks_are_round_and_few(span, step):
    ticks = history.time_ticks(T0 - span, T0)
    assert 2 <= len(ticks) <= 6
    assert all(t % step == 0 for t in ticks) and ticks == sorted(ticks)
    assert T0 - span <= ticks[0] and ticks[-1] <= T0


def test_the_store_keeps_each_series_largest_value_per_bucket_and_prunes_by_window(tmp_path):
    s = Store(str(tmp_path / "state.db"))
    s.record_history(T0, {"idle_jobs": 3, "running_jobs": 0})
    s.record_history(T0, {"idle_jobs": 1, "running_jobs": 2})      # later in the same minute
    s.record_history(T0 + BUCKET, {"idle_jobs": 0, "running_jobs": 2, "cloud:local": 1})
    assert s.history() == [(T0, "idle_jobs", 3), (T0, "running_jobs", 2),
                           (T0 + BUCKET, "cloud:local", 1), (T0 + BUCKET, "idle_jobs", 0),
                           (T0 + BUCKET, "running_jobs", 2)]
    assert [r[0] for r in s.history(since=T0 + 1)] == [T0 + BUCKET] * 3
    assert s.prune_history(T0 + BUCKET) == 2
    assert {r[0] for r in s.history()} == {T0 + BUCKET}
    s.close()


def test_live_counts_group_the_live_workers(tmp_path):
    from appliance.lifecycle import State
    s = Store(str(tmp_path / "state.db"))
    for wid, shape in (("a", "small"), ("b", "small"), ("c", "big"), ("d", "small")):
        s.add_worker(wid, "aws", "launch", now=1.0, shape=shape)
    s.transition("d", State.FAILED, "launch error", now=2.0)
    assert sorted(s.live_counts()) == [("aws", "big", "requested", 1), ("aws", "small", "requested", 2)]
    s.close()


ROWS = [(T0, "idle_jobs", 4), (T0, "running_jobs", 0), (T0, "state:booting", 1), (T0, "cloud:local", 1),
        # the scheduler was down for a minute: no bucket at T0 + 60
        (T0 + 120, "idle_jobs", 0), (T0 + 120, "running_jobs", 4), (T0 + 120, "state:busy", 1),
        (T0 + 120, "state:booting", 0), (T0 + 120, "cloud:local", 1), (T0 + 120, "cloud:aws", 0)]


def test_series_are_columns_over_the_buckets_with_nulls_where_a_series_has_no_value():
    out = history.series(ROWS)
    assert out["times"] == [T0, T0 + 120]
    assert (out["bucket_seconds"], out["window_seconds"], out["coalesce"]) == (60, 21600, "max")
    assert (out["idle_jobs"], out["running_jobs"]) == ([4, 0], [0, 4])
    assert out["workers_by_state"] == {"booting": [1, 0], "busy": [None, 1]}
    assert out["workers_by_cloud"] == {"aws": [None, 0], "local": [1, 1]}
    assert out["spend_per_hour"] is None
    assert history.series([(T0, "spend_per_hour", 1.5)])["spend_per_hour"] == [1.5]
    assert history.series([])["times"] == []


def test_the_charts_draw_steps_break_at_gaps_and_label_their_axes():
    now = T0 + 150
    out = history.charts(history.series(ROWS), now, clock=lambda t: f"t{int(t - T0)}")
    assert [c["key"] for c in out["charts"]] == ["jobs", "states", "clouds"]     # no price, no spend chart
    jobs = out["charts"][0]
    idle, running = jobs["lines"]
    assert (idle["label"], idle["cls"], idle["peak"]) == ("idle jobs", "c-idle-jobs", "4")
    assert running["peak"] == "4"
    # two runs: the minute at T0, then the bucket at T0 + 120, held until now
    assert len(idle["runs"]) == 2
    first = [tuple(map(float, p.split(","))) for p in idle["runs"][0].split()]
    second = [tuple(map(float, p.split(","))) for p in idle["runs"][1].split()]
    assert first[0][1] == first[1][1] < second[0][1]                 # 4 is above 0 (SVG's y grows down)
    assert second[-1][0] == pytest.approx(history.WIDTH - history.RIGHT)   # the last step reaches now
    assert [t["label"] for t in jobs["y_ticks"]] == ["0", "5"]          # no half a job on the axis
    assert [t["label"] for t in out["charts"][1]["y_ticks"]] == ["0", "1"]
    # the axis spans MIN_SPAN at least: a young pool's minutes do not fill the chart
    assert out["minutes"] == 15
    assert all(t["label"].startswith("t") for t in jobs["x_ticks"]) and jobs["x_ticks"]
    clouds = out["charts"][2]
    assert [(line["label"], line["cls"]) for line in clouds["lines"]] == [("aws", "k0"), ("local", "k1")]


def test_the_spend_chart_shows_when_a_price_is_configured():
    data = history.series([(T0, "idle_jobs", 0), (T0, "running_jobs", 0), (T0, "spend_per_hour", 0.36)])
    out = history.charts(data, T0 + 30)
    spend = out["charts"][-1]
    assert (spend["key"], spend["lines"][0]["peak"]) == ("spend", "0.36")
    assert [t["label"] for t in spend["y_ticks"]] == ["0.00", "0.25", "0.50"]


def test_an_empty_history_still_draws_empty_charts():
    out = history.charts(history.series([]), T0)
    assert out["samples"] == 0 and all(line["runs"] == [] for c in out["charts"] for line in c["lines"])
    assert out["minutes"] == 15
