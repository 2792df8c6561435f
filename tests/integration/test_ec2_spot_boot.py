"""A spot interruption notice, end to end on the real boot script.

The appliance launches a spot instance in moto for a job that asks for the aws
cloud; the test runs its user-data in a fresh debian:trixie-slim container
standing in for the instance, as test_ec2_boot.py does. AWS's own instance
metadata service cannot run here: a stand-in (IMDSv2: a token from PUT
/latest/api/token, required on every GET) runs in this test, and the one line of
the script that names the metadata address is pointed at it. Once the job runs,
the stand-in answers spot/instance-action for that instance, as EC2 does about two
minutes before it takes a spot instance back.

Then: the worker vacates its job (the job goes back to idle in the appliance's
queue) and reports the notice; the appliance records the worker as failed with
reason "spot interruption", counts it, and launches a replacement, whose user-data
the test runs in a second fresh container (the first is removed, as EC2 would
terminate the instance); the job runs again there and completes once. A
rebalance recommendation to that second instance while the job runs makes it take
no new job (it advertises WorkerRebalance) and leaves the running job alone.
"""
from __future__ import annotations

import http.server
import json
import re
import threading
import time

import pytest

from .conftest import JOB_SCRIPT, job_sub
from .ec2_support import boot_script_config, booting_worker, ec2_world, user_data, wait_for, worker
from .test_ec2_boot import script_tar

pytestmark = pytest.mark.timeout(900)

CONFIG = boot_script_config(idle_timeout=10, cpus=1, memory=1024).replace(
    "    max_lifetime: 3600\n", "    max_lifetime: 3600\n    market: spot\n")
REAL_IMDS = "IMDS=169.254.169.254:80"


class StandInMetadata:
    """IMDSv2 as far as the boot script uses it; notices per client address."""

    def __init__(self, bind: str):
        self.interrupted: set[str] = set()      # client IPs told "spot/instance-action"
        self.rebalance: set[str] = set()        # client IPs told "events/recommendations/rebalance"
        self.seen: list[tuple[str, str, bool]] = []  # (client, path, had a token)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status: int, body: str = ""):
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self):
                ok = self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
                self._answer(200, "standin-token") if ok else self._answer(400)

            def do_GET(self):
                token = self.headers.get("X-aws-ec2-metadata-token") == "standin-token"
                client = self.client_address[0]
                outer.seen.append((client, self.path, token))
                if not token:
                    return self._answer(401)
                if self.path == "/latest/meta-data/spot/instance-action" and client in outer.interrupted:
                    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 120))
                    return self._answer(200, json.dumps({"action": "terminate", "time": when}))
                if self.path == "/latest/meta-data/events/recommendations/rebalance" and client in outer.rebalance:
                    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                    return self._answer(200, json.dumps({"noticeTime": now}))
                self._answer(404)

        self.server = http.server.ThreadingHTTPServer((bind, 0), Handler)
        self.server.daemon_threads = True
        self.address = f"{bind}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def world(client, image, tmp_path_factory):
    with ec2_world(client, image, tmp_path_factory.mktemp("ec2spot"), CONFIG) as w:
        yield w


@pytest.fixture
def imds(world):
    _, ep, _ = world
    m = StandInMetadata(ep.bind)
    yield m
    m.close()


def start_instance(client, ep, network, w, imds):
    script = user_data(ep, w["resource_id"])
    assert script.count(REAL_IMDS) == 1
    inst = client.containers.create("debian:trixie-slim", ["/root/user-data"], name=f"apptest-ec2-{w['id']}",
                                    hostname=w["id"], network=network, detach=True)
    inst.put_archive("/root", script_tar(script.replace(REAL_IMDS, f"IMDS={imds.address}")))
    inst.start()
    inst.reload()
    return inst, inst.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]


def spot_metric(app) -> float:
    text = app.sh("python3 -c 'from appliance.cli.common import open_state\n"
                  "from appliance.web.metrics import render\nc, s = open_state()\nprint(render(s, c).decode())'")
    m = re.search(r'^appliance_spot_interruptions_total\{cloud="aws"\} (\S+)$', text, re.M)
    assert m, text[-2000:]
    return float(m.group(1))


def test_an_interruption_notice_vacates_the_job_which_completes_once_elsewhere(world, client, imds):
    app, ep, network = world
    assert spot_metric(app) == 0
    # 30 s: the first run is vacated about 10 s after it starts (the watcher asks every 5 s), and the
    # second must still be running when its rebalance recommendation is advertised (about 10 s in)
    cluster = app.submit(job_sub(1, seconds=30, extra='requirements = TARGET.CloudName == "aws"'),
                         {"job.sh": JOB_SCRIPT}, directory="/home/submit/spot")
    first = wait_for("an aws worker booting", lambda: booting_worker(app, "aws"), timeout=30, app=app)
    [inst] = ep.instances(instance_id=first["resource_id"])
    assert inst["InstanceLifecycle"] == "spot"
    assert {t["Key"]: t["Value"] for t in inst["Tags"]}["appliance:market"] == "spot"

    one, one_ip = start_instance(client, ep, network, first, imds)
    started = time.monotonic()

    def running():
        one.reload()
        assert one.status == "running", one.logs().decode(errors="replace")[-3000:]
        return app.sh(f"condor_q {cluster} -af JobStatus", check=False).strip() == "2"
    wait_for("the job to run on the spot instance", running, timeout=420, every=3, app=app)
    # the watcher asks every 5 s, with an IMDSv2 token
    wait_for("the watcher to ask the metadata service", lambda: any(
        c == one_ip and p == "/latest/meta-data/spot/instance-action" and tok for c, p, tok in imds.seen),
        timeout=30, app=app)

    imds.interrupted.add(one_ip)              # EC2: "this instance goes in two minutes"
    noticed = time.monotonic()
    wait_for("the worker to fail as a spot interruption",
             lambda: (worker(app, first["id"]) or {}).get("state") == "failed", timeout=60, app=app)
    reason = worker(app, first["id"])["reason"]
    assert reason == "spot interruption: the worker reported its interruption notice", reason
    failed_after = time.monotonic() - noticed

    # the worker vacated its job itself: no process of a slot account (uid 200000 and up) is left on it
    # (the appliance ended the job's shadow too, but that leaves a disconnected job running for its lease)
    def vacated():
        uids = one.exec_run(["bash", "-c", "cat /proc/[0-9]*/status 2>/dev/null | sed -n 's/^Uid:\\s*//p'"])
        left = [u for u in uids.output.decode().split() if u.isdigit() and int(u) >= 200000]
        return not left or print(one.exec_run(["tail", "-n", "20", "/var/lib/condor-worker/log/StartLog"]).output
                                 .decode(errors="replace"))
    wait_for("the worker to have vacated its job", vacated, timeout=60, every=5, app=app)
    start_log = one.exec_run(["cat", "/var/lib/condor-worker/log/StartLog"]).output.decode(errors="replace")
    assert re.search(r"-> Preempting/(Vacating|Killing)", start_log), start_log[-3000:]   # its own policy evicted it
    logs = one.logs().decode(errors="replace")
    assert "spot interruption notice" in logs, logs[-3000:]
    assert "rebalance" not in logs
    assert "X-aws" not in logs and "standin-token" not in logs
    one.remove(force=True)                   # EC2 takes the instance back
    imds.interrupted.discard(one_ip)         # its address may go to the next instance

    # a replacement was launched for the job (the cloud did not back off for it)
    second = wait_for("a replacement booting", lambda: booting_worker(app, "aws", exclude={first["id"]}),
                      timeout=60, app=app)
    two, two_ip = start_instance(client, ep, network, second, imds)

    # a rebalance recommendation while the job runs there: the worker takes no new job, and keeps this one
    wait_for("the job to run on the replacement", lambda: (worker(app, second["id"]) or {}).get("state") == "busy",
             timeout=420, every=3, app=app)
    imds.rebalance.add(two_ip)
    wait_for("the replacement to advertise the rebalance recommendation", lambda: app.sh(
        f"condor_status -const 'WorkerId == \"{second['id']}\"' -af WorkerRebalance", check=False).strip()
        .lower().startswith("true"), timeout=60, app=app)
    assert (worker(app, second["id"]) or {}).get("state") in ("busy", "idle", "draining", "retired")

    def done():
        out = app.sh(f"condor_history {cluster} -af JobStatus ExitCode NumJobStarts", check=False).split()
        two.reload()
        assert two.status == "running" or out[:2] == ["4", "0"], two.logs().decode(errors="replace")[-3000:]
        return out if out[:2] == ["4", "0"] else None
    status, code, starts = wait_for("the job to complete on the replacement", done, timeout=420, every=3, app=app)
    # counted from the job's own event log: the schedd's NumJobStarts read 1 in our runs (the first
    # run's shadow was killed by the requeue), so it is printed, not asserted
    out = app.sh("cat /home/submit/spot/out.0")
    assert f'WorkerId = "{second["id"]}"' in out and out.rstrip().endswith("done"), out
    log = app.sh("cat /home/submit/spot/job.log")
    assert len(re.findall(r"^005 ", log, re.M)) == 1, log          # terminated once
    assert len(re.findall(r"^001 ", log, re.M)) == 2, log          # executed twice

    events = [e for e in app.events() if e["worker_id"] == first["id"]]
    assert any(e["to_state"] == "failed" and e["reason"].startswith("spot interruption") for e in events), events
    assert spot_metric(app) == 1
    assert "rebalance recommendation: taking no new job" in two.logs().decode(errors="replace")
    print(f"spot: NumJobStarts {starts}; job running {noticed - started:.0f}s after the first instance started; worker failed "
          f"{failed_after:.1f}s after the notice")
