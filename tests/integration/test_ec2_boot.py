"""The boot script really makes a fresh Debian machine a worker.

The appliance launches an instance in moto for a job that asks for the aws
cloud. The test reads the user-data back from the EC2 API and runs it, as
cloud-init would, in a fresh debian:trixie-slim container standing in for the
instance: it installs Debian's htcondor, joins the appliance, runs the job,
is drained when idle, and then "powers off" (the script ends). The scheduler
retires the worker and terminates its instance.
"""
from __future__ import annotations

import io
import re
import tarfile
import time

import pytest

from .conftest import JOB_SCRIPT, job_sub
from .ec2_support import boot_script_config, booting_worker, ec2_world, instance_state, user_data, wait_for, worker

pytestmark = pytest.mark.timeout(480)

CONFIG = boot_script_config(idle_timeout=10, cpus=1, memory=1024)


@pytest.fixture(scope="module")
def world(client, image, tmp_path_factory):
    with ec2_world(client, image, tmp_path_factory.mktemp("ec2boot"), CONFIG) as w:
        yield w


def script_tar(text: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = text.encode()
        info = tarfile.TarInfo("user-data")
        info.size, info.mode = len(data), 0o700
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_the_user_data_makes_a_fresh_debian_a_worker_that_runs_the_job(world, client):
    app, ep, network = world
    cluster = app.submit(job_sub(1, seconds=2, extra='requirements = TARGET.CloudName == "aws"'),
                         {"job.sh": JOB_SCRIPT}, directory="/home/submit/boot")
    w = wait_for("an aws worker booting", lambda: booting_worker(app, "aws"), timeout=30, app=app)
    wid, iid = w["id"], w["resource_id"]

    # the instance's user-data, as EC2 hands it to cloud-init, run on a fresh Debian
    script = user_data(ep, iid)
    inst = client.containers.create("debian:trixie-slim", ["/root/user-data"], name=f"apptest-ec2-{wid}",
                                    hostname=wid, network=network, detach=True)
    inst.put_archive("/root", script_tar(script))
    started = time.monotonic()
    inst.start()

    def done():
        out = app.sh(f"condor_history {cluster} -af JobStatus ExitCode", check=False)
        inst.reload()
        assert inst.status == "running" or "4 0" in out, inst.logs().decode(errors="replace")[-3000:]
        return "4 0" in out
    wait_for("the job to complete on the new instance", done, timeout=360, every=3, app=app)
    joined_after = time.monotonic() - started
    out = app.sh("cat /home/submit/boot/out.0")
    assert f'WorkerId = "{wid}"' in out and 'CloudName = "aws"' in out and out.rstrip().endswith("done"), out
    assert re.search(rf"^host={wid}$", out, re.M), out
    moves = [(e["from_state"], e["to_state"], e["reason"]) for e in app.events() if e["worker_id"] == wid]
    assert ("booting", "idle", f"joined the pool as {wid}@{wid}") in moves or \
        any(to in ("idle", "busy") and why.startswith(f"joined the pool as {wid}@") for _, to, why in moves), moves

    # idle -> drained by the appliance -> condor_master exits -> the "instance" powers itself off
    wait_for("the instance to power off after its drain", lambda: (inst.reload(), inst.status)[1] == "exited",
             timeout=90, every=2, app=app)
    # the engine may still be copying the container's last lines when it reports it exited
    # (seen once in CI): read its log until the script's last line is there
    def said_goodbye():
        text = inst.logs().decode(errors="replace")
        return text if "powering off" in text else None
    try:
        logs = wait_for("the script's last line in the log", said_goodbye, timeout=10, every=0.5)
    except Exception:
        logs = inst.logs().decode(errors="replace")
    state = inst.attrs["State"]
    assert "the worker ended (exit 0); powering off" in logs, (state, logs[-2000:])
    assert state["ExitCode"] == 0, state

    # the scheduler retires the worker and terminates what is left in the cloud
    wait_for("the worker to retire", lambda: (worker(app, wid) or {}).get("state") == "retired", timeout=60, app=app)
    wait_for("its instance to be terminated", lambda: instance_state(ep, iid) == "terminated", timeout=15)
    path = [to for _, to, _ in moves] + [to for e in app.events() if e["worker_id"] == wid for to in [e["to_state"]]]
    assert "draining" in path and path[-1] == "retired", path
    # nothing secret went to the console of the instance
    token_line = re.search(r"<<'APPLIANCE_TOKENS_D_POOL'\n(.*?)\n", script).group(1)
    assert token_line not in logs
    print(f"boot script: joined and ran the job {joined_after:.0f}s after the instance started")
