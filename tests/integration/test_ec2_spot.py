"""Spot on the ec2 cloud, driven by the real appliance (real HTCondor, real
scheduler) against moto's EC2 server over HTTP behind the fault-injecting proxy.

moto cannot interrupt a spot instance: the test terminates it in moto, and the
proxy then reports it as EC2 does after an interruption (StateReason
Server.SpotInstanceTermination; tests/ec2_endpoint.py, `interrupt_spot`). Spot
capacity refused is the proxy answering RunInstances with EC2's error. Instances
here never join (moto runs nothing), so no job runs on them: the vacate and requeue
of a running job on a real worker is test_ec2_spot_boot.py's.

The tests run in order on one appliance (the history of interruptions matters).
"""
from __future__ import annotations

import pytest

from .conftest import JOB_SCRIPT, job_sub
from .ec2_support import booting_worker, cloud, ec2_world, pool_id, wait_for, worker, workers

pytestmark = pytest.mark.timeout(300)

CONFIG = """
pool: {{condor_host: {name}}}
scheduler: {{interval: 1, idle_timeout: 10, boot_timeout: 120, lost_timeout: 30}}
clouds:
  - name: aws
    type: ec2
    max_workers: 2
    region: us-west-2
    ami: {ami}
    instance_type: t3.large
    endpoint_url: {endpoint}
    env_file: /etc/appliance/aws.env
    market: spot
    spot_fallback: on-demand
    spot_fallback_after: 2
    spot_window: 3600
    spot_retry: 0
    worker: {{cpus: 1, memory: 1024}}
"""
AWS_ONLY = 'requirements = TARGET.CloudName == "aws"'


@pytest.fixture(scope="module")
def world(client, image, tmp_path_factory):
    with ec2_world(client, image, tmp_path_factory.mktemp("ec2spot"), CONFIG) as w:
        yield w


def market_of(ep, iid: str) -> tuple[str, str]:
    """(InstanceLifecycle as moto recorded the request, the appliance:market tag)."""
    [inst] = ep.instances(instance_id=iid)
    return inst.get("InstanceLifecycle", "on-demand"), {t["Key"]: t["Value"] for t in inst["Tags"]}["appliance:market"]


def rm_all(app):
    app.sh("condor_rm -all", user="submit", check=False)
    wait_for("no live aws worker", lambda: not workers(app, ended=False), timeout=30, app=app)


def test_a_spot_launch_carries_the_spot_market_options(world):
    app, ep, _ = world
    app.submit(job_sub(1, extra=AWS_ONLY), {"job.sh": JOB_SCRIPT}, directory="/home/submit/spot")
    w = wait_for("an aws worker booting", lambda: booting_worker(app, "aws"), timeout=30, app=app)
    assert market_of(ep, w["resource_id"]) == ("spot", "spot")
    rm_all(app)


def test_refused_spot_capacity_launches_on_demand_instead(world):
    app, ep, _ = world
    ep.fail("RunInstances", "InsufficientInstanceCapacity", "no spot capacity", times=1)
    calls = ep.count("RunInstances")
    app.submit(job_sub(1, extra=AWS_ONLY), {"job.sh": JOB_SCRIPT}, directory="/home/submit/refused")
    w = wait_for("an aws worker booting", lambda: booting_worker(app, "aws"), timeout=30, app=app)
    assert ep.count("RunInstances") == calls + 2           # refused for spot, then on-demand
    assert market_of(ep, w["resource_id"]) == ("on-demand", "on-demand")
    assert f"cloud aws: worker {w['id']} goes on-demand: spot capacity refused (InsufficientInstanceCapacity)" \
        in app.logs()
    assert cloud(app, "aws")["health"] != "backoff"       # the launch succeeded: nothing to back off from
    ep.clear()
    rm_all(app)


def interrupt_and_wait_for_replacement(app, ep, w) -> dict:
    ep.interrupt_spot(w["resource_id"])
    wait_for("the worker to fail", lambda: (worker(app, w["id"]) or {}).get("state") == "failed", timeout=30, app=app)
    reason = worker(app, w["id"])["reason"]
    assert reason == (f"spot interruption: its spot instance {w['resource_id']} is terminated "
                      "(Server.SpotInstanceTermination)"), reason
    new = wait_for("a replacement booting", lambda: booting_worker(app, "aws", exclude={w["id"]}), timeout=30, app=app)
    events = app.events()
    failed = next(e for e in events if e["worker_id"] == w["id"] and e["to_state"] == "failed")
    requested = next(e for e in events if e["worker_id"] == new["id"] and e["to_state"] == "requested")
    assert requested["time"] == failed["time"], (failed, requested)     # decided in the same cycle
    return new


def test_an_instance_ended_by_spot_fails_its_worker_and_is_replaced_at_once(world):
    app, ep, _ = world
    before = len(ep.instances(**{"tag:appliance:pool": pool_id(app)}))
    app.submit(job_sub(1, extra=AWS_ONLY), {"job.sh": JOB_SCRIPT}, directory="/home/submit/interrupted")
    first = wait_for("an aws worker booting", lambda: booting_worker(app, "aws"), timeout=30, app=app)
    assert market_of(ep, first["resource_id"])[0] == "spot"
    second = interrupt_and_wait_for_replacement(app, ep, first)
    assert market_of(ep, second["resource_id"]) == ("spot", "spot")    # one interruption: still spot
    assert cloud(app, "aws")["health"] != "backoff"      # the market's doing, not a broken cloud
    assert len(ep.instances(**{"tag:appliance:pool": pool_id(app)})) == before + 2

    # a second interruption within spot_window (spot_fallback_after: 2): the next launch is on-demand
    third = interrupt_and_wait_for_replacement(app, ep, second)
    assert market_of(ep, third["resource_id"]) == ("on-demand", "on-demand")
    assert (f"cloud aws: worker {third['id']} goes on-demand: 2 spot interruption(s) in the last 3600s "
            "(spot_fallback_after: 2)") in app.logs()
    text = app.sh("cloud_status -e -n 200")
    assert text.count("spot interruption") >= 2, text
    rm_all(app)
