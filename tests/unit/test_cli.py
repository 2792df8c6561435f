"""cloud_status and cloud_admin against a real store, without Docker: flags, messages, exit codes, JSON."""
import json
import re
import sqlite3
import time

import pytest

from appliance.cli import cloud_admin, cloud_status
from appliance.cli.common import run
from appliance.lifecycle import State
from appliance.model import ShapeHealth
from appliance.store import Store

CONFIG = """
clouds:
  - {name: local, type: local, max_workers: 2}
  - {name: docker, type: docker, enabled: false}
"""


def cli_state(tmp_path, monkeypatch, config: str) -> tuple:
    """What the CLIs find in the appliance: the file (APPLIANCE_CONFIG), the state database
    (APPLIANCE_DB) and a fresh heartbeat. Returns (the file's path, the store)."""
    cfg = tmp_path / "appliance.yaml"
    cfg.write_text(config)
    monkeypatch.setenv("APPLIANCE_CONFIG", str(cfg))
    monkeypatch.setenv("APPLIANCE_DB", str(tmp_path / "state" / "appliance.db"))
    store = Store()
    store.put("heartbeat", {"time": time.time(), "interval": 2, "duration": 0.01})
    return cfg, store


@pytest.fixture
def env(tmp_path, monkeypatch):
    return cli_state(tmp_path, monkeypatch, CONFIG)[1]


def status(*argv):
    return run(cloud_status.main, list(argv))


def admin(*argv):
    return run(cloud_admin.main, list(argv))


def test_clouds_table(env, capsys):
    assert status() == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["CLOUD", "TYPE", "ENABLED", "BOOTING", "IDLE", "BUSY", "DRAINING", "MAX", "HEALTH", "LAST", "ERROR"]
    assert out[1].split() == ["local", "local", "yes", "0", "0", "0", "0", "2", "ok", "-"]
    assert out[2].split() == ["docker", "docker", "no", "0", "0", "0", "0", "10", "disabled", "-"]
    assert "scheduler: running" in out[-1]


def test_the_last_cycle_is_shown_with_its_phases(env, capsys):
    phases = {"observe_demand": 1.2, "observe_supply": 0.048, "decide": 0.009, "act": 0.0, "record": 0.031}
    env.put("heartbeat", {"time": time.time(), "interval": 1, "duration": 1.288, "phases": phases, "cycle": 7})
    assert status() == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "scheduler: running (last cycle 0s ago, took 1.29 s: observe demand 1.20 s, observe supply 48 ms, "
        "decide 9 ms, act 0 ms, record 31 ms)")
    assert status("--json") == 0
    sched = json.loads(capsys.readouterr().out)["scheduler"]
    assert sched["cycle_seconds"] == 1.288 and sched["cycle_phases"] == phases


def test_disable_enable_persist_and_show(env, capsys):
    assert admin("-d", "local", "-C", "why") == 0
    assert capsys.readouterr().out.strip() == "local: disabled"
    assert status("--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert [c["enabled"] for c in data["data"]] == [False, False]
    assert admin("-e", "local", "-C", "why") == 0 and "local: enabled" in capsys.readouterr().out


def test_unknown_cloud_is_rejected_with_the_known_names(env, capsys):
    assert admin("-e", "nope", "-C", "why") == 1
    assert capsys.readouterr().err.strip().endswith("no cloud named nope (known: local, docker)")
    assert status("-c", "nope") == 1
    assert "no cloud named nope (known: local, docker)" in capsys.readouterr().err


def test_max_workers_and_bad_numbers(env, capsys):
    assert admin("-v", "5", "-c", "docker", "-C", "why") == 0 and "docker: max_workers 5" in capsys.readouterr().out
    for bad in ("-1", "x", "2.5", "1000001"):
        assert admin("-v", bad, "-c", "docker", "-C", "why") == 1
        assert "max_workers must be a whole number" in capsys.readouterr().err


def test_usage_errors_exit_2(env, capsys):
    with pytest.raises(SystemExit) as e:
        cloud_admin.main(["-k", "-a"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cloud_admin.main(["-k", "-c", "local"])
    assert e.value.code == 2


def test_kill_needs_a_live_worker(env, capsys):
    env.add_worker("local-aaaaaa", "local", "x")
    env.transition("local-aaaaaa", State.BOOTING, "y")
    assert admin("-k", "-c", "local", "-n", "local-zzzzzz", "-C", "why") == 1
    assert "no live worker local-zzzzzz in cloud local (live: local-aaaaaa)" in capsys.readouterr().err
    assert admin("-k", "-c", "local", "-n", "local-aaaaaa", "-C", "why") == 0
    assert "drain and removal requested for 1 worker(s): local-aaaaaa" in capsys.readouterr().out
    assert env.pending_kills() == {"local-aaaaaa": False}
    assert admin("-k", "-c", "local", "-a", "--now", "--json", "-C", "why") == 0
    assert json.loads(capsys.readouterr().out)["workers"] == ["local-aaaaaa"]
    assert env.pending_kills() == {"local-aaaaaa": True}


def test_every_action_needs_a_comment_and_its_event_records_it(env, capsys):
    env.add_worker("local-aaaaaa", "local", "x")
    for argv in (["-e", "local"], ["-d", "local"], ["-v", "1", "-c", "local"], ["-k", "-c", "local", "-a"],
                 ["-o", "-c", "local", "-a"], ["--remove-user", "alice"], ["--revoke-schedd", "lab"],
                 ["-e", "local", "-C", "  "]):
        with pytest.raises(SystemExit) as e:
            cloud_admin.main(argv)
        assert e.value.code == 2 and "--comment" in capsys.readouterr().err, argv
    with pytest.raises(SystemExit) as e:        # a listing changes nothing: no comment to give
        cloud_admin.main(["--list-users", "-C", "x"])
    assert e.value.code == 2
    assert admin("-e", "local", "-C", "bell\a") == 1
    assert "printable" in capsys.readouterr().err
    assert admin("-d", "local", "-C", "x" * 201) == 1
    assert "at most 200 characters" in capsys.readouterr().err
    assert admin("-d", "local", "--comment", "host\n maintenance") == 0
    assert admin("-v", "3", "-c", "local", "-C", "3 granted") == 0
    assert admin("-o", "-c", "local", "-n", "local-aaaaaa", "-C", "kernel update") == 0
    capsys.readouterr()
    assert status("-e", "--json") == 0
    reasons = [e["reason"] for e in json.loads(capsys.readouterr().out)["data"]]
    assert reasons[-3:] == ['disabled by cloud_admin: "host maintenance"', 'max_workers set to 3 by cloud_admin: '
                            '"3 granted"', 'retirement after the running jobs requested by cloud_admin: "kernel update"']
    assert status("-e") == 0
    assert 'disabled by cloud_admin: "host maintenance"' in capsys.readouterr().out


def test_retire_lets_the_running_jobs_finish(env, capsys):
    """-o is a drain: no new job, the running ones finish, then removal; never at once."""
    for wid in ("local-aaaaaa", "local-bbbbbb"):
        env.add_worker(wid, "local", "x")
        env.transition(wid, State.BOOTING, "y")
        env.transition(wid, State.BUSY, "joined")
    assert admin("-o", "-c", "local", "-n", "local-aaaaaa", "-C", "why") == 0
    assert capsys.readouterr().out.strip() == ("local: retirement after the running jobs requested for 1 worker(s): "
                                               "local-aaaaaa")
    assert env.pending_kills() == {"local-aaaaaa": False}
    assert admin("-o", "-c", "local", "-a", "--json", "-C", "why") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["workers"] == ["local-aaaaaa", "local-bbbbbb"] and data["drain"] is True
    assert env.pending_kills() == {"local-aaaaaa": False, "local-bbbbbb": False}
    for argv, says in ((["-o", "-c", "local", "-a", "--now"], "--now only goes with -k"),
                       (["-o", "-a"], "need -c NAME"), (["-o", "-c", "local"], "-o needs exactly one of -n ID or -a"),
                       (["-e", "local", "-n", "x"], "-n and -a only go with -k or -o")):
        with pytest.raises(SystemExit) as e:
            cloud_admin.main([*argv, "-C", "why"])
        assert e.value.code == 2 and says in capsys.readouterr().err, argv
    assert admin("-o", "-c", "local", "-n", "local-zzzzzz", "-C", "why") == 1


def _boot(store, wid, cloud, launched, to=None, after=0.0, reason="x"):
    store.add_worker(wid, cloud, "launch", now=launched)
    if to is not None:
        store.transition(wid, State.BOOTING, "launched", now=launched + 1)
        store.transition(wid, to, reason, now=launched + after)


def test_boot_times_and_failures_per_cloud(env, capsys):
    now = time.time()
    _boot(env, "local-old", "local", now - 2 * 86400, State.IDLE, 5, "joined")       # before the window
    _boot(env, "local-a", "local", now - 3600, State.IDLE, 20, "joined the pool as a")
    _boot(env, "local-b", "local", now - 3000, State.BUSY, 40, "joined the pool as b")
    _boot(env, "local-c", "local", now - 5000, State.FAILED, 300, "did not join the pool within boot_timeout (300s)")
    _boot(env, "local-d", "local", now - 1000, State.RETIRED, 3, "cancelled: no demand")
    _boot(env, "local-e", "local", now - 10)
    assert status("-b") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("workers launched in the last 24 h (since ")
    assert out[2].split() == ["CLOUD", "LAUNCHED", "JOINED", "FAILED", "CANCELLED", "STARTING", "SUCCESS", "BOOT",
                              "MEAN", "P50", "P90", "MAX", "COMMONEST", "FAILURE"]
    assert out[3].split()[:12] == ["local", "5", "2", "1", "1", "1", "67%", "30s", "20s", "40s", "40s", "1x"]
    assert out[3].endswith("1x did not join the pool within boot_timeout (300s)")
    assert out[4].split() == ["docker", "0", "0", "0", "0", "0", "-", "-", "-", "-", "-", "-"]
    assert status("-b", "--json") == 0
    data = json.loads(capsys.readouterr().out)["data"]
    assert data["hours"] == 24 and set(data) == {"hours", "since", "clouds"}
    assert data["clouds"][0]["boot_seconds"] == {"mean": 30.0, "p50": 20.0, "p90": 40.0, "max": 40.0}
    assert status("-b", "--hours", "72", "--json") == 0
    assert json.loads(capsys.readouterr().out)["data"]["clouds"][0]["launched"] == 6
    assert status("-z") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("1 boot failure(s) in the last 24 h")
    assert out[2].split() == ["TIME", "WORKER", "CLOUD", "AFTER", "WHY"]
    assert out[3].split()[2:] == ["local-c", "local", "5m00s", "did", "not", "join", "the", "pool", "within",
                                  "boot_timeout", "(300s)"]
    assert status("-z", "--json") == 0
    failures = json.loads(capsys.readouterr().out)["data"]["failures"]
    assert [(f["worker_id"], f["after_seconds"]) for f in failures] == [("local-c", 300.0)]
    assert status("-z", "--hours", "1") == 0
    assert capsys.readouterr().out.startswith("no boot failures in the last 1 h")


def test_stats_window_errors(env, capsys):
    for bad in ("0", "9000"):
        assert status("-b", "--hours", bad) == 1
        assert "whole number of hours from 1 to 8784" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cloud_status.main(["-m", "--hours", "3"])
    assert e.value.code == 2 and "--hours only goes with -b, -z and -g" in capsys.readouterr().err


def test_job_times_per_cloud_from_the_history(env, capsys, monkeypatch):
    from appliance import condor
    asked = []

    def completed(since):
        asked.append(since)
        return [("local", "local-a", 10.0), ("local", "local-a", 30.0), ("local", "local-b", 50.0)]
    monkeypatch.setattr(condor, "completed_jobs", completed)
    assert status("-g") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("jobs that completed on the workers in the last 24 h")
    assert out[2].split() == ["CLOUD", "JOBS", "WORKERS", "MEAN", "P50", "P90", "MAX", "HOURS"]
    assert out[3].split() == ["local", "3", "2", "30s", "30s", "50s", "50s", "0.03"]
    assert out[4].split() == ["docker", "0", "0", "-", "-", "-", "-", "0"]
    assert abs(asked[0] - (time.time() - 86400)) < 60
    assert status("-g", "--json", "--hours", "2") == 0
    data = json.loads(capsys.readouterr().out)["data"]
    assert data["hours"] == 2 and data["clouds"][0]["job_seconds"] == {"mean": 30.0, "p50": 30.0, "p90": 50.0,
                                                                       "max": 50.0}

    def broken(since):
        raise condor.CondorError("cannot read the schedd's job history: connection refused")
    monkeypatch.setattr(condor, "completed_jobs", broken)
    assert status("-g") == 4
    assert "cannot read the schedd's job history: connection refused" in capsys.readouterr().err


def test_workers_and_events(env, capsys):
    env.add_worker("local-aaaaaa", "local", "launch: 1 idle job")
    env.transition("local-aaaaaa", State.BOOTING, "launched (pid:1)")
    assert status("-m") == 0
    out = capsys.readouterr().out
    assert "local-aaaaaa" in out and "booting" in out
    assert status("-e") == 0
    out = capsys.readouterr().out
    assert "requested -> booting" in out and "launched (pid:1)" in out


def test_scheduler_not_running_exits_3_but_still_prints(env, capsys):
    env.put("heartbeat", {"time": time.time() - 600, "interval": 2})
    assert status() == 3
    captured = capsys.readouterr()
    assert "local" in captured.out and "not running: last cycle" in captured.err
    assert admin("-d", "local", "-C", "why") == 3
    assert "saved, but the scheduler is not running" in capsys.readouterr().err


def test_config_error_is_shown_and_exits_4(env, tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("clouds: [{name: x, type: nope}]")
    monkeypatch.setenv("APPLIANCE_CONFIG", str(bad))
    assert status() == 4
    assert f"configuration error: {bad}: clouds[0].type: unknown cloud type 'nope'" in capsys.readouterr().err


def test_a_full_state_volume_is_one_line_not_a_traceback(env, monkeypatch, capsys):
    # the real failure (an 8 MB tmpfs filled up) is in tests/integration/test_faults.py
    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")
    monkeypatch.setattr(Store, "set_cloud", full)
    assert admin("-v", "1", "-c", "local", "-C", "why") == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "nothing was changed: database or disk is full (the state volume is full" in err


def test_queue_shows_unschedulable(env, capsys):
    env.put("demand", [{"key": "k", "count": 2, "cpus": 1, "memory": 999999, "disk": 0, "requirements": "true",
                        "target_clouds": None, "clouds": [], "status": "unschedulable", "reason": "no enabled cloud"}])
    assert status("-q") == 0
    out = capsys.readouterr().out
    assert "2 idle job(s) in 1 group(s)" in out and "unschedulable" in out
    assert "2 idle job(s) are unschedulable" in out


SHAPED = """
clouds:
  - {name: local, type: local, max_workers: 2}
  - name: docker
    type: docker
    shapes: [{name: small, cpus: 1, memory: 512}, {name: big, cpus: 4, memory: 4096, gpus: 1, price: 0.25}]
"""


def test_shapes_and_each_workers_shape_are_shown(env, tmp_path, capsys):
    (tmp_path / "appliance.yaml").write_text(SHAPED)
    env.add_worker("docker-b16b16", "docker", "launch", shape="big")
    env.add_worker("local-aaaaaa", "local", "launch", shape="default")
    assert status("-m") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["WORKER", "CLOUD", "SHAPE", "STATE"]
    assert out[1].split()[:4] == ["docker-b16b16", "docker", "big", "requested"]
    assert out[2].split()[:4] == ["local-aaaaaa", "local", "default", "requested"]
    assert status("-c", "docker") == 0
    assert ("shapes: small 1 cpus, 512 MB, 4096 MB disk; big 4 cpus, 4096 MB, 4096 MB disk, 1 gpus, 0.25/h; "
            "priority 0") in capsys.readouterr().out
    assert status("-c", "local") == 0
    assert "worker size: 1 cpus, 1024 MB, 4096 MB disk; priority 0" in capsys.readouterr().out
    assert status("--json") == 0
    docker = json.loads(capsys.readouterr().out)["data"][1]
    ok = {"min_idle": 0, "health": "ok", "backoff_seconds": 0, "last_error": ""}
    assert docker["shapes"] == [
        {"name": "small", "cpus": 1, "memory": 512, "disk": 4096, "gpus": 0, "price": None, **ok},
        {"name": "big", "cpus": 4, "memory": 4096, "disk": 4096, "gpus": 1, "price": 0.25, **ok}]
    assert docker["worker"] == {"cpus": 1, "memory": 512, "disk": 4096}
    assert status("-m", "--json") == 0
    assert [w["shape"] for w in json.loads(capsys.readouterr().out)["data"]] == ["big", "default"]


WARM = """
clouds:
  - {{name: local, type: local, max_workers: 2, min_idle: 1}}
  - name: docker
    type: docker
    max_workers: 4
    min_idle_window: "{window}"
    shapes: [{{name: small, min_idle: 1}}, {{name: big, cpus: 4}}]
  - {{name: cold, type: local}}
"""


def test_each_clouds_min_idle_is_shown_with_its_window_and_the_schedulers_last_word(env, tmp_path, capsys):
    hour = time.gmtime().tm_hour
    window = f"{(hour + 2) % 24:02d}:00-{(hour + 3) % 24:02d}:00"          # closed now
    (tmp_path / "appliance.yaml").write_text(WARM.format(window=window))
    env.put("headroom", {"local": "headroom: min_idle 1, 1 idle"})
    assert status() == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[8:10] == ["MIN", "IDLE"]
    assert out[1].split()[8] == "1"
    assert f" 0 (small 1) {window} (off now) " in out[2]
    assert out[3].split()[8] == "-"
    assert status("-c", "local") == 0
    assert "\nheadroom: min_idle 1, 1 idle\n" in capsys.readouterr().out
    assert status("-c", "docker") == 0
    assert f"none kept now: outside min_idle_window {window}" in capsys.readouterr().out
    assert status("--json") == 0
    local, docker, cold = json.loads(capsys.readouterr().out)["data"]
    assert (local["min_idle"], local["min_idle_window"]) == (1, None)
    assert local["headroom"] == {"keep": 1, "off": None, "status": "headroom: min_idle 1, 1 idle"}
    assert docker["min_idle_window"] == window
    assert [s["min_idle"] for s in docker["shapes"]] == [1, 0]
    assert docker["headroom"]["keep"] == 0 and docker["headroom"]["off"].startswith("outside min_idle_window")
    assert cold["headroom"] is None and cold["min_idle"] == 0


def test_a_shape_backing_off_after_a_capacity_error_is_shown_with_its_error(env, tmp_path, capsys):
    (tmp_path / "appliance.yaml").write_text(SHAPED)
    env.save_shape_health({("docker", "big"): ShapeHealth("docker", "big", time.time() + 60, 1,
                                                          "capacity: no room for 4 cpus", time.time())})
    assert status("-c", "docker") == 0
    out = capsys.readouterr().out
    assert "small 1 cpus, 512 MB, 4096 MB disk; big" in out
    assert re.search(r"big 4 cpus, 4096 MB, 4096 MB disk, 1 gpus, 0.25/h \(backing off (59|60)s: "
                     r"capacity: no room for 4 cpus\)", out), out
    assert status("--json") == 0
    big = json.loads(capsys.readouterr().out)["data"][1]["shapes"][1]
    assert big["health"] == "backoff" and big["last_error"] == "capacity: no room for 4 cpus"


def test_cost_now_and_over_the_last_day_with_the_budget(env, tmp_path, capsys):
    (tmp_path / "appliance.yaml").write_text(SHAPED.replace("clouds:", "budget: {max_per_hour: 5, max_per_day: 60}\nclouds:")
                                             + "    budget: {max_per_day: 10}\n")
    env.add_worker("docker-b16b16", "docker", "launch", now=time.time() - 7200, shape="big")    # up for 2 h
    assert status() == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[8:11] == ["COST/H", "SPENT", "24H"]
    assert lines[1].split()[:10] == ["local", "local", "yes", "0", "0", "0", "0", "2", "0.00", "0.00"]
    assert lines[2].split()[:10] == ["docker", "docker", "yes", "1", "0", "0", "0", "10", "0.25", "0.50"]
    assert "cost: 0.25/h now, 0.50 in the last 24 h; budget: max_per_hour 5, max_per_day 60" in out
    assert status("-c", "docker") == 0
    assert "cost: 0.25/h now, 0.50 in the last 24 h; budget: max_per_day 10" in capsys.readouterr().out
    assert status("--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["spend"] == {"priced": True, "cost_per_hour": 0.25, "spend_24h": pytest.approx(0.5, abs=0.001),
                             "budget": {"max_per_hour": 5.0, "max_per_day": 60.0}}
    assert data["data"][1]["budget"] == {"max_per_hour": None, "max_per_day": 10.0}


def test_workers_show_their_image_only_when_some_job_asked_for_one():
    from appliance.cli.cloud_status import _images, _workers
    row = {"id": "docker-1", "cloud": "docker", "shape": "default", "image": "", "state": "idle",
           "condor_name": "", "age_seconds": 5, "idle_seconds": 1, "reason": "r"}
    assert "IMAGE" not in _workers([row])
    text = _workers([row, {**row, "id": "docker-2", "image": "bio"}])
    assert "IMAGE" in text and "bio" in text and "default" in text
    assert _images({"images": {"default": "appliance:latest"}}) == ""
    assert _images({"images": {"default": "appliance:latest", "bio": "lab/bio:1"}, "vm_type": "csv2"}) == (
        "; images: default (appliance:latest), bio (lab/bio:1); vm_type csv2")
