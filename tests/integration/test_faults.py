"""Faults of the appliance's surroundings, on the real image: the appliance's
container SIGKILLed, a worker cut off from the network, the state volume full.

Each scenario checks that every job submitted completes, that no job ran twice
or left a doubled or broken output, that nothing is launched twice and that no
worker is left behind. The job event log is read for evictions, shadow
exceptions and second starts as in test_reliability.py, and everything is added
to the run's "reliability numbers". docs/reliability.md lists what each
scenario guarantees.
"""
from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest

from .conftest import IMAGE, remove_appliance
from .faults_support import (
    FAULT_JOB,
    check_outputs,
    completed,
    executes,
    fault_jobs_sub,
    requested,
    start_raw_appliance,
    status_json,
    worker_containers,
)
from .reliability_support import ENV, NUMBERS, account, assert_no_orphans

pytestmark = pytest.mark.timeout(600)

LOG = "/home/submit/job/job.log"


def worker_ads(app) -> list[str]:
    return sorted(app.sh("condor_status -constraint 'ApplianceWorker =?= true' -af WorkerId", check=False).split())


def moves(app) -> list[tuple[str, str, str, str]]:
    return [(e["worker_id"], e["from_state"] or "", e["to_state"], e["reason"])
            for e in app.events() if e["kind"] == "worker" and e["to_state"]]


def ip_on(client, name: str, network: str) -> str:
    c = client.containers.get(name)
    return c.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]


# ---------------------------------------------------------------- 1. SIGKILL of the appliance container

KILL_CONFIG = f"""
scheduler: {{interval: 1, idle_timeout: 5, boot_timeout: 120, lost_timeout: 120, on_shutdown: keep}}
clouds:
  - {{name: docker, type: docker, image: "{IMAGE}", max_workers: 2, worker: {{cpus: 1, memory: 512}}}}
"""


def test_sigkill_of_the_appliance_container_adopts_its_running_workers(start_appliance, network, volumes, client):
    """`docker kill -s KILL` gives nobody a chance to clean up: no shutdown plan, no
    graceful schedd exit, shadows killed mid-job. `docker start` of the same container
    (same volumes) must adopt the worker containers that kept running, let their jobs
    finish where they are, and launch nothing."""
    app = start_appliance(KILL_CONFIG, network=network, volumes=volumes, docker_socket=True, env=ENV)
    lengths = [30, 30]
    cluster = app.submit(fault_jobs_sub(lengths), {"job.sh": FAULT_JOB})
    app.wait("2 busy docker workers", lambda: [w["state"] for w in app.status("-m")["data"]] == ["busy"] * 2,
             timeout=120)
    pool = app.pool_id()
    rows = sorted(w["id"] for w in app.status("-m")["data"])
    before = worker_containers(client, pool)
    assert sorted(before) == rows, (before, rows)
    address = ip_on(client, app.name, network)

    started = time.monotonic()
    subprocess.run(["docker", "kill", "-s", "KILL", app.name], check=True, capture_output=True)
    app.c.reload()
    assert app.c.status == "exited" and app.c.attrs["State"]["ExitCode"] == 137, app.c.attrs["State"]
    assert worker_containers(client, pool) == before      # the workers outlive it, their jobs running

    app.c.start()
    app.wait_ready()
    up = time.monotonic() - started
    assert ip_on(client, app.name, network) == address, "the appliance came back at another address"
    # each worker comes back into the collector (its running job reconnects), or has already
    # finished that job and drained away; meanwhile only the very containers of before exist
    rejoined, containers = set(), set()

    def back():
        rejoined.update(worker_ads(app))
        containers.update(worker_containers(client, pool).values())
        retired = {w for w, _, to, _ in moves(app) if to == "retired"}
        return all(w in rejoined or w in retired for w in rows)
    app.wait("the kept workers to rejoin", back, timeout=120)
    took = time.monotonic() - started
    assert rejoined and containers <= set(before.values()), (rejoined, containers, before)
    app.wait("both jobs to complete", lambda: len(completed(app, [cluster])) == 2, timeout=180)
    done = time.monotonic() - started
    numbers = account(app, LOG, len(lengths), [cluster])
    assert len(numbers["done"]) == 2 and not numbers["lost"], numbers
    assert all(n == 1 for n in executes(app, LOG).values()), executes(app, LOG)
    assert not check_outputs(app, "/home/submit/job", cluster, lengths)

    history = moves(app)
    assert sorted(requested(app)) == rows, history          # nothing launched after the kill
    assert not [m for m in history if m[2] == "failed"], history
    assert app.logs().count("scheduler started") == 2
    assert_no_orphans(app, client)
    print(f"sigkill: appliance back in {up:.0f}s, workers back {took:.0f}s, jobs done {done:.0f}s after the "
          f"kill; workers {rows} adopted ({sorted(rejoined)} seen rejoining), {len(requested(app))} launched in all")


# ---------------------------------------------------------------- 2. a worker cut off for 60 s

CUT_CONFIG = f"""
scheduler: {{interval: 1, idle_timeout: 5, boot_timeout: 120, lost_timeout: 120}}
clouds:
  - {{name: docker, type: docker, image: "{IMAGE}", max_workers: 1, worker: {{cpus: 1, memory: 512}}}}
"""
CUT_SECONDS = 60


def test_a_worker_cut_off_from_the_appliance_for_60s_finishes_its_job_once(start_appliance, network, client):
    """`docker network disconnect` of a busy worker's container from the appliance's
    network for 60 s (under lost_timeout), then `docker network connect`: the job goes
    on (or, at worst, runs again exactly once) and its output is one whole run."""
    app = start_appliance(CUT_CONFIG, network=network, docker_socket=True, env=ENV)
    lengths = [75]
    cluster = app.submit(fault_jobs_sub(lengths), {"job.sh": FAULT_JOB})
    # running means executing: the 001 event, and the worker busy (claimed) in the collector. The
    # schedd says "running" from the input transfer on, before the claim shows in the collector
    app.wait("the job to execute on a busy worker", lambda: "\n001 (" in "\n" + app.sh(f"cat {LOG}", check=False)
             and [w["state"] for w in app.status("-m")["data"]] == ["busy"], timeout=120)
    (wid,) = [w["id"] for w in app.status("-m")["data"]]
    pool = app.pool_id()
    container = client.containers.get(worker_containers(client, pool)[wid])
    net = client.networks.get(network)

    address = ip_on(client, container.id, network)
    net.disconnect(container)
    started = time.monotonic()
    # the fault itself, not a wait for something: the worker stays cut off for 60 s, and
    # what the appliance makes of it is looked at every few seconds meanwhile
    seen = set()
    while time.monotonic() - started < CUT_SECONDS:
        seen |= {w["state"] for w in app.status("-m")["data"] if w["id"] == wid}
        time.sleep(3)
    during = moves(app)
    net.connect(container)
    readdressed = ip_on(client, container.id, network) != address

    app.wait("the job to complete", lambda: completed(app, [cluster]), timeout=240)
    done = time.monotonic() - started
    numbers = account(app, LOG, 1, [cluster])
    starts = executes(app, LOG)
    log = app.sh(f"cat {LOG}")
    assert len(numbers["done"]) == 1, numbers
    assert all(n in (1, 2) for n in starts.values()), (starts, log)    # continued, or ran again once
    assert not check_outputs(app, "/home/submit/job", cluster, lengths), log
    # nothing was judged while it was away: lost_timeout (120 s) is longer than the cut
    assert seen == {"busy"}, (seen, during)
    assert not [m for m in during if m[0] == wid and m[2] in ("failed", "retired", "draining")], during
    assert requested(app) == [wid], moves(app)
    assert_no_orphans(app, client)
    print(f"cut: job done {done:.0f}s after the cut began; worker readdressed: {readdressed}; starts {starts}; events "
          f"{sorted({l[:3] for l in log.splitlines() if l[:3].isdigit()})}")


# ---------------------------------------------------------------- 3. the state volume full

FULL_CONFIG = f"""
scheduler: {{interval: 1, idle_timeout: 5, boot_timeout: 120}}
clouds:
  - {{name: docker, type: docker, image: "{IMAGE}", max_workers: 2, worker: {{cpus: 1, memory: 512}}}}
"""
FILLER = "/var/lib/appliance/filler"


@pytest.fixture
def raw_appliance(client, image, tmp_path):
    """Start an appliance with extra `docker run` options; removed after the test."""
    started = []

    def start(config: str, **kwargs):
        cfg = tmp_path / f"{uuid.uuid4().hex[:8]}.yaml"
        cfg.write_text(config)
        app, c = start_raw_appliance(client, image, str(cfg), **kwargs)
        started.append(c)
        app.wait_ready()
        return app
    yield start
    for c in started:
        remove_appliance(client, c)


def cycles_or_silence(app, n: int = 5, timeout: float = 60) -> str:
    """Until the scheduler has had n more chances to act: n more cycles, completed or
    failed (a failed one still refreshes its heartbeat's time, the counter only counts
    completed ones), or its heartbeat has gone stale (cloud_status: not running), as when
    a full volume keeps it from writing one. Returns which of those it was."""
    seen = {"beat": None, "cycle": None, "done": 0}

    def advanced():
        sched = status_json(app)["scheduler"]
        if not sched["running"]:
            return "silent"
        cycle, beat = sched.get("cycle"), round(time.time() - (sched.get("last_cycle_age") or 0))
        if seen["beat"] is not None and (cycle != seen["cycle"] or beat > seen["beat"]):
            seen["done"] += 1
        seen["beat"], seen["cycle"] = beat, cycle
        if seen["done"] < n:
            return None
        return "failing" if "fail" in sched["message"] else "cycling"
    return app.wait(f"{n} more scheduler cycles, or its heartbeat to stop", advanced, timeout=timeout, every=1.0)


def says_full(text: str) -> bool:
    text = text.lower()
    return any(s in text for s in ("no space", "disk is full", "volume is full", "enospc"))


def test_a_full_state_volume_stops_launches_says_why_and_recovers(raw_appliance, network, client):
    """/var/lib/appliance (the state DB, keys, worker keys) on an 8 MB tmpfs, filled
    to the last byte while jobs wait: the scheduler launches nothing, says why in
    `cloud_status --json` and its log, an operator's change is refused with the reason,
    no job or setting is lost, and the demand is served once the space is back.

    What is wrong is collected in `findings` and asserted last, so that one shortfall
    does not hide whether the rest (recovery above all) works."""
    app = raw_appliance(FULL_CONFIG, network=network, env=ENV, docker_socket=True,
                        tmpfs={"/var/lib/appliance": "size=8m,mode=755"})
    pool = app.pool_id()
    secrets_before = app.sh("sha256sum /var/lib/appliance/pool-id /var/lib/appliance/keys/POOL")
    app.sh(f"dd if=/dev/zero of={FILLER} bs=64k 2>/dev/null; sync; true")
    df = app.sh("df -k /var/lib/appliance | tail -1").split()
    assert df[3] == "0", df                                     # not a byte left
    lengths = [5, 5]
    cluster = app.submit(fault_jobs_sub(lengths), {"job.sh": FAULT_JOB})
    filled = time.monotonic()

    findings = []
    how = cycles_or_silence(app, n=5)
    status = status_json(app)
    if not says_full(json.dumps(status)):
        findings.append(f"cloud_status --json does not say the state volume is full ({how}): "
                        f"{json.dumps(status['scheduler'])}")
    if not says_full(app.logs()):
        findings.append("the log does not say the state volume is full")
    # nothing launched, nothing lost meanwhile
    assert worker_containers(client, pool) == {}, "launched a worker with a full state volume"
    assert app.sh(f"condor_q {cluster} -allusers -af JobStatus").split() == ["1", "1"]
    full_events = [e["reason"] for e in status_json(app, "-e", "-n", "1000")["data"]]
    full_log = [line for line in app.logs().splitlines() if says_full(line) or "cycle failed" in line]
    # an operator's change meets a clear refusal: one line saying why, not a traceback
    operator = app.rc("cloud_admin -v 1 -c docker -C test")
    if operator[0] not in (1, 4) or "Traceback" in operator[1] or not says_full(operator[1]):
        findings.append(f"cloud_admin with the volume full: exit {operator[0]}: {operator[1][-600:]}")

    app.sh(f"rm -f {FILLER}")
    freed = time.monotonic()
    app.wait("the jobs to complete once the space is back", lambda: len(completed(app, [cluster])) == 2, timeout=150)
    recovered = time.monotonic() - freed
    numbers = account(app, LOG, len(lengths), [cluster])
    assert len(numbers["done"]) == 2 and not numbers["lost"], numbers
    assert not check_outputs(app, "/home/submit/job", cluster, lengths)
    integrity = app.sh("python3 -c \"import sqlite3; print(sqlite3.connect('/var/lib/appliance/state/appliance.db')"
                       ".execute('PRAGMA integrity_check').fetchone()[0])\"").strip()
    assert integrity == "ok", integrity
    assert app.sh("sha256sum /var/lib/appliance/pool-id /var/lib/appliance/keys/POOL") == secrets_before
    sched = app.status()["scheduler"]
    assert sched["running"] and "fail" not in sched["message"], sched      # the failure report is cleared
    docker_cloud = app.status()["data"][0]
    assert docker_cloud["max_workers"] == 2 and docker_cloud["health"] == "ok", docker_cloud   # no half change
    assert_no_orphans(app, client)
    print(f"full: {how} {freed - filled:.0f}s after the volume filled; jobs done {recovered:.0f}s after the space "
          f"came back; events while full: {full_events[-3:]}; log while full: {full_log}; "
          f"cloud_admin while full: {operator}; findings: {findings}")
    NUMBERS["full volume findings"] += len(findings)
    assert not findings, findings
