"""Warm headroom on the real image: a local cloud with min_idle: 1 keeps one idle worker
past idle_timeout, a job starts on it, and a replacement idle worker comes up."""
from __future__ import annotations

import pytest

from .conftest import JOB_SCRIPT, job_sub

pytestmark = pytest.mark.timeout(180)

CONFIG = """
scheduler: {interval: 1, idle_timeout: 2, boot_timeout: 120}
clouds:
  - {name: local, type: local, max_workers: 3, min_idle: 1, worker: {cpus: 1, memory: 512}}
"""


def idle(app) -> list[dict]:
    return [w for w in app.status("-m")["data"] if w["state"] == "idle"]


def test_min_idle_keeps_a_worker_ready_and_replaces_it_when_a_job_takes_it(start_appliance):
    app = start_appliance(CONFIG)
    # with no job at all, one worker comes up and waits
    (first,) = app.wait("the headroom worker to join, idle", lambda: idle(app), timeout=60, every=0.5)
    # past idle_timeout (2 s) and more cycles after: still there, idle, never drained
    app.wait("it to be idle past idle_timeout", lambda: idle(app)[0]["idle_seconds"] >= 3, timeout=30, every=0.5)
    app.wait_cycles(3)
    workers = app.status("-m")["data"]
    assert [(w["id"], w["state"]) for w in workers] == [(first["id"], "idle")], workers
    local = app.status()["data"][0]
    assert local["min_idle"] == 1 and local["headroom"]["keep"] == 1, local
    assert local["headroom"]["status"] == "headroom: min_idle 1, 1 idle", local
    log = app.logs()
    assert f"worker {first['id']} (local): launching: headroom: min_idle 1, 0 idle" in log, log[-3000:]
    assert f"worker {first['id']}: idle for" in log and "kept: headroom: min_idle 1, 1 idle" in log, log[-3000:]

    # a job starts on it, and a replacement is launched for the headroom
    app.submit(job_sub(1, seconds=30), {"job.sh": JOB_SCRIPT})
    app.wait("the job to run on the kept worker",
             lambda: first["id"] in app.sh("condor_q -allusers -run -af MachineAttrWorkerId0"), timeout=30,
             every=0.5)
    replacement = app.wait("a replacement idle worker",
                           lambda: [w for w in idle(app) if w["id"] != first["id"]], timeout=60, every=0.5)[0]
    launch = [e for e in app.events() if e["worker_id"] == replacement["id"] and e["to_state"] == "requested"]
    assert launch and launch[0]["reason"].startswith("launch: headroom: min_idle 1, 0 idle"), launch
