"""The soak, compressed to 3 minutes: many worker lifecycles, and nothing grows without bound.

The same code as the full run (`python3 -m bench.soak --minutes 30`, numbers in
docs/benchmarks.md, "Soak"), for 3 minutes: waves of 1 s jobs on up to 4 local
workers with idle_timeout 3 s, about 30 lifecycles, samples at quiet points. It
asserts what the full run judges (bench/soak.py's TOLERANCE says why each bound):
memory and descriptor slopes within tolerance, nothing of a retired worker left,
the collector back to its own ads, events capped by retention, one worker row per
lifecycle, the WAL checkpointed; and every job submitted completed, exit 0.

Three minutes find a leak per lifecycle (a thread, a descriptor, a process, a
directory, an ad, ~100 KB of memory), not a slow one: the memory allowance is
3 MB over the 2.5 measured minutes (about 70 MB/h), because HTCondor's collector
and schedd still fill their caches then (+1.3 to 1.8 MB, measured); the 30-minute
run allows 2 MB over 28 minutes (about 4 MB/h). Takes about 3 minutes 10 s, spent
beside the other integration tests: conftest's `soak_beside` starts it with the first of
them, and this test collects its result. Its appliance is one container of its own with
local workers inside, which the other tests never touch; a leak does not depend on how
busy the machine is, and the load it adds is what a real host has.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from .conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MINUTES = "3"
PROCESSES = ["scheduler", "gunicorn_master", "gunicorn_worker", "condor_master", "condor_collector",
             "condor_negotiator", "condor_schedd"]


class Soak:
    """bench.soak running in the background (SIGINT on stop: its appliance is removed on the way out)."""

    def __init__(self, image: str, directory):
        self.out, self.log = directory / "soak.json", directory / "soak.log"
        env = dict(os.environ, APPLIANCE_IMAGE=image)
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "bench.soak", "--no-build", "--minutes", MINUTES,
                                          "--memory-allowance", "3", "--out", str(self.out)],
                                         cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    def result(self, timeout: float = 840) -> tuple[int, str]:
        rc = self.proc.wait(timeout)
        return rc, f"bench.soak exited {rc}:\n{self.log.read_text()[-9000:]}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def test_soak(soak_beside):
    returncode, log = soak_beside.result()
    out = soak_beside.out
    assert out.exists(), log
    data = json.loads(out.read_text())
    assert data["complete"], log

    # the load happened: lifecycles, none failed, every job ran to its end
    jobs, lifecycles = data["jobs"], data["lifecycles"]
    assert lifecycles["measured"] >= 15 and lifecycles["failed"] == 0, (lifecycles, log)
    assert jobs["submitted"] == jobs["logged_submits"] == jobs["completed"] == jobs["exit_0"] > 0, (jobs, log)
    assert jobs["stuck_waves"] == 0 and jobs["held"] == 0, (data["stuck"], log)

    # every appliance process was measured, and none restarted (that would hide a leak)
    metrics = data["metrics"]
    for name in PROCESSES:
        assert f"rss_mb.{name}" in metrics and f"fds.{name}" in metrics, (name, sorted(metrics))
    assert data["restarted"] == [], (data["restarted"], log)

    # no growth without bound: each judged metric within its tolerance
    grown = {name: m for name, m in metrics.items() if m.get("bounded") is False}
    assert not grown, (json.dumps(grown, indent=1), log)
    assert metrics["leftovers.worker_processes"]["max"] == 0 and metrics["leftovers.machine_ads"]["max"] == 0
    assert metrics["db.events"]["max"] <= metrics["db.events"]["bound"]
    assert data["prune_count"] >= 1
    assert data["verdict"] == {"bounded": True, "unbounded": [], "jobs_ok": True}
    assert returncode == 0, log
