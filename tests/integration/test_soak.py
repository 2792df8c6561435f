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
run allows 2 MB over 28 minutes (about 4 MB/h). Takes about 3 minutes 10 s.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MINUTES = "3"
PROCESSES = ["scheduler", "gunicorn_master", "gunicorn_worker", "condor_master", "condor_collector",
             "condor_negotiator", "condor_schedd"]


def test_soak(image, tmp_path):
    out = tmp_path / "soak.json"
    env = dict(os.environ, APPLIANCE_IMAGE=image)
    proc = subprocess.run([sys.executable, "-m", "bench.soak", "--no-build", "--minutes", MINUTES,
                           "--memory-allowance", "3", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=840)
    log = f"bench.soak exited {proc.returncode}:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
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
    assert proc.returncode == 0, log
