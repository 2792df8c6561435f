"""The benchmarks still run: each one at tiny sizes, checked for well-formed JSON.

Timings are not asserted (this machine is shared and noisy); the full runs,
for people, are `python3 -m bench.<name>` and their numbers go in
docs/benchmarks.md.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


def bench(image, tmp_path, name: str, *args: str, timeout: int = 600) -> dict:
    out = tmp_path / f"{name}.json"
    env = dict(os.environ, APPLIANCE_IMAGE=image)
    proc = subprocess.run([sys.executable, "-m", f"bench.{name}", "--no-build", "--out", str(out), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"bench.{name} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    data = json.loads(out.read_text())
    assert data["benchmark"] and data["machine"]["cpus"] >= 1 and len(data["load_at_end"]) == 3
    return data


def test_latency_smoke(image, tmp_path):
    data = bench(image, tmp_path, "latency", "--cloud", "local", "--trials", "2")
    assert data["latency"]["n"] == 2 and data["latency"]["p50"] > 0
    assert all(t["latency"] > 0 and "boot" in t for t in data["trials"])


def test_latency_min_idle_smoke(image, tmp_path):
    """Warm headroom: each trial's job takes the kept worker, and the next waits for its replacement."""
    data = bench(image, tmp_path, "latency", "--cloud", "local", "--min-idle", "1", "--named-outputs",
                 "--trials", "2")
    assert data["min_idle"] == 1 and data["job"] == "named-outputs"
    assert data["latency"]["n"] == 2 and data["latency"]["p50"] > 0


def test_decision_smoke(image, tmp_path):
    data = bench(image, tmp_path, "decision", "--sizes", "1000", "--groups", "10", "--repeats", "2")
    (row,) = data["rows"]
    assert row["jobs"] == 1000 and row["groups"] == 10
    assert row["ours_s"] > 0 and row["naive_s"] > 0 and row["daemon_rss_mb"] > 0
    assert row["floor_s"] > 0 and row["before_s"] > 0 and row["reused_s"] >= 0 and row["cold_s"] > 0
    assert row["deviant_procs"] == 0
    assert set(row["daemon_phases"]) == {"observe_demand", "observe_supply", "decide", "act", "record"}


def test_burst_smoke(image, tmp_path):
    png = tmp_path / "burst.png"
    data = bench(image, tmp_path, "burst", "--jobs", "8", "--seconds", "2", "--workers", "2",
                 "--plot", str(png), timeout=900)
    for run in ("elastic", "static"):
        assert data[run]["makespan_s"] > 0 and data[run]["series"]
    assert data["elastic"]["workers_launched"] <= 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_footprint_smoke(image, tmp_path):
    data = bench(image, tmp_path, "footprint", "--trials", "1", "--idle", "2")
    assert data["start"]["p50"] > 0 and data["memory_mb"]["p50"] > 0


def test_workers_smoke(image, tmp_path):
    """Simulated workers in the real collector, the daemon's cycle over them, the store's statements counted."""
    data = bench(image, tmp_path, "workers", "--sizes", "50", "--cycles", "3")
    (row,) = data["rows"]
    assert row["workers"] == 50
    assert row["supply_decide_p50_s"] > 0 and row["cycle_p50_s"] > 0 and row["collector_query_p50_s"] > 0
    assert set(row["phases_p50_s"]) == {"observe_demand", "observe_supply", "decide", "act", "record"}
    assert row["rss_mb"] > 0 and row["store_transactions_per_cycle"] >= 1
    assert row["store_statements_per_cycle"] > 0 and row["store_statements_by_kind"]
    assert data["verdict"]["store_statements_per_cycle"] == {"50": row["store_statements_per_cycle"]}
