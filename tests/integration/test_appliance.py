"""The appliance image with the embedded local cloud: real HTCondor, real workers."""
from __future__ import annotations

import json
import os
import re

import pytest

from .conftest import JOB_SCRIPT, job_sub  # noqa: F401

pytestmark = pytest.mark.timeout(420)

IDLE_TIMEOUT = 5
CONFIG = f"""
scheduler: {{interval: 1, idle_timeout: {IDLE_TIMEOUT}, boot_timeout: 120}}
clouds:
  - {{name: local, type: local, max_workers: 2, worker: {{cpus: 1, memory: 1024}}}}
"""


def completed(app, cluster: int) -> list[str]:
    out = app.sh(f"condor_history -constraint 'ClusterId == {cluster}' -af ProcId JobStatus ExitCode")
    return [l for l in out.splitlines() if l.split()[1:] == ["4", "0"]]


def test_six_jobs_two_workers_then_scale_to_zero(start_appliance):
    app = start_appliance(CONFIG)
    cluster = app.submit(job_sub(6, seconds=3), {"job.sh": JOB_SCRIPT})

    app.wait("6 jobs to complete", lambda: len(completed(app, cluster)) == 6, timeout=240)

    # each job's output proves it ran in a worker, not in the appliance itself
    outputs = [app.sh(f"cat /home/submit/job/out.{i}") for i in range(6)]
    worker_ids = set()
    for out in outputs:
        m = re.search(r'^WorkerId = "(local-[0-9a-f]{6})"$', out, re.M)
        assert m and 'CloudName = "local"' in out and out.rstrip().endswith("done"), out
        worker_ids.add(m.group(1))

    # then both workers drain and are gone
    app.wait("both workers to retire", lambda: app.status("-m")["data"] == [], timeout=120)
    masters = app.sh("ps -eo args").count("condor_master")
    assert masters == 1, app.sh("ps -eo pid,args")     # only the appliance's own
    assert not app.sh("condor_status -constraint 'ApplianceWorker =?= true' -af Name").strip()

    # exactly 2 workers were ever started, and the events show every transition with its reason
    events = app.events()
    per_worker: dict[str, list[tuple]] = {}
    for e in events:
        if e["kind"] == "worker" and e["to_state"]:
            per_worker.setdefault(e["worker_id"], []).append((e["from_state"], e["to_state"], e["reason"]))
    assert len(per_worker) == 2, per_worker
    assert set(per_worker) == worker_ids
    for wid, moves in per_worker.items():
        path = [to for _, to, _ in moves]
        assert path[:3] == ["requested", "booting", "idle"], moves
        assert "busy" in path and path[-2:] == ["draining", "retired"], moves
        reasons: dict[str, str] = {}
        for _, to, why in moves:
            reasons.setdefault(to, why)     # the first time it entered each state
        assert reasons["requested"].startswith("launch: 6 idle job(s)")
        assert reasons["idle"].startswith(f"joined the pool as {wid}@")
        # drained once idle for idle_timeout, within a few cycles of it
        idle_for = re.match(r"idle for (\d+)s with no job it could run", reasons["draining"])
        assert idle_for and IDLE_TIMEOUT <= int(idle_for.group(1)) < IDLE_TIMEOUT + 10, reasons["draining"]
        assert reasons["retired"].startswith("drained and exited")


def test_unschedulable_job_starts_nothing_and_is_reported(start_appliance):
    app = start_appliance(CONFIG)
    app.submit(job_sub(3, extra='requirements = TARGET.CloudName == "nowhere"'), {"job.sh": JOB_SCRIPT})
    app.submit(job_sub(1, extra="request_memory = 64000"), {"job.sh": JOB_SCRIPT}, directory="/home/submit/big")

    def reported():
        q = app.status("-q")["data"]
        return q if q["unschedulable_jobs"] == 4 else None
    q = app.wait("the queue report", reported, timeout=60)
    reasons = sorted(g["reason"] for g in q["groups"])
    assert all(g["status"] == "unschedulable" and g["clouds"] == [] for g in q["groups"])
    # the clause that fails, with what the workers have there (as condor_q -better-analyze)
    assert any('Requirements: `TARGET.CloudName == "nowhere"` fails (its workers have CloudName = "local")' in r
               for r in reasons), reasons
    assert any("64000 MB" in r and "its workers have 1 cpus, 1024 MB" in r for r in reasons), reasons
    text = app.sh("cloud_status -q")
    assert "4 idle job(s) are unschedulable" in text
    app.wait_cycles(3)   # several more cycles over the same queue: still nothing launched
    assert not [e for e in app.events() if e["to_state"] == "requested"]


def test_a_broken_configuration_is_reported_and_waited_out_without_a_restart_loop(start_appliance, tmp_path):
    """Before: the scheduler exited at once, supervisord restarted it every few seconds
    (it exited within startsecs), logging the same error each time. Now it says so once,
    shows it in cloud_status, and starts by itself once the file is fixed."""
    name = "apptest-badcfg-" + os.urandom(3).hex()
    app = start_appliance("scheduler: {interval: fast}\nclouds:\n  - {name: local, type: local}\n",
                          name=name, wait=False)
    def stored(key):
        return json.loads(app.sh(f"python3 -c 'import json; from appliance.store import Store; "
                                 f"print(json.dumps(Store().get(\"{key}\")[0]))'"))
    app.wait("the error in the store", lambda: "scheduler.interval" in (stored("config_error") or ""), timeout=60)
    pid = app.sh("supervisorctl -c /etc/appliance/supervisord.conf pid scheduler").strip()
    checks = stored("config_checks")
    # three more readings of the file (2 s apart), longer than supervisord's startsecs:
    # a restart loop would show as a new pid and the error logged again
    app.wait("three more readings of the file", lambda: stored("config_checks") >= checks + 3,
             timeout=30)
    assert app.sh("supervisorctl -c /etc/appliance/supervisord.conf pid scheduler").strip() == pid
    # the scheduler's line, once (bootstrap's own check at start says it once too)
    assert app.logs().count("no workers are managed until the file is fixed") == 1, app.logs()[-2000:]
    rc, out = app.rc("cloud_status")
    assert rc != 0 and "scheduler.interval: expected a number" in out, out
    (tmp_path / f"{name}.yaml").write_text("scheduler: {interval: 1}\nclouds:\n  - {name: local, type: local}\n")
    app.wait_ready()
    assert "configuration fixed" in app.logs()


def test_disable_survives_a_restart(start_appliance, volumes):
    app = start_appliance(CONFIG, volumes=volumes)
    assert app.sh("cloud_admin -d local -C test").strip() == "local: disabled"
    rc, out = app.rc("cloud_admin -d nope -C test")
    assert rc == 1 and out.strip().endswith("no cloud named nope (known: local)")
    key_before = app.sh("sha256sum /var/lib/appliance/keys/POOL")

    app.c.restart(timeout=30)
    app.wait_ready()
    assert [c["enabled"] for c in app.status()["data"]] == [False]
    assert app.sh("sha256sum /var/lib/appliance/keys/POOL") == key_before
    app.submit(job_sub(1), {"job.sh": JOB_SCRIPT})
    app.wait_cycles(3)   # cycles that saw the job: nothing launched for it, and it is reported
    assert not [e for e in app.events() if e["to_state"] == "requested"]
    q = app.status("-q")["data"]
    # the one cloud that could run it is disabled: it waits for it, it is not unschedulable
    assert (q["groups"][0]["status"], q["groups"][0]["reason"]) == ("waiting",
                                                                    "only local could run it, and it is disabled")
    assert q["unschedulable_jobs"] == 0

    assert app.sh("cloud_admin -e local -C test").strip() == "local: enabled"
    app.wait("a worker for the job", lambda: any(e["to_state"] == "requested" for e in app.events()), timeout=30)


ROGUE_CONFIG = """
import os, sys
from appliance.config import CloudConfig
from appliance.workerconf import SLOT_ACCOUNTS_FILE, WorkerSpec, condor_config, slot_accounts_config
home = "/var/lib/rogue"
for d in ("log", "spool", "execute", "lock", "run", "keys", "tokens.d"):
    os.makedirs(f"{home}/{d}", exist_ok=True)
os.system(f"chown condor {home}/log {home}/spool {home}/execute {home}/lock {home}/run; chmod 700 {home}/tokens.d")
spec = WorkerSpec("rogue-000001", CloudConfig("local", "local"), "appliance", sys.argv[1])
open(f"{home}/condor_config", "w").write(condor_config(spec, home))
open(f"{home}/{SLOT_ACCOUNTS_FILE}", "w").write(slot_accounts_config(spec.worker_id, 1))
"""


def test_startd_without_a_valid_token_is_not_admitted(start_appliance, network, client, image):
    app = start_appliance(CONFIG, network=network)
    rogue = client.containers.run(image, ["sleep", "infinity"], detach=True, network=network,
                                  name=f"apptest-rogue-{app.name[-8:]}")
    try:
        def r(cmd):
            rc, out = rogue.exec_run(["bash", "-lc", cmd])
            return rc, out.decode()
        assert r(f"cat > /tmp/mk.py <<'EOF'\n{ROGUE_CONFIG}\nEOF\npython3 /tmp/mk.py {app.name}")[0] == 0
        env = "CONDOR_CONFIG=/var/lib/rogue/condor_config"

        # 1. no token at all
        assert r(f"{env} condor_master")[0] == 0
        # not scheduler cycles (nothing the appliance does): the rogue's own master and startd
        # have each tried to advertise to the collector, and say in their logs that it failed
        failed = "Failed to start non-blocking update"
        app.wait("the rogue's master and startd to try to advertise", lambda: all(
            failed in r(f"cat /var/lib/rogue/log/{log}")[1] for log in ("MasterLog", "StartLog")), timeout=60,
            every=0.5)
        assert "rogue" not in app.sh("condor_status -any -af Name")

        # 2. a token for a worker identity, but signed with a key of its own
        r("pkill -QUIT condor_master; for i in $(seq 100); do pgrep -x condor_master >/dev/null || break; sleep 0.1; "
          "done; echo forged-key > /var/lib/rogue/keys/POOL; chmod 600 /var/lib/rogue/keys/POOL")
        rc, tok = r(f"{env} _CONDOR_SEC_PASSWORD_DIRECTORY=/var/lib/rogue/keys condor_token_create "
                    "-identity worker-rogue-000001@appliance -key POOL -authz ADVERTISE_STARTD")
        assert rc == 0, tok
        r(f"echo '{tok.strip()}' > /var/lib/rogue/tokens.d/forged; chmod 600 /var/lib/rogue/tokens.d/forged; "
          f"{env} condor_master")
        rogue_ip = client.containers.get(rogue.id).attrs["NetworkSettings"]["Networks"][network]["IPAddress"]
        refused = re.compile(rf"(authenticat|DENIED).*{re.escape(rogue_ip)}|{re.escape(rogue_ip)}.*(authenticat|DENIED)",
                             re.I)
        # the collector logs each refused attempt; on a loaded machine the first may take a while
        app.wait("the collector to refuse the forged token",
                 lambda: refused.search(app.sh("cat /var/log/condor/CollectorLog")), timeout=60)
        assert "rogue" not in app.sh("condor_status -any -af Name")

        # 3. a genuine worker token is good for advertising only: it cannot submit or read the queue's jobs
        token = app.sh("condor_token_create -identity worker-local-000009@appliance -authz ADVERTISE_STARTD "
                       "-authz ADVERTISE_MASTER -authz READ -key POOL").strip()
        r(f"mkdir -p /root/.condor/tokens.d && echo '{token}' > /root/.condor/tokens.d/w && chmod 600 /root/.condor/tokens.d/w")
        submit = ("import htcondor\n"
                  f"schedd = htcondor.Schedd(htcondor.Collector('{app.name}:9618').locate(htcondor.DaemonTypes.Schedd))\n"
                  "schedd.submit(htcondor.Submit({'executable': '/bin/true'}))\n")
        rc, out = r(f"cat > /tmp/s.py <<'EOF'\n{submit}EOF\n_CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS=IDTOKENS "
                    "CONDOR_CONFIG=/dev/null _CONDOR_TRUST_DOMAIN=appliance "
                    "_CONDOR_SEC_TOKEN_DIRECTORY=/root/.condor/tokens.d python3 /tmp/s.py")
        assert rc != 0, out
        sched_log = app.sh(f"grep '{rogue_ip}' /var/log/condor/SchedLog || true")
        assert "limited authorization which did not include this command (1112 QMGMT_WRITE_CMD)" in sched_log, \
            (out, sched_log)
        assert "worker" not in app.sh("condor_q -allusers -af Owner")
    finally:
        rogue.remove(force=True, v=True)
