"""cloud_status and cloud_admin inside a running appliance: every flag, bad input,
exit codes, --help and the --json shapes (boot and job times too, and the --comment
every change records)."""
from __future__ import annotations

import json

import pytest

from . import ops_support
from .ops_support import job

pytestmark = pytest.mark.timeout(300)

CLOUD_KEYS = {"name", "type", "enabled", "priority", "booting", "idle", "busy", "draining", "max_workers",
              "health", "backoff_seconds", "failures", "last_error", "last_error_at", "worker", "shapes",
              "cost_per_hour", "spend_24h", "budget", "images", "vm_type", "min_idle", "min_idle_window", "headroom"}
WORKER_KEYS = {"id", "cloud", "state", "condor_name", "age_seconds", "state_seconds", "idle_seconds",
               "resource_id", "reason", "shape", "image"}
EVENT_KEYS = {"id", "time", "kind", "worker_id", "cloud", "from_state", "to_state", "reason"}
GROUP_KEYS = {"key", "count", "cpus", "memory", "disk", "requirements", "target_clouds", "clouds", "status", "reason"}
BOOT_KEYS = {"cloud", "launched", "joined", "failed", "interrupted", "cancelled", "starting", "success",
             "boot_seconds", "failure_reasons"}
JOB_TIME_KEYS = {"cloud", "jobs", "workers", "job_seconds", "hours"}
SUMMARY_KEYS = {"mean", "p50", "p90", "max"}


@pytest.fixture(scope="module")
def app(client, image, tmp_path_factory):
    a = ops_support.start(client, image, tmp_path_factory.mktemp("cli"), "cli")
    yield a
    ops_support.stop(a)


def run(app, cmd: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr)"""
    rc, out = app.c.exec_run(["bash", "-c", cmd], demux=True)
    return rc, (out[0] or b"").decode(), (out[1] or b"").decode()


def js(app, cmd: str) -> dict:
    rc, out, err = run(app, cmd)
    assert rc == 0, (cmd, rc, out, err)
    return json.loads(out)


def test_help_shows_examples_and_exit_codes(app):
    for cmd in ("cloud_status", "cloud_admin"):
        rc, out, _ = run(app, f"{cmd} --help")
        assert rc == 0 and "examples:" in out and "exit codes:" in out, out
    rc, _, err = run(app, "cloud_status --bogus")
    assert rc == 2 and "unrecognized arguments: --bogus" in err
    rc, _, err = run(app, "cloud_admin")
    assert rc == 2 and "one of the arguments" in err
    rc, out, err = run(app, "cloud_admin -e burst")
    assert (rc, out) == (2, "") and "say why with --comment TEXT" in err


def test_clouds_table_and_json(app):
    rc, out, _ = run(app, "cloud_status")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["CLOUD", "TYPE", "ENABLED", "BOOTING", "IDLE", "BUSY", "DRAINING", "MAX", "HEALTH",
                                "LAST", "ERROR"]
    assert lines[1].split() == ["local", "local", "yes", "0", "0", "0", "0", "2", "ok", "-"]
    assert lines[2].split() == ["burst", "local", "no", "0", "0", "0", "0", "1", "disabled", "-"]
    # columns are aligned: every value starts where its header does
    col = lines[0].index("HEALTH")
    assert lines[1][col:].startswith("ok") and lines[2][col:].startswith("disabled")

    data = js(app, "cloud_status --json")
    # the overview also names the configuration the scheduler runs (cloud_admin --reload changes it)
    assert set(data) == {"scheduler", "data", "config"} and data["scheduler"]["running"] is True
    assert set(data["config"]) == {"source", "version", "loaded_at"}
    assert lines[-1].startswith("configuration: /etc/appliance/appliance.yaml version ")
    assert lines[-2].startswith("scheduler: running")
    assert [c["name"] for c in data["data"]] == ["local", "burst"]
    assert all(set(c) == CLOUD_KEYS for c in data["data"])


def test_one_cloud(app):
    rc, out, _ = run(app, "cloud_status -c burst")
    assert rc == 0 and "worker size: 2 cpus, 2048 MB" in out and "priority 1" in out
    data = js(app, "cloud_status -c local --json")["data"]
    assert set(data) == CLOUD_KEYS | {"workers", "events"} and data["name"] == "local"
    rc, out, err = run(app, "cloud_status -c nope")
    assert (rc, out) == (1, "") and err.strip() == "cloud_status: no cloud named nope (known: local, burst)"


def test_enable_disable(app):
    rc, out, _ = run(app, "cloud_admin -e burst -C 'test the enable'")
    assert (rc, out.strip()) == (0, "burst: enabled")
    assert app.cloud("burst")["enabled"] is True
    data = js(app, "cloud_admin -d burst --json --comment 'and the disable'")
    assert data["cloud"]["enabled"] is False and data["cloud"]["health"] == "disabled"
    assert set(data) == {"cloud", "scheduler"}
    rc, _, err = run(app, "cloud_admin -d nope -C x")
    assert rc == 1 and err.strip() == "cloud_admin: no cloud named nope (known: local, burst)"
    rc, _, err = run(app, "cloud_admin -e burst -c burst -C x")
    assert rc == 2 and "take the cloud name directly" in err
    rc, _, err = run(app, "cloud_admin -e burst -C $'bell\\a'")
    assert rc == 1 and "the comment must be printable text" in err
    events = [e["reason"] for e in js(app, "cloud_status -e --json")["data"] if e["cloud"] == "burst"]
    assert events[-2:] == ['enabled by cloud_admin: "test the enable"', 'disabled by cloud_admin: "and the disable"']
    rc, out, _ = run(app, "cloud_status -e")
    assert rc == 0 and 'disabled by cloud_admin: "and the disable"' in out


def test_max_workers(app):
    rc, out, _ = run(app, "cloud_admin -v 1 -c burst -C x")
    assert (rc, out.strip()) == (0, "burst: max_workers 1")
    assert js(app, "cloud_admin -v 3 -c burst --json -C x")["cloud"]["max_workers"] == 3
    assert app.cloud("burst")["max_workers"] == 3
    for bad, why in (("abc", "'abc'"), ("-1", "'-1'"), ("1.5", "'1.5'"), ("100001", "100001")):
        rc, out, err = run(app, f"cloud_admin -v {bad} -c burst -C x")
        assert rc == 1 and "max_workers must be a whole number" in err and why in err, (bad, err)
    rc, _, err = run(app, "cloud_admin -v 3 -C x")
    assert rc == 2 and "-k, -o and -v need -c NAME" in err
    rc, _, err = run(app, "cloud_admin -v 3 -c nope -C x")
    assert rc == 1 and "no cloud named nope" in err
    assert app.cloud("burst")["max_workers"] == 3


def test_events_flags(app):
    rc, out, _ = run(app, "cloud_status -e -n 2")
    assert rc == 0 and out.splitlines()[0].split() == ["TIME", "WHO", "WHAT", "WHY"]
    assert len(out.split("\n\n")[0].splitlines()) == 3      # header + 2
    data = js(app, "cloud_status -e -n 3 --json")["data"]
    assert len(data) == 3 and all(set(e) == EVENT_KEYS for e in data)
    rc, _, err = run(app, "cloud_status -e -n 0")
    assert rc == 1 and "-n must be a whole number >= 1" in err
    rc, _, err = run(app, "cloud_status -e -n x")
    assert rc == 2 and "invalid int value" in err


def test_queue_workers_and_kill(app):
    """Demand, then workers, then drain one and remove the other without draining."""
    assert run(app, "cloud_status -m")[1].startswith("no workers")
    assert run(app, "cloud_status -q")[1].startswith("no idle jobs")
    app.submit(job(1, 600, 'requirements = TARGET.CloudName == "nowhere"'), directory="/home/submit/never")
    app.submit(job(2, 600))

    def demand():
        q = js(app, "cloud_status -q --json")["data"]
        return q if q["unschedulable_jobs"] == 1 and q["idle_jobs"] >= 1 else None
    q = app.wait("the demand report", demand, timeout=30)
    assert set(q) == {"updated_at", "idle_jobs", "unschedulable_jobs", "groups"}
    assert all(set(g) == GROUP_KEYS for g in q["groups"])
    rc, out, _ = run(app, "cloud_status -q")
    assert rc == 0 and out.splitlines()[2].split()[:6] == ["JOBS", "CPUS", "MEMORY", "DISK", "CLOUDS", "STATUS"]
    assert "1 idle job(s) are unschedulable" in out and "nowhere" in out

    def busy():
        ws = js(app, "cloud_status -m --json")["data"]
        return ws if len(ws) == 2 and all(w["state"] == "busy" for w in ws) else None
    workers = app.wait("two busy workers", busy, timeout=90)
    assert all(set(w) == WORKER_KEYS for w in workers)
    rc, out, _ = run(app, "cloud_status -m")
    assert out.splitlines()[0].split() == ["WORKER", "CLOUD", "STATE", "CONDOR", "NAME", "AGE", "IDLE", "FOR",
                                           "LAST", "CHANGE"]
    assert {w["id"] for w in workers} <= set(out.split())
    first, second = sorted(w["id"] for w in workers)

    rc, _, err = run(app, "cloud_admin -k -c local -n local-000000 -C x")
    assert rc == 1 and "no live worker local-000000 in cloud local (live: " in err
    rc, _, err = run(app, "cloud_admin -k -c local -C x")
    assert rc == 2 and "exactly one of -n ID or -a" in err
    rc, _, err = run(app, "cloud_admin -k -n x -C x")
    assert rc == 2 and "need -c NAME" in err
    rc, _, err = run(app, "cloud_admin -d local -a -C x")
    assert rc == 2 and "only go with -k or -o" in err
    rc, _, err = run(app, f"cloud_admin -o -c local -n {first} --now -C x")
    assert rc == 2 and "--now only goes with -k" in err

    # retire one after its current job (-o): its running job keeps it draining (peaceful), it is not killed
    data = js(app, f"cloud_admin -o -c local -n {first} --json -C 'kernel update'")
    assert data["workers"] == [first] and data["drain"] is True
    asked = [e for e in js(app, "cloud_status -e -n 20 --json")["data"] if e["worker_id"] == first and e["kind"] == "admin"][-1]
    assert asked["reason"] == 'retirement after the running jobs requested by cloud_admin: "kernel update"'
    def state(wid):
        return next((w["state"] for w in js(app, "cloud_status -m -a --json")["data"] if w["id"] == wid), None)
    app.wait("the drained worker to be draining", lambda: state(first) == "draining", timeout=30)
    # the other: removed at once
    rc, out, _ = run(app, f"cloud_admin -k -c local -n {second} --now -C x")
    assert rc == 0 and out.strip() == f"local: removal without draining requested for 1 worker(s): {second}"
    app.wait("the other worker to end", lambda: state(second) in ("retired", "failed"), timeout=30)
    assert state(first) == "draining"       # still finishing its job
    ended = js(app, "cloud_status -m -a --json")["data"]
    assert second in {w["id"] for w in ended} and second not in {w["id"] for w in js(app, "cloud_status -m --json")["data"]}

    # -a: everything left on the cloud, at once; then the queue is cleared so nothing relaunches
    app.sh("cloud_admin -d local -C x")
    data = js(app, "cloud_admin -k -c local -a --now --json -C x")
    assert first in data["workers"] and data["drain"] is False
    app.wait("no live workers", lambda: js(app, "cloud_status -m --json")["data"] == [], timeout=30)
    app.sh("condor_rm -all", user="submit")
    app.sh("cloud_admin -e local -C x")


def test_boot_and_job_times(app):
    """-b, -z and -g after the workers above, and one short job that completes."""
    app.submit(job(1, 1), directory="/home/submit/short")

    def done():
        clouds = js(app, "cloud_status -g --json")["data"]["clouds"]
        return clouds if clouds[0]["jobs"] >= 1 else None
    clouds = app.wait("the short job in the history", done, timeout=90)
    assert [c["cloud"] for c in clouds] == ["local", "burst"] and all(set(c) == JOB_TIME_KEYS for c in clouds)
    local = clouds[0]
    assert local["jobs"] == 1 and local["workers"] == 1 and set(local["job_seconds"]) == SUMMARY_KEYS
    assert 1 <= local["job_seconds"]["mean"] < 30, local
    rc, out, _ = run(app, "cloud_status -g")
    lines = out.splitlines()
    assert rc == 0 and lines[0].startswith("jobs that completed on the workers in the last 24 h")
    assert lines[2].split() == ["CLOUD", "JOBS", "WORKERS", "MEAN", "P50", "P90", "MAX", "HOURS"]
    assert lines[3].split()[:3] == ["local", "1", "1"] and lines[4].split()[:3] == ["burst", "0", "0"]

    data = js(app, "cloud_status -b --json")["data"]
    assert set(data) == {"hours", "since", "clouds"} and data["hours"] == 24
    local, burst = data["clouds"]
    assert set(local) == BOOT_KEYS and set(local["boot_seconds"]) == SUMMARY_KEYS
    # two workers for the long jobs above, one for the short job: all joined, none failed
    assert (local["launched"], local["joined"], local["failed"], local["success"]) == (3, 3, 0, 1.0), local
    assert 0 < local["boot_seconds"]["p50"] <= local["boot_seconds"]["p90"] < 120
    assert burst["launched"] == 0 and burst["success"] is None
    rc, out, _ = run(app, "cloud_status -b --hours 2")
    lines = out.splitlines()
    assert rc == 0 and lines[0].startswith("workers launched in the last 2 h")
    assert lines[2].split()[:8] == ["CLOUD", "LAUNCHED", "JOINED", "FAILED", "CANCELLED", "STARTING", "SUCCESS",
                                    "BOOT"]
    assert lines[3].split()[:7] == ["local", "3", "3", "0", "0", "0", "100%"]
    rc, out, _ = run(app, "cloud_status -z")
    assert rc == 0 and out.startswith("no boot failures in the last 24 h")
    assert js(app, "cloud_status -z --json")["data"]["failures"] == []
    rc, _, err = run(app, "cloud_status -b --hours 0")
    assert rc == 1 and "whole number of hours" in err


def test_bad_config_exits_4(app):
    app.sh("printf 'clouds:\\n  - {name: x, type: nope}\\n' > /tmp/bad.yaml")
    # the file is checked where it is taken: cloud_admin --reload, the usual one-line error, exit 4
    rc, _, err = run(app, "APPLIANCE_CONFIG=/tmp/bad.yaml cloud_admin --reload -C test")
    assert rc == 4 and "/tmp/bad.yaml: clouds[0].type" in err and len(err.strip().splitlines()) == 1
    # cloud_status shows the configuration the scheduler runs, not a file it has not taken
    assert run(app, "APPLIANCE_CONFIG=/tmp/bad.yaml cloud_status")[0] == 0


def test_scheduler_not_running_exits_3(app):
    app.sh("supervisorctl -c /etc/appliance/supervisord.conf stop scheduler")
    try:
        def stale():
            rc, out, err = run(app, "cloud_status")
            return (rc, out, err) if rc == 3 else None
        rc, out, err = app.wait("cloud_status to notice", stale, timeout=30)
        assert "scheduler: not running: last cycle" in out and "cloud_status: the scheduler is not running" in err
        assert js_rc(app, "cloud_status --json")["scheduler"]["running"] is False
        rc, out, err = run(app, "cloud_admin -e burst -C x")
        assert rc == 3 and out.strip() == "burst: enabled" and "saved, but the scheduler is not running" in err
        assert app.cloud("burst")["enabled"] is True        # saved all the same
    finally:
        app.sh("supervisorctl -c /etc/appliance/supervisord.conf start scheduler")
    app.wait_ready()


def js_rc(app, cmd: str) -> dict:
    rc, out, err = run(app, cmd)
    assert rc in (0, 3), err
    return json.loads(out)
