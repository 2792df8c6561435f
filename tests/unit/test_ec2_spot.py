"""Spot on the ec2 cloud: its options, the market of each launch (a table), the
fall-back to on-demand when spot capacity is refused (the driver against moto's
EC2 server through the fault-injecting proxy), and a spot interruption mapped to
a failed worker with reason "spot interruption" (reconcile, a table)."""
from __future__ import annotations

import json

import pytest

from appliance.clouds.base import CloudError, ErrorKind
from appliance.clouds.ec2 import TAG_MARKET, Ec2Driver, resource
from appliance.clouds.ec2_market import SpotHistory, choose_market, prune, refusal_fallback
from appliance.condor import summarize_slots
from appliance.config import ConfigError, SchedulerConfig, loads
from appliance.lifecycle import State
from appliance.model import CloudHealth, Observation, Resource, ResourceState, SlotSummary, Worker
from appliance.scheduler.draft import Draft
from appliance.scheduler.reconcile import judge_health, reconcile
from appliance.workerconf import WorkerSpec

pytestmark = pytest.mark.usefixtures("aws_env")     # tests/unit/conftest.py, with `endpoint`

AMI = "ami-12c6146b"
BASE = "pool: {{condor_host: cm}}\nclouds: [{{name: aws, type: ec2, region: r, ami: ami-01234567, instance_type: t3.large{extra}}}]"


def options(**extra):
    text = BASE.format(extra="".join(f", {k}: {json.dumps(v)}" for k, v in extra.items()))
    return loads(text).cloud("aws").settings


# ---------------------------------------------------------------- options

def test_spot_options_default_to_spot_without_fallback():
    o = options(market="spot")
    assert (o.market, o.spot_fallback, o.spot_fallback_after, o.spot_window, o.spot_retry) == \
        ("spot", "none", 3, 3600.0, 600.0)
    assert options().market == "on-demand"


@pytest.mark.parametrize("extra,error", [
    ({"market": "spotty"}, "clouds[0].market: must be one of on-demand, spot"),
    ({"market": "spot", "spot_fallback": "always"}, "clouds[0].spot_fallback: must be one of none, on-demand"),
    ({"market": "spot", "spot_fallback_after": 0}, "clouds[0].spot_fallback_after"),
    ({"market": "spot", "spot_window": 10}, "clouds[0].spot_window"),
    ({"market": "spot", "spot_retry": -1}, "clouds[0].spot_retry"),
    ({"spot_fallback": "on-demand"}, "clouds[0].spot_fallback: only applies when market is spot"),
    ({"spot_fallback_after": 5}, "clouds[0].spot_fallback_after: only applies when market is spot"),
    ({"spot_window": 600}, "clouds[0].spot_window: only applies when market is spot"),
    ({"spot_retry": 60}, "clouds[0].spot_retry: only applies when market is spot"),
])
def test_bad_spot_options_are_errors_naming_the_key(extra, error):
    with pytest.raises(ConfigError) as info:
        options(**extra)
    assert error in str(info.value)


# ---------------------------------------------------------------- the market of a launch

FALLBACK = {"market": "spot", "spot_fallback": "on-demand", "spot_fallback_after": 2, "spot_window": 600,
            "spot_retry": 300}
NOW = 10_000.0

MARKETS = [
    # (options, history, market, fallback, reason starts with)
    ({}, SpotHistory(), "on-demand", False, "market: on-demand"),
    ({"market": "spot"}, SpotHistory(), "spot", False, "market: spot"),
    # without spot_fallback, nothing sends spot elsewhere
    ({"market": "spot"}, SpotHistory({"i-1": NOW, "i-2": NOW, "i-3": NOW}, NOW, "InsufficientInstanceCapacity"),
     "spot", False, "market: spot"),
    (FALLBACK, SpotHistory(), "spot", False, "market: spot"),
    (FALLBACK, SpotHistory({"i-1": NOW - 10}), "spot", False, "market: spot"),
    (FALLBACK, SpotHistory({"i-1": NOW - 10, "i-2": NOW - 5}), "on-demand", True,
     "2 spot interruption(s) in the last 600s (spot_fallback_after: 2); spot again in 590s"),
    # one of the two is older than the window: spot again
    (FALLBACK, SpotHistory({"i-1": NOW - 601, "i-2": NOW - 5}), "spot", False, "market: spot"),
    (FALLBACK, SpotHistory(refused_at=NOW - 100, refused_why="InsufficientInstanceCapacity"), "on-demand", True,
     "spot capacity refused 100s ago (InsufficientInstanceCapacity); spot again after spot_retry (300s)"),
    (FALLBACK, SpotHistory(refused_at=NOW - 300, refused_why="SpotMaxPriceTooLow"), "spot", False, "market: spot"),
]


@pytest.mark.parametrize("extra,history,market,fallback,reason", MARKETS)
def test_the_market_of_each_launch(extra, history, market, fallback, reason):
    choice = choose_market(options(**extra), history, NOW)
    assert (choice.market, choice.fallback) == (market, fallback)
    assert choice.reason.startswith(reason), choice.reason


@pytest.mark.parametrize("extra,market,code,falls", [
    (FALLBACK, "spot", "InsufficientInstanceCapacity", True),
    (FALLBACK, "spot", "SpotMaxPriceTooLow", True),
    (FALLBACK, "spot", "MaxSpotInstanceCountExceeded", True),
    (FALLBACK, "spot", "AuthFailure", False),             # not a refusal of spot: the same error on-demand
    (FALLBACK, "on-demand", "InsufficientInstanceCapacity", False),   # already on-demand
    ({"market": "spot"}, "spot", "InsufficientInstanceCapacity", False),   # spot_fallback: none
])
def test_which_refusals_go_on_demand_at_once(extra, market, code, falls):
    assert refusal_fallback(options(**extra), market, code) is falls


def test_old_interruptions_are_forgotten():
    assert prune({"i-1": NOW - 700, "i-2": NOW - 10}, 600, NOW) == {"i-2": NOW - 10}


# ---------------------------------------------------------------- the driver against moto

# `endpoint` (moto over HTTP) and `aws_env` are in tests/unit/conftest.py


def driver(ep, pool_id, **extra) -> Ec2Driver:
    yaml = {"name": "aws", "type": "ec2", "region": ep.region, "ami": AMI, "instance_type": "t3.large",
            "endpoint_url": ep.url, **extra}
    cloud = loads(json.dumps({"pool": {"condor_host": "cm.example.org"}, "clouds": [yaml]})).cloud("aws")
    return Ec2Driver(cloud, "mypool", pool_id)


def spec(d, wid):
    return WorkerSpec(wid, d.cloud, "mypool", "cm.example.org", token="tok.en.sig", key=b"k" * 32)


def tags(ep, iid):
    return {t["Key"]: t["Value"] for t in ep.instances(instance_id=iid)[0]["Tags"]}


def test_spot_launch_is_tagged_spot(endpoint):
    d = driver(endpoint, "spot1", market="spot")
    iid = d.launch(spec(d, "aws-s00001"))
    [inst] = endpoint.instances(instance_id=iid)
    assert inst["InstanceLifecycle"] == "spot" and tags(endpoint, iid)[TAG_MARKET] == "spot"


@pytest.mark.parametrize("code", ["InsufficientInstanceCapacity", "SpotMaxPriceTooLow",
                                  "MaxSpotInstanceCountExceeded"])
def test_refused_spot_capacity_launches_on_demand_and_stays_there_for_spot_retry(endpoint, code, caplog):
    endpoint.clear()
    d = driver(endpoint, f"fb-{code}", **FALLBACK)
    endpoint.fail("RunInstances", code, "no spot here", times=1)
    calls = endpoint.count("RunInstances")
    with caplog.at_level("INFO", logger="appliance.clouds.ec2"):
        iid = d.launch(spec(d, "aws-f00001"))
    assert endpoint.count("RunInstances") == calls + 2        # spot refused, then on-demand
    [inst] = endpoint.instances(instance_id=iid)
    assert "InstanceLifecycle" not in inst and tags(endpoint, iid)[TAG_MARKET] == "on-demand"
    assert inst["ClientToken"] == "aws-f00001-od"      # not the refused spot request's token
    lines = [r.getMessage() for r in caplog.records if "on-demand" in r.getMessage()]
    assert lines == [f"cloud aws: worker aws-f00001 goes on-demand: spot capacity refused ({code})"]
    # the next launch does not ask for spot again before spot_retry
    iid2 = d.launch(spec(d, "aws-f00002"))
    assert tags(endpoint, iid2)[TAG_MARKET] == "on-demand"
    assert endpoint.count("RunInstances") == calls + 3


def test_refused_spot_without_fallback_is_a_capacity_error(endpoint):
    endpoint.clear()
    d = driver(endpoint, "nofb", market="spot")
    endpoint.fail("RunInstances", "InsufficientInstanceCapacity", "no spot here", times=1)
    with pytest.raises(CloudError) as info:
        d.launch(spec(d, "aws-n00001"))
    assert info.value.kind is ErrorKind.CAPACITY
    assert not endpoint.instances(**{"tag:appliance:pool": "nofb"})


def test_an_error_that_is_not_a_spot_refusal_is_not_retried_on_demand(endpoint):
    endpoint.clear()
    d = driver(endpoint, "authfb", **FALLBACK)
    endpoint.fail("RunInstances", "AuthFailure", "bad keys", times=1)
    calls = endpoint.count("RunInstances")
    with pytest.raises(CloudError) as info:
        d.launch(spec(d, "aws-a00001"))
    assert info.value.kind is ErrorKind.AUTH and endpoint.count("RunInstances") == calls + 1


def test_interruptions_seen_in_the_listing_send_launches_on_demand(endpoint):
    """The proxy stands in for EC2 taking spot instances back (moto cannot)."""
    endpoint.clear()
    d = driver(endpoint, "intr", **FALLBACK)
    first = [d.launch(spec(d, f"aws-i0000{n}")) for n in (1, 2)]
    assert {tags(endpoint, i)[TAG_MARKET] for i in first} == {"spot"}
    for iid in first:
        endpoint.interrupt_spot(iid)
    listed = d.list()
    assert {r.interruption for r in listed.values()} == {"spot"}
    assert all(r.state is ResourceState.GONE for r in listed.values())
    assert "Server.SpotInstanceTermination" in listed["aws-i00001"].detail
    iid = d.launch(spec(d, "aws-i00003"))
    assert tags(endpoint, iid)[TAG_MARKET] == "on-demand"
    d.list()                                   # seeing them again does not count them twice
    assert len(d._spot.interrupted) == 2


@pytest.mark.parametrize("inst,state,interruption", [
    ({"State": {"Name": "terminated"}, "StateReason": {"Code": "Server.SpotInstanceTermination"}}, "gone", "spot"),
    ({"State": {"Name": "shutting-down"}, "StateReason": {"Code": "Server.SpotInstanceTermination"}},
     "exited", "spot"),
    ({"State": {"Name": "terminated"}, "StateReason": {"Code": "Client.UserInitiatedShutdown"}}, "gone", ""),
    ({"State": {"Name": "running"}}, "running", ""),
])
def test_the_instance_state_reason_says_spot_interruption(inst, state, interruption):
    r = resource("aws-1", {"InstanceId": "i-1", **inst})
    assert (r.state, r.interruption) == (state, interruption)


# ---------------------------------------------------------------- reconcile

T0 = 1000.0
SETTINGS = SchedulerConfig()


def w(state, wid="aws-1", last_seen=T0):
    return Worker(wid, "aws", state, T0 - 100, T0 - 50, "i-1", f"{wid}@{wid}", last_seen)


SPOT_GONE = Resource("aws-1", "i-1", ResourceState.GONE,
                     "its spot instance i-1 is terminated (Server.SpotInstanceTermination)", interruption="spot")
PLAIN_GONE = Resource("aws-1", "i-1", ResourceState.GONE, "its instance i-1 is terminated")
SLOT = SlotSummary("aws-1", "aws-1@aws-1", 1, 0, 0, 0, 1)
NOTICE = SlotSummary("aws-1", "aws-1@aws-1", 1, 0, 0, 0, 1, notice="spot")

RECONCILE = [
    # (worker state, resource, slot, new state, reason)
    (State.BUSY, SPOT_GONE, None, State.FAILED,
     "spot interruption: its spot instance i-1 is terminated (Server.SpotInstanceTermination)"),
    (State.IDLE, SPOT_GONE, None, State.FAILED, "spot interruption: its spot instance i-1 is terminated"),
    (State.DRAINING, SPOT_GONE, None, State.FAILED, "spot interruption: "),
    (State.BOOTING, SPOT_GONE, None, State.FAILED, "spot interruption: "),
    (State.BUSY, PLAIN_GONE, None, State.FAILED, "vanished: its instance i-1 is terminated"),
    # the worker's own report, while its instance still runs
    (State.BUSY, Resource("aws-1", "i-1"), NOTICE, State.FAILED,
     "spot interruption: the worker reported its interruption notice"),
    (State.BUSY, Resource("aws-1", "i-1"), SLOT, State.BUSY, None),
]


@pytest.mark.parametrize("state,res,slot,to,reason", RECONCILE)
def test_a_spot_interruption_fails_the_worker_and_removes_it(state, res, slot, to, reason):
    worker = w(state)
    obs = Observation(T0, (), {"aws-1": slot} if slot else {}, {"aws": {"aws-1": res}})
    d = Draft.start(T0, [worker])
    reconcile(d, obs, SETTINGS, {})
    if reason is None:
        assert not d.plan.transitions and not d.plan.terminations
        return
    [t] = d.plan.transitions
    assert t.to is to and t.reason.startswith(reason), t.reason
    # removed with its ads withdrawn: the daemon requeues the jobs still shown running on it
    [term] = d.plan.terminations
    assert term.worker_id == "aws-1" and term.withdraw


def test_a_spot_interruption_before_joining_does_not_back_the_cloud_off():
    d = Draft.start(T0, [w(State.BOOTING, last_seen=0)])
    reconcile(d, Observation(T0, (), {}, {"aws": {"aws-1": SPOT_GONE}}), SETTINGS, {})
    health = {"aws": CloudHealth("aws", True, 2)}
    assert judge_health(d, health, SETTINGS) == health


def test_a_worker_with_a_notice_offers_no_free_capacity():
    import classad
    base = {"Name": "slot1@aws-1", "WorkerId": "aws-1", "State": "Unclaimed", "SlotType": "Partitionable",
            "Cpus": 2, "Memory": 2048, "Disk": 100, "TotalSlotCpus": 2}
    plain = summarize_slots([classad.ClassAd(base)])["aws-1"]
    spot = summarize_slots([classad.ClassAd({**base, "WorkerInterrupted": "spot"})])["aws-1"]
    rebalance = summarize_slots([classad.ClassAd({**base, "WorkerRebalance": True})])["aws-1"]
    assert (plain.free_cpus, plain.notice) == (2, "")
    assert (spot.free_cpus, spot.free_memory, spot.notice) == (0, 0, "spot")
    assert (rebalance.free_cpus, rebalance.notice) == (0, "rebalance")


def test_the_shipped_boot_script_is_sent_without_its_comments_and_watches_for_notices():
    from appliance.clouds.ec2 import REPO_TEMPLATE, strip_comments
    text = REPO_TEMPLATE.read_text()
    stripped = strip_comments(text)
    assert stripped.startswith("#!/bin/bash\n") and "\n#" not in stripped and "\n  #" not in stripped
    assert len(stripped) < len(text) - 2000
    for needed in ("IMDS=169.254.169.254:80", "spot/instance-action", "events/recommendations/rebalance",
                   'WorkerInterrupted = "spot"', "X-aws-ec2-metadata-token"):
        assert needed in stripped


def test_spot_interruptions_are_counted_in_metrics(tmp_path):
    import base64
    import time

    from prometheus_client.parser import text_string_to_metric_families

    from appliance.store import Store
    from appliance.web import create_app
    cfg = tmp_path / "appliance.yaml"
    cfg.write_text("clouds:\n  - {name: local, type: local, max_workers: 2}\n  - {name: other, type: local}\n")
    db = str(tmp_path / "state" / "appliance.db")
    store = Store(db)
    store.put("heartbeat", {"time": time.time(), "interval": 2, "duration": 0.01})
    for wid, reason in (("local-1", "spot interruption: the worker reported its interruption notice"),
                        ("local-2", "spot interruption: its spot instance i-2 is terminated"),
                        ("local-3", "vanished: its instance i-3 is terminated")):
        store.add_worker(wid, "local", "launch")
        store.transition(wid, State.BOOTING, "launched")
        store.transition(wid, State.FAILED, reason)
    app = create_app(db_path=db, config_path=str(cfg), state_dir=str(tmp_path), admin_password="pw-for-tests-1",
                     web_run=str(tmp_path / "run"))
    auth = {"Authorization": "Basic " + base64.b64encode(b"admin:pw-for-tests-1").decode()}
    text = app.test_client().get("/metrics", headers=auth).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("appliance_spot_interruptions_total", (("cloud", "local"),))] == 2
    assert samples[("appliance_spot_interruptions_total", (("cloud", "other"),))] == 0
    assert samples[("appliance_worker_failures_total", (("cloud", "local"),))] == 3
