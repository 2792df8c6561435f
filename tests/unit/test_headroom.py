"""Warm headroom (min_idle): the configuration, the daily window, and the decisions, table-driven."""
from __future__ import annotations

from datetime import datetime

import pytest

from appliance.budget import Caps
from appliance.config import CloudConfig, SchedulerConfig, WorkerSize, loads
from appliance.headroom import DailyWindow, parse_window, wanted
from appliance.lifecycle import State
from appliance.model import CloudHealth, ShapeHealth
from appliance.scheduler import CloudView, decide
from appliance.shapes import Shape

from .test_scheduler import NOW, SETTINGS, group, launches, moved, observe, slot, worker


def at(hhmm: str, day: str = "2026-12-01") -> float:
    return datetime.fromisoformat(f"{day}T{hhmm}:00+00:00").timestamp()


# ------------------------------------------------------------------ configuration

def test_min_idle_and_its_window_are_read_per_cloud_and_per_shape():
    cfg = loads("""
clouds:
  - {name: a, type: local, max_workers: 4, min_idle: 2, min_idle_window: "08:00-18:00"}
  - name: b
    type: docker
    max_workers: 5
    min_idle_window: "22:30-06:00 Europe/Berlin"
    shapes: [{name: small, min_idle: 1}, {name: large, cpus: 4, memory: 8192}]
  - {name: c, type: local}
""")
    a, b, c = cfg.clouds
    assert (a.min_idle, a.min_idle_window) == (2, DailyWindow(480, 1080))
    assert (b.min_idle, [s.min_idle for s in b.shapes]) == (0, [1, 0])
    assert b.min_idle_window == DailyWindow(1350, 360, "Europe/Berlin")
    assert str(b.min_idle_window) == "22:30-06:00 Europe/Berlin"
    assert (c.min_idle, c.min_idle_window) == (0, None)


WINDOWS = [
    # (window, time UTC, open?)
    ("08:00-18:00", "07:59", False),
    ("08:00-18:00", "08:00", True),
    ("08:00-18:00", "17:59", True),
    ("08:00-18:00", "18:00", False),
    ("22:00-06:00", "23:30", True),          # over midnight
    ("22:00-06:00", "05:59", True),
    ("22:00-06:00", "12:00", False),
    ("00:00-24:00".replace("24:00", "23:59"), "12:00", True),
    ("18:00-24:00", "23:59", True),
    ("18:00-24:00", "00:00", False),
    # Berlin is UTC+1 in December: 08:00-18:00 there is 07:00-17:00 UTC
    ("08:00-18:00 Europe/Berlin", "07:00", True),
    ("08:00-18:00 Europe/Berlin", "17:00", False),
]


@pytest.mark.parametrize("text,hhmm,expected", WINDOWS, ids=[f"{w} at {t}" for w, t, _ in WINDOWS])
def test_the_daily_window(text, hhmm, expected):
    assert parse_window(text).open_at(at(hhmm)) is expected


def test_a_zone_follows_daylight_saving():
    berlin = parse_window("08:00-18:00 Europe/Berlin")
    assert berlin.open_at(at("06:30", "2026-07-01"))        # summer: UTC+2
    assert not berlin.open_at(at("06:30", "2026-12-01"))    # winter: UTC+1


def test_what_a_cloud_wants_now():
    cloud = CloudConfig("a", "local", max_workers=4, min_idle=2, min_idle_window=parse_window("08:00-18:00"))
    assert wanted(cloud, True, at("09:00")).total == 2
    off = wanted(cloud, True, at("19:00"))
    assert (off.total, off.off) == (0, "outside min_idle_window 08:00-18:00")
    assert wanted(cloud, False, at("09:00")).off == "disabled"
    assert not wanted(CloudConfig("b", "local"), True, at("09:00")).configured


# ------------------------------------------------------------------ decisions

def hcloud(name="local", min_idle=1, max_workers=3, enabled=True, backoff_until=0.0, breaker=False, window=None,
           shapes=None, priority=0, shape_backoff=None):
    kwargs = {"shapes": tuple(shapes)} if shapes else {"worker": WorkerSize()}
    cfg = CloudConfig(name=name, type="local", max_workers=max_workers, min_idle=min_idle, priority=priority,
                      min_idle_window=parse_window(window) if window else None, **kwargs)
    health = CloudHealth(name, enabled, max_workers, backoff_until=backoff_until, failures=5 if breaker else 0,
                         last_error="boom" if backoff_until or breaker else "", breaker_open=breaker)
    backing = {s: ShapeHealth(name, s, backoff_until=NOW + 30, last_error="no capacity")
               for s in (shape_backoff or ())}
    return CloudView(cfg, health, backing)


IDLE_LONG = NOW - 600          # idle far past SETTINGS.idle_timeout (60 s)
SMALL = Shape("small", 1, 1024, 4096, price=0.01)
LARGE = Shape("large", 4, 8192, 4096, price=0.05)


def idle(wid, since=IDLE_LONG, cloud="local", shape=""):
    return worker(wid, cloud, State.IDLE, since=since, shape=shape), slot(wid)


def busy(wid, cloud="local"):
    return worker(wid, cloud, State.BUSY), slot(wid, claimed=1, cpus=0, memory=0)


def booting(wid, cloud="local", shape=""):
    return worker(wid, cloud, State.BOOTING, since=NOW - 5, seen=0.0, shape=shape), None


HEADROOM = [
    # (name, clouds, workers (worker, slot), groups, settings, expected launches per cloud,
    #  expected moves {worker id: state}, a piece of each cloud's headroom line)
    ("no workers: min_idle 1 launches one", [hcloud()], [], [], SETTINGS, {"local": 1}, {},
     {"local": "headroom: min_idle 1, 0 idle, launching 1"}),
    ("an idle worker past idle_timeout is kept, nothing launched", [hcloud()], [idle("a")], [], SETTINGS, {}, {},
     {"local": "headroom: min_idle 1, 1 idle"}),
    ("min_idle 0 drains it as before", [hcloud(min_idle=0)], [idle("a")], [], SETTINGS, {},
     {"a": State.DRAINING}, {}),
    ("of two idle, the longest idle is drained, the other kept", [hcloud()],
     [idle("old", since=NOW - 900), idle("new", since=NOW - 300)], [], SETTINGS, {}, {"old": State.DRAINING},
     {"local": "1 idle"}),
    ("a job takes the idle worker: a replacement is launched in the same cycle", [hcloud()], [idle("a")],
     [group(1)], SETTINGS, {"local": 1}, {}, {"local": "0 idle, launching 1"}),
    ("a booting replacement counts: nothing launched twice, it is not cancelled", [hcloud()],
     [busy("a"), booting("b")], [], SETTINGS, {}, {}, {"local": "0 idle, 1 starting"}),
    ("a busy worker is no headroom", [hcloud(min_idle=2, max_workers=5)], [busy("a")], [], SETTINGS,
     {"local": 2}, {}, {"local": "0 idle, launching 2"}),
    ("demand first: the launches for jobs leave no room for headroom", [hcloud(max_workers=2)], [],
     [group(2)], SETTINGS, {"local": 2}, {}, {"local": "short of it: at max_workers (2)"}),
    ("headroom within max_workers", [hcloud(min_idle=2, max_workers=2)], [busy("a")], [], SETTINGS,
     {"local": 1}, {}, {"local": "launching 1; short of it: at max_workers (2)"}),
    ("headroom within the global max_workers", [hcloud(min_idle=2)], [], [],
     SchedulerConfig(idle_timeout=60, max_workers=1), {"local": 1}, {},
     {"local": "at the global max_workers (1)"}),
    ("headroom within max_booting", [hcloud(min_idle=3)], [], [],
     SchedulerConfig(idle_timeout=60, max_booting=2), {"local": 2}, {}, {"local": "at max_booting (2"}),
    ("a disabled cloud keeps no headroom: its idle worker drains", [hcloud(enabled=False)], [idle("a")], [],
     SETTINGS, {}, {"a": State.DRAINING}, {"local": "none kept: disabled"}),
    ("a disabled cloud cancels a starting headroom worker", [hcloud(enabled=False)], [booting("b")], [],
     SETTINGS, {}, {"b": State.RETIRED}, {"local": "none kept: disabled"}),
    ("a cloud backing off launches no headroom", [hcloud(backoff_until=NOW + 30)], [], [], SETTINGS, {}, {},
     {"local": "short of it: backing off after: boom"}),
    ("a cloud backing off keeps the idle worker it has", [hcloud(backoff_until=NOW + 30)], [idle("a")], [],
     SETTINGS, {}, {}, {"local": "1 idle"}),
    ("an open breaker launches no headroom", [hcloud(breaker=True)], [], [], SETTINGS, {}, {},
     {"local": "short of it: stopped after 5 quick failures"}),
    ("inside the window: kept (NOW is 02:46 UTC)", [hcloud(window="02:00-03:00")], [idle("a")], [], SETTINGS, {}, {},
     {"local": "1 idle"}),
    ("outside the window: drained as usual", [hcloud(window="10:00-11:00")], [idle("a")], [], SETTINGS, {},
     {"a": State.DRAINING}, {"local": "none kept: outside min_idle_window 10:00-11:00"}),
    ("outside the window: idle within idle_timeout stays anyway", [hcloud(window="10:00-11:00")],
     [idle("a", since=NOW - 10)], [], SETTINGS, {}, {}, {"local": "none kept"}),
    ("per shape: the shape's own worker is kept and launched",
     [hcloud(min_idle=0, shapes=[SMALL, Shape("large", 4, 8192, 4096, price=0.05, min_idle=1)])],
     [idle("s", shape="small"), idle("l", shape="large")], [], SETTINGS, {}, {"s": State.DRAINING},
     {"local": "headroom: min_idle 0 (large 1), 1 idle"}),
    ("per shape: a missing one is launched in that shape",
     [hcloud(min_idle=0, shapes=[SMALL, Shape("large", 4, 8192, 4096, price=0.05, min_idle=1)])],
     [idle("s", shape="small")], [], SETTINGS, {"local": 1}, {"s": State.DRAINING},
     {"local": "launching 1"}),
    ("the cloud's min_idle counts the shapes' and launches its cheapest shape",
     [hcloud(min_idle=2, shapes=[Shape("large", 4, 8192, 4096, price=0.05, min_idle=1), SMALL])],
     [idle("l", shape="large")], [], SETTINGS, {"local": 1}, {}, {"local": "min_idle 2 (large 1), 1 idle, launching 1"}),
    ("a shape backing off launches no headroom of it",
     [hcloud(min_idle=0, shapes=[SMALL, Shape("large", 4, 8192, 4096, min_idle=1)], shape_backoff=["large"])],
     [], [], SETTINGS, {}, {}, {"local": "short of it: large: backing off after: no capacity"}),
    ("the cloud's min_idle skips a shape backing off", [hcloud(shapes=[SMALL, LARGE], shape_backoff=["small"])],
     [], [], SETTINGS, {"local": 1}, {}, {"local": "launching 1"}),
    ("each cloud its own headroom", [hcloud(), hcloud("docker", min_idle=0, priority=1)],
     [idle("a"), idle("d", cloud="docker")], [], SETTINGS, {}, {"d": State.DRAINING}, {"local": "1 idle"}),
    ("lowered max_workers wins over headroom", [hcloud(min_idle=2, max_workers=1)],
     [idle("a", since=NOW - 900), idle("b", since=NOW - 300)], [], SETTINGS, {}, {"a": State.DRAINING},
     {"local": "2 idle"}),
]


@pytest.mark.parametrize("name,clouds,workers,groups,settings,expected,moves,lines", HEADROOM,
                         ids=[c[0] for c in HEADROOM])
def test_headroom(name, clouds, workers, groups, settings, expected, moves, lines):
    ws = [w for w, _ in workers]
    slots = [s for _, s in workers if s is not None]
    names = tuple(c.name for c in clouds)
    plan = decide(observe(groups, slots, [(w.cloud, w.id) for w in ws], names), ws, clouds, settings)
    assert launches(plan) == expected
    assert {k: v for k, v in moved(plan).items()} == moves
    assert not plan.terminations or all(moves.get(t.worker_id) is State.RETIRED for t in plan.terminations)
    for cloud_name, piece in lines.items():
        assert piece in plan.headroom[cloud_name]
    assert set(plan.headroom) == set(lines)
    for launch in plan.launches:
        if not groups:
            assert launch.reason.startswith("headroom: ")


def test_every_launch_and_keep_says_why():
    clouds = [hcloud(min_idle=2, max_workers=5)]
    a, sa = idle("a")
    plan = decide(observe([], [sa], [("local", "a")]), [a], clouds, SETTINGS)
    assert [l.reason for l in plan.launches] == ["headroom: min_idle 2, 1 idle"]
    assert plan.kept == {"a": "idle for 600s, kept: headroom: min_idle 2, 1 idle, launching 1"}


def test_a_worker_within_idle_timeout_or_assigned_a_job_is_not_reported_as_kept():
    clouds = [hcloud()]
    a, sa = idle("a", since=NOW - 10)
    assert not decide(observe([], [sa], [("local", "a")]), [a], clouds, SETTINGS).kept
    assert not decide(observe([group(1)], [sa], [("local", "a")]), [a], clouds, SETTINGS).kept


def test_nothing_is_launched_on_a_guess_while_the_schedd_or_the_collector_is_down():
    clouds = [hcloud()]
    for obs in (observe(schedd_ok=False), observe(collector=False)):
        plan = decide(obs, [], clouds, SETTINGS)
        assert launches(plan) == {}
        assert "short of it: the schedd or the collector is not answering" in plan.headroom["local"]


def test_headroom_respects_the_budget():
    priced = hcloud(shapes=[SMALL])
    plan = decide(observe(), [], [priced], SETTINGS, budget=Caps(max_per_hour=0.001))
    assert launches(plan) == {}
    assert "budget: max_per_hour" in plan.headroom["local"]


def test_a_worker_of_another_image_is_no_headroom():
    clouds = [hcloud()]
    a, sa = idle("a")
    a = type(a)(**{**a.__dict__, "image": "bio"})
    plan = decide(observe([], [sa], [("local", "a")]), [a], clouds, SETTINGS)
    assert launches(plan) == {"local": 1}
    assert moved(plan) == {"a": State.DRAINING}
