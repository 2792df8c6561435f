"""The ec2 cloud, driven by the real appliance (real HTCondor, real scheduler)
against moto's EC2 server over HTTP, with a proxy that injects EC2's errors.

One appliance for the module; the tests run in order and each leaves no job
and no live instance behind. Instances here never join (moto runs nothing):
the boot script itself is tested in test_ec2_boot.py.
"""
from __future__ import annotations

import pytest

from .conftest import JOB_SCRIPT, job_sub
from .ec2_support import (
    ACCESS_KEY,
    AMI,
    SECRET_KEY,
    booting_worker,
    cloud,
    ec2_world,
    instance_state,
    pool_id,
    token_in,
    token_subject,
    user_data,
    wait_for,
    worker,
    workers,
)

pytestmark = pytest.mark.timeout(300)

CONFIG = """
pool: {{condor_host: {name}}}
scheduler: {{interval: 1, idle_timeout: 10, boot_timeout: 15, lost_timeout: 30}}
clouds:
  - name: aws
    type: ec2
    priority: 0
    max_workers: 2
    region: us-west-2
    ami: {ami}
    instance_type: t3.large
    endpoint_url: {endpoint}
    env_file: /etc/appliance/aws.env
    tags: {{project: apptest}}
    worker: {{cpus: 1, memory: 1024}}
  - name: local
    type: local
    priority: 10
    max_workers: 1
    worker: {{cpus: 1, memory: 1024}}
"""
AWS_ONLY = 'requirements = TARGET.CloudName == "aws"'


@pytest.fixture(scope="module")
def world(client, image, tmp_path_factory):
    with ec2_world(client, image, tmp_path_factory.mktemp("ec2"), CONFIG) as w:
        yield w


def rm_all(app):
    app.sh("condor_rm -all", user="submit", check=False)
    wait_for("no live aws worker", lambda: not [w for w in workers(app, ended=False) if w["cloud"] == "aws"],
             timeout=30, app=app)


def test_launch_sends_the_right_instance_and_boot_timeout_terminates_it(world):
    app, ep, _ = world
    app.submit(job_sub(1, extra=AWS_ONLY), {"job.sh": JOB_SCRIPT}, directory="/home/submit/launch")
    w = wait_for("an aws worker booting", lambda: booting_worker(app, "aws"), timeout=30, app=app)
    wid, iid = w["id"], w["resource_id"]
    assert iid.startswith("i-")

    [inst] = ep.instances(instance_id=iid)
    assert inst["ImageId"] == AMI and inst["InstanceType"] == "t3.large"
    assert inst["ClientToken"] == wid
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags == {"appliance:pool": pool_id(app), "appliance:cloud": "aws", "appliance:worker": wid,
                    "Name": f"appliance-{wid}", "project": "apptest", "appliance:shape": "t3.large",
                    "appliance:market": "on-demand"}
    behaviour = ep.client().describe_instance_attribute(InstanceId=iid, Attribute="instanceInitiatedShutdownBehavior")
    assert behaviour["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    script = user_data(ep, iid)
    assert f"WORKER_ID={wid}" in script and f"CONDOR_HOST={app.name}" in script
    token = token_in(script)
    assert token_subject(token) == f"worker-{wid}@appliance"

    # it never joins: after boot_timeout the worker has failed, saying why, and its instance is terminated
    wait_for("the boot timeout", lambda: (worker(app, wid) or {}).get("state") == "failed", timeout=40, app=app)
    assert worker(app, wid)["reason"] == "did not join the pool within boot_timeout (15s)"
    wait_for("its instance to be terminated", lambda: instance_state(ep, iid) == "terminated", timeout=15)
    rm_all(app)

    # secrets: neither the AWS keys nor the worker's token appear in logs, events or CLI output
    shown = "\n".join([app.logs(), app.sh("cloud_status -e -n 1000"), app.sh("cloud_status --json -e -n 1000"),
                       app.sh("cloud_status -m -a"), app.sh("cloud_status -c aws --json"), app.sh("cloud_status")])
    for secret in (SECRET_KEY, token, token.split(".")[2]):
        assert secret not in shown
    assert ACCESS_KEY not in shown


def test_a_booting_worker_no_longer_needed_is_cancelled_and_its_instance_terminated(world):
    app, ep, _ = world
    app.sh("cloud_admin -e aws -C test")       # forget the backoff of the boot timeout above
    app.submit(job_sub(1, extra=AWS_ONLY), {"job.sh": JOB_SCRIPT}, directory="/home/submit/cancel")
    w = wait_for("an aws worker booting", lambda: booting_worker(app, "aws"), timeout=30, app=app)
    app.sh("condor_rm -all", user="submit")
    wait_for("the worker to be cancelled", lambda: (worker(app, w["id"]) or {}).get("state") == "retired",
             timeout=20, app=app)
    assert worker(app, w["id"])["reason"] == "cancelled: no idle job needs it any more"
    wait_for("its instance to be terminated", lambda: instance_state(ep, w["resource_id"]) == "terminated", timeout=15)


def test_orphans_are_terminated_and_vanished_instances_fail_their_worker(world):
    app, ep, _ = world
    ec2 = ep.client()
    tags = [{"Key": "appliance:pool", "Value": pool_id(app)}, {"Key": "appliance:cloud", "Value": "aws"},
            {"Key": "appliance:worker", "Value": "aws-0a0a0a"}]
    orphan = ec2.run_instances(ImageId=AMI, InstanceType="t3.micro", MinCount=1, MaxCount=1,
                               TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])["Instances"][0]
    stranger = ec2.run_instances(ImageId=AMI, InstanceType="t3.micro", MinCount=1, MaxCount=1)["Instances"][0]
    wait_for("the orphan to be terminated", lambda: instance_state(ep, orphan["InstanceId"]) == "terminated",
             timeout=20, app=app)
    assert any(e["reason"].startswith("removed orphan aws-0a0a0a") for e in app.events())
    assert instance_state(ep, stranger["InstanceId"]) == "running"     # not ours: never touched

    app.sh("cloud_admin -e aws -C test")
    app.submit(job_sub(1, extra=AWS_ONLY), {"job.sh": JOB_SCRIPT}, directory="/home/submit/vanish")
    w = wait_for("an aws worker booting", lambda: booting_worker(app, "aws"), timeout=30, app=app)
    ec2.terminate_instances(InstanceIds=[w["resource_id"]])       # someone else ended it
    wait_for("the worker to fail", lambda: (worker(app, w["id"]) or {}).get("state") == "failed", timeout=15, app=app)
    reason = worker(app, w["id"])["reason"]
    assert reason.startswith(f"vanished: its instance {w['resource_id']} is terminated"), reason
    rm_all(app)


FAULTS = [
    ("InsufficientInstanceCapacity", "capacity"),
    ("InstanceLimitExceeded", "limit"),
    ("VcpuLimitExceeded", "limit"),
    ("RequestLimitExceeded", "throttle"),
    ("AuthFailure", "auth"),
]


def test_ec2_errors_back_off_with_the_reason_and_launch_nothing(world):
    app, ep, _ = world
    pid = pool_id(app)
    for code, kind in FAULTS:
        app.sh("cloud_admin -e aws -C test")
        before = len(ep.instances(**{"tag:appliance:pool": pid}))
        ep.fail("RunInstances", code, f"injected {code}")
        app.submit(job_sub(1, extra=AWS_ONLY), {"job.sh": JOB_SCRIPT}, directory=f"/home/submit/{code}")
        c = wait_for(f"aws to back off after {code}", lambda: (lambda c: c if c["health"] == "backoff" else None)(  # noqa: B023
            cloud(app, "aws")), timeout=20, app=app)
        assert c["last_error"].startswith(f"{kind}: RunInstances: {code}: injected {code}"), c
        assert c["backoff_seconds"] > 0
        assert len(ep.instances(**{"tag:appliance:pool": pid})) == before      # nothing launched
        failed = [w for w in workers(app) if w["state"] == "failed" and code in w["reason"]]
        assert len(failed) == 1 and failed[0]["reason"].startswith(f"launch failed: RunInstances: {code}")
        ep.clear()
        app.sh("condor_rm -all", user="submit")
    assert app.status()["scheduler"]["running"]
    text = app.sh("cloud_status")
    assert "backoff" in text


def test_demand_falls_through_to_the_next_cloud_and_nothing_is_launched_twice(world):
    app, ep, _ = world
    pid = pool_id(app)
    app.sh("cloud_admin -e aws -C test")
    ep.fail("RunInstances", "InsufficientInstanceCapacity", "no t3.large here")
    cluster = app.submit(job_sub(1, seconds=1), {"job.sh": JOB_SCRIPT}, directory="/home/submit/fall")
    wait_for("the job to run on the local cloud",
             lambda: "4 0" in app.sh(f"condor_history {cluster} -af JobStatus ExitCode", check=False),
             timeout=90, app=app)
    assert 'CloudName = "local"' in app.sh("cat /home/submit/fall/out.0")
    aws = cloud(app, "aws")     # its backoff may be over by now; the reason stays on record
    assert aws["last_error"] == "capacity: RunInstances: InsufficientInstanceCapacity: no t3.large here", aws
    assert not [i for i in ep.instances(**{"tag:appliance:pool": pid}) if i["State"]["Name"] != "terminated"]
    events = [e["reason"] for e in app.events() if e["cloud"] == "aws"]
    assert any(r.startswith("backing off") and "capacity" in r for r in events), events
    ep.clear()

    # the endpoint down: listing and launching fail, the scheduler keeps going, nothing is launched
    ep.down = True
    app.sh("cloud_admin -e aws -C test")
    app.submit(job_sub(1, extra=AWS_ONLY), {"job.sh": JOB_SCRIPT}, directory="/home/submit/down")
    c = wait_for("aws to back off while down", lambda: (lambda c: c if c["health"] == "backoff" else None)(
        cloud(app, "aws")), timeout=20, app=app)
    assert c["last_error"].startswith("unavailable: "), c
    assert app.status()["scheduler"]["running"]
    app.sh("condor_rm -all", user="submit")
    ep.clear()

    # an answer lost after EC2 made the instance: the worker failed, its instance is an orphan and goes
    app.sh("cloud_admin -e aws -C test")
    throttled = lambda: [w for w in workers(app) if "RequestLimitExceeded" in w["reason"]]  # noqa: E731
    before = len(throttled())
    ep.fail("RunInstances", "RequestLimitExceeded", times=1, after_forward=True)
    app.submit(job_sub(1, extra=AWS_ONLY), {"job.sh": JOB_SCRIPT}, directory="/home/submit/lost")
    wait_for("the lost launch to fail", lambda: len(throttled()) > before, timeout=20, app=app)
    app.sh("condor_rm -all", user="submit")
    wait_for("no instance of ours left running", lambda: not [
        i for i in ep.instances(**{"tag:appliance:pool": pid}) if i["State"]["Name"] != "terminated"],
        timeout=30, app=app)
    # never two instances for one worker
    per_worker: dict[str, int] = {}
    for inst in ep.instances(**{"tag:appliance:pool": pid}):
        wid = {t["Key"]: t["Value"] for t in inst["Tags"]}["appliance:worker"]
        per_worker[wid] = per_worker.get(wid, 0) + 1
    assert per_worker and max(per_worker.values()) == 1, per_worker
