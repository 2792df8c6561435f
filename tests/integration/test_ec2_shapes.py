"""EC2 with three shapes (instance types with prices), driven by the real appliance
against moto's EC2 server over HTTP behind the fault-injecting proxy.

- each group of jobs gets the cheapest instance type that fits it, as launched;
- InsufficientInstanceCapacity for the cheapest type backs off that type only and
  the next cheapest is launched in its place;
- the budget stops a launch that would go over it, and says so.

Instances never join (moto runs nothing): each test removes its jobs, and the
starting workers nobody needs any more are cancelled.
"""
from __future__ import annotations

import pytest

from .conftest import JOB_SCRIPT
from .ec2_support import ec2_world, pool_id, wait_for, workers

pytestmark = pytest.mark.timeout(300)

# t3.small is the cheapest, but small; m5.large has the memory (its size read from EC2); c5.xlarge the cpus
CONFIG = """
pool: {{condor_host: {name}}}
scheduler: {{interval: 1, idle_timeout: 10, boot_timeout: 120, lost_timeout: 30}}
budget: {{max_per_hour: 0.30}}
clouds:
  - name: aws
    type: ec2
    max_workers: 6
    region: us-west-2
    ami: {ami}
    endpoint_url: {endpoint}
    env_file: /etc/appliance/aws.env
    shapes:
      - {{name: t3.small, cpus: 2, memory: 1800, price: 0.0208}}
      - {{name: m5.large, price: 0.096}}     # its size from DescribeInstanceTypes: 2 cpus, 8 GiB less 1 GiB
      - {{name: c5.xlarge, cpus: 4, memory: 7000, price: 0.17}}
"""


def sub(cpus: int, memory: int, count: int = 1) -> str:
    return (f"executable = job.sh\narguments = 600\nrequest_cpus = {cpus}\nrequest_memory = {memory}\n"
            f"request_disk = 10MB\nqueue {count}")


@pytest.fixture(scope="module")
def appliance_world(client, image, tmp_path_factory):
    with ec2_world(client, image, tmp_path_factory.mktemp("ec2shapes"), CONFIG) as w:
        yield w


@pytest.fixture
def world(appliance_world):
    """The module's appliance, left with no job, no starting worker and no instance after each
    test, whatever it asserted: the next one starts from nothing."""
    yield appliance_world
    app, ep, _ = appliance_world
    ep.clear()
    clean_up(app, ep, pool_id(app))


def live(app) -> list[dict]:
    return [w for w in workers(app, ended=False) if w["state"] in ("requested", "booting")]


def types_running(ep, pid) -> list[str]:
    return sorted(i["InstanceType"] for i in ep.instances(**{"tag:appliance:pool": pid})
                  if i["State"]["Name"] not in ("terminated", "shutting-down"))


def clean_up(app, ep, pid) -> None:
    """No job, no starting worker, no instance: the next test starts from nothing."""
    app.sh("condor_rm -all", user="submit", check=False)
    wait_for("the unneeded workers to be cancelled", lambda: not live(app) and not types_running(ep, pid),
             timeout=60, app=app)


def test_each_group_gets_the_cheapest_type_that_fits(world):
    app, ep, _ = world
    pid = pool_id(app)
    # 1500 MB: more than the m5.large has left beside the 6000 MB job (7168 MB in all)
    app.submit(sub(1, 1500), {"job.sh": JOB_SCRIPT}, directory="/home/submit/small")
    app.submit(sub(1, 6000), {"job.sh": JOB_SCRIPT}, directory="/home/submit/memory")
    app.submit(sub(4, 4000), {"job.sh": JOB_SCRIPT}, directory="/home/submit/cpus")
    wait_for("three instances", lambda: len(types_running(ep, pid)) == 3, timeout=30, app=app)
    assert types_running(ep, pid) == ["c5.xlarge", "m5.large", "t3.small"]
    assert "m5.large 2 cpus, 7168 MB, 4096 MB disk, 0.096/h" in app.sh("cloud_status -c aws")   # as EC2 said
    shapes = {w["shape"] for w in live(app)}
    assert shapes == {"t3.small", "m5.large", "c5.xlarge"}
    for inst in ep.instances(**{"tag:appliance:pool": pid}):
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        assert tags["appliance:shape"] == inst["InstanceType"]


def test_no_capacity_for_the_cheapest_type_launches_the_next_and_backs_that_type_off(world):
    app, ep, _ = world
    pid = pool_id(app)
    ep.fail("RunInstances", "InsufficientInstanceCapacity", "no t3.small in us-west-2a",
            when={"InstanceType": "t3.small"})
    app.submit(sub(1, 1024), {"job.sh": JOB_SCRIPT}, directory="/home/submit/fallback")
    wait_for("the next cheapest type", lambda: types_running(ep, pid) == ["m5.large"], timeout=40, app=app)
    aws = app.status("-c", "aws")["data"]
    assert aws["health"] == "ok" and aws["failures"] == 0, aws      # the cloud itself is fine
    small = next(s for s in aws["shapes"] if s["name"] == "t3.small")
    assert small["health"] == "backoff" and small["backoff_seconds"] > 0, small
    assert "InsufficientInstanceCapacity: no t3.small in us-west-2a" in small["last_error"], small
    failed = [w for w in workers(app) if w["state"] == "failed" and w["shape"] == "t3.small"]
    assert len(failed) == 1 and "InsufficientInstanceCapacity" in failed[0]["reason"]
    assert "t3.small 2 cpus, 1800 MB" in app.sh("cloud_status -c aws") and "backing off" in app.sh(
        "cloud_status -c aws")


def test_a_launch_over_the_budget_is_not_made_and_the_reason_is_shown(world):
    app, ep, _ = world
    pid = pool_id(app)
    app.submit(sub(4, 4000, count=2), {"job.sh": JOB_SCRIPT}, directory="/home/submit/budget")
    # two c5.xlarge would cost 0.34/h: one is launched, the other waits for the budget

    # the cycle that launches the first says what the pair would cost (0.00/h now, +0.34/h);
    # the cycles after it count the first as spending
    def waiting():
        groups = app.status("-q")["data"]["groups"]
        return groups if (groups and groups[0]["status"] == "waiting" and types_running(ep, pid)
                          and "(0.17/h now" in groups[0]["reason"]) else None
    (group,) = wait_for("the budget to hold the second launch", waiting, timeout=30, app=app)
    assert "budget: max_per_hour 0.30 reached (0.17/h now, +0.17/h)" in group["reason"], group
    assert types_running(ep, pid) == ["c5.xlarge"]
    assert "budget: max_per_hour 0.30 reached" in app.sh("cloud_status -q")
    text = app.sh("cloud_status")
    assert "cost: 0.17/h now" in text and "budget: max_per_hour 0.3" in text, text
    # what /metrics serves (its own code on the live store; the page's login is tested in test_web_api)
    metrics = app.sh("python3 -c 'from appliance.config import load; from appliance.store import Store; "
                     "from appliance.web.metrics import render; print(render(Store(), load()).decode())'")
    assert 'appliance_cost_per_hour{cloud="aws",shape="c5.xlarge"} 0.17' in metrics
    # still one, cycles later (the scheduler's heartbeat counts them)
    cycle = app.status()["scheduler"]["cycle"]
    wait_for("three more cycles", lambda: app.status()["scheduler"]["cycle"] >= cycle + 3, timeout=30, app=app)
    assert types_running(ep, pid) == ["c5.xlarge"]
