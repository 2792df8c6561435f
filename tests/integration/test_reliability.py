"""Fault injection on the real image: crashes, restarts, collector restarts,
broken images, churn, bad input and secrets. docs/reliability.md lists what
each scenario guarantees.

Every job here writes a job event log; evictions (004), shadow exceptions
(007), aborts, holds and second starts are counted from it, and the totals
are printed at the end of the run ("reliability numbers").
"""
from __future__ import annotations

import subprocess
import time

import docker
import pytest

from .conftest import IMAGE, JOB_SCRIPT, PREFIX, docker_build, labelled
from .reliability_support import (
    ENV,
    account,
    assert_no_orphans,
    assert_no_secret_leaks,
    harvest_secrets,
    outputs_to_search,
)

pytestmark = pytest.mark.timeout(600)


def jobs_sub(lengths, extra: str = "") -> str:
    """One cluster, one job per length (seconds), all logging to job.log."""
    args = "\n".join(str(s) for s in lengths)
    return ("executable = job.sh\noutput = out.$(Cluster).$(Process)\nerror = err.$(Cluster).$(Process)\n"
            "log = job.log\nrequest_cpus = 1\nrequest_memory = 128\nrequest_disk = 10MB\n"
            f"{extra}\nqueue arguments from (\n{args}\n)")


def scheduler_pid(app) -> int:
    out = app.sh("supervisorctl -c /etc/appliance/supervisord.conf pid scheduler", check=False).strip()
    return int(out) if out.isdigit() and out != "0" else 0


def kill9_scheduler(app) -> int:
    pid = scheduler_pid(app)
    assert pid, "no scheduler running"
    app.sh(f"kill -9 {pid}")
    new = app.wait("supervisord to restart the scheduler",
                   lambda: (p := scheduler_pid(app)) and p != pid and p, timeout=30, every=0.25)
    return new


def transitions(app) -> list[tuple[str, str, str, str]]:
    return [(e["worker_id"], e["from_state"] or "", e["to_state"], e["reason"])
            for e in app.events() if e["kind"] == "worker" and e["to_state"]]


def worker_ads(app) -> list[str]:
    return app.sh("condor_status -constraint 'ApplianceWorker =?= true' -af WorkerId", check=False).split()


# ---------------------------------------------------------------- 1 + 3 + 7

CRASH_CONFIG = f"""
scheduler: {{interval: 1, idle_timeout: 5, boot_timeout: 120, lost_timeout: 120}}
clouds:
  - {{name: local, type: local, priority: 0, max_workers: 2, worker: {{cpus: 1, memory: 512}}}}
  - {{name: docker, type: docker, image: "{IMAGE}", priority: 1, max_workers: 2, worker: {{cpus: 1, memory: 512}}}}
"""


def test_scheduler_kill9_and_collector_restarts_lose_no_job_and_leak_no_worker(start_appliance, network, client):
    app = start_appliance(CRASH_CONFIG, network=network, docker_socket=True, env=ENV)
    cluster = app.submit(jobs_sub([30] * 6), {"job.sh": JOB_SCRIPT})

    # 1a. kill -9 the scheduler while its first workers are booting
    app.wait("workers booting", lambda: any(w["state"] in ("requested", "booting")
                                            for w in app.status("-m")["data"]), timeout=30, every=0.2)
    kill9_scheduler(app)
    # 1b. and again once they are busy
    app.wait("every worker joined, 3 or more busy", lambda: (lambda st: "booting" not in st and "requested" not in st
                                                              and st.count("busy") >= 3)(
        [w["state"] for w in app.status("-m")["data"]]), timeout=120)
    busy = [w["id"] for w in app.status("-m")["data"] if w["state"] == "busy"]
    secrets = harvest_secrets(app, client)
    kill9_scheduler(app)
    app.wait_ready()

    # 3a. condor_restart -collector: the workers vanish from it for a while, and nothing is declared dead
    app.sh("condor_restart -collector")
    app.wait("the collector to forget the workers", lambda: len(worker_ads(app)) < len(busy), timeout=30, every=0.5)
    app.wait("the workers to advertise again", lambda: back_or_drained(app, busy), timeout=60)
    # 3b. kill -9 the collector itself; the master restarts it
    pid = app.sh("pgrep -x condor_collecto || pgrep -x condor_collector").split()[0]
    app.sh(f"kill -9 {pid}")
    app.wait("a new collector", lambda: app.sh("pgrep -x condor_collecto || pgrep -x condor_collector",
                                                check=False).split()[:1] not in ([], [pid]), timeout=60)
    app.wait("the busy workers to advertise again", lambda: back_or_drained(app, busy), timeout=60)

    app.wait("all 6 jobs to complete", lambda: len(account_only(app, cluster)) == 6, timeout=240)
    numbers = account(app, "/home/submit/job/job.log", 6, [cluster])
    assert len(numbers["done"]) == 6 and not numbers["lost"], numbers

    moves = transitions(app)
    requested = [w for w, _, to, _ in moves if to == "requested"]
    assert len(requested) == len(set(requested)) <= 4, moves     # nothing launched twice, within max_workers
    assert not [m for m in moves if m[2] == "failed"], moves       # nobody declared dead
    adopted = [m for m in moves if m[3].startswith("adopted")]
    assert app.logs().count("scheduler started") == 3

    # 7. while the pool scales down: a worker's token cannot reconfigure or command anything
    worker_token_is_refused_for_everything_but_advertising(app)

    assert_no_orphans(app, client)
    assert_no_secret_leaks(secrets, outputs_to_search(app, client))
    print(f"crash scenario: {len(adopted)} launch(es) adopted after a kill -9, moves: {len(moves)}")


def back_or_drained(app, workers) -> bool:
    """Each worker is in the collector again, or has since finished its jobs and
    drained away (30 s jobs can end before a restarted collector hears from it)."""
    ads = set(worker_ads(app))
    retired = {w for w, _, to, _ in transitions(app) if to == "retired"}
    return all(w in ads or w in retired for w in workers)


def account_only(app, cluster) -> list[str]:
    out = app.sh(f"condor_history -constraint 'ClusterId == {cluster}' -af ProcId JobStatus ExitCode")
    return [l for l in out.splitlines() if l.split()[1:] == ["4", "0"]]


def worker_token_is_refused_for_everything_but_advertising(app) -> None:
    """A genuine worker token (same identity and authorizations the scheduler
    gives workers) used against the central manager: READ works, nothing else."""
    app.sh("mkdir -p /tmp/wt && chmod 700 /tmp/wt && condor_token_create -identity worker-local-abcdef@appliance "
           "-authz ADVERTISE_STARTD -authz ADVERTISE_MASTER -authz READ -key POOL > /tmp/wt/tok && chmod 600 /tmp/wt/tok")
    as_worker = "_CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS=IDTOKENS _CONDOR_SEC_TOKEN_DIRECTORY=/tmp/wt "
    for daemon in ("collector", "schedd", "master"):
        table = app.sh(f"{as_worker} condor_ping -type {daemon} -table READ WRITE ADMINISTRATOR CONFIG DAEMON "
                       "NEGOTIATOR", check=False)
        decisions = {l.split()[0]: l.split()[4] for l in table.splitlines()[1:] if len(l.split()) > 4}
        assert decisions.get("READ") == "ALLOW", (daemon, table)
        for perm in ("WRITE", "ADMINISTRATOR", "CONFIG", "DAEMON", "NEGOTIATOR"):
            assert decisions.get(perm) == "FAIL", (daemon, perm, table)
    for cmd in ("condor_reconfig -collector", "condor_reconfig -schedd", "condor_config_val -collector -set 'X = 1'",
                "condor_config_val -schedd -rset 'X = 1'", "condor_off -schedd", "condor_restart -master",
                "condor_drain -name nope"):
        rc, out = app.rc(as_worker + cmd)
        assert rc != 0, (cmd, out)
    # the pool is unharmed: the schedd and collector still answer
    app.sh("condor_q -allusers -totals && condor_status -collector -af Name")


# ---------------------------------------------------------------- 2 + 8

RESTART_CONFIG = f"""
scheduler: {{interval: 1, idle_timeout: 5, boot_timeout: 120, lost_timeout: 60, on_shutdown: keep}}
clouds:
  - {{name: docker, type: docker, image: "{IMAGE}", priority: 0, max_workers: 3, worker: {{cpus: 1, memory: 512}}}}
  - {{name: local, type: local, priority: 1, max_workers: 1}}
"""


@pytest.mark.slow
def test_restart_and_replacement_keep_queue_state_key_and_workers(start_appliance, network, volumes, client):
    app = start_appliance(RESTART_CONFIG, network=network, volumes=volumes, docker_socket=True, env=ENV)
    name = app.name
    app.sh("cloud_admin -d local -C test && cloud_admin -v 2 -c docker -C test")
    # the first two run across the restart (40 s is ample); the two queued behind them need no length
    cluster = app.submit(jobs_sub([40, 40, 10, 10]), {"job.sh": JOB_SCRIPT})
    app.wait("2 busy docker workers", lambda: [w["state"] for w in app.status("-m")["data"]] == ["busy"] * 2,
             timeout=120)
    secrets = harvest_secrets(app, client)
    key = app.sh("sha256sum /var/lib/appliance/keys/POOL")
    pool = app.pool_id()
    workers = sorted(w["id"] for w in app.status("-m")["data"])
    texts = {}

    # 8. docker stop with its default 10 s grace: clean exit, the queue kept, docker workers kept (on_shutdown: keep)
    started = time.monotonic()
    subprocess.run(["docker", "stop", name], check=True, capture_output=True)
    took = time.monotonic() - started
    app.c.reload()
    assert app.c.attrs["State"]["ExitCode"] == 0 and took < 10, (took, app.c.attrs["State"])
    kept = [c for c in labelled(client, pool) if c.status == "running"]
    assert sorted(c.labels["appliance.worker"] for c in kept) == workers
    texts["log before restart"] = app.logs()

    # 2a. docker start: same rows, same workers; their jobs reconnect and finish; the queued ones run after them
    app.c.start()
    app.wait_ready()
    app.wait("the kept workers to rejoin", lambda: sorted(worker_ads(app)) == workers, timeout=90)
    assert sorted(w["id"] for w in app.status("-m")["data"]) == workers
    app.wait("all 4 jobs to complete", lambda: len(account_only(app, cluster)) == 4, timeout=240)
    numbers = account(app, "/home/submit/job/job.log", 4, [cluster])
    assert len(numbers["done"]) == 4, numbers
    assert not [j for j, c in numbers["events"].items() if c["001"] > 1], numbers   # no job ran twice
    # queue work with no worker to take it (docker disabled, its workers drained away), so the
    # replacement below finds it queued: the state a replacement must keep
    app.sh("cloud_admin -d docker -C test")
    app.wait("the workers to drain away", lambda: app.status("-m")["data"] == [], timeout=120)
    second = app.submit(jobs_sub([5] * 2), {"job.sh": JOB_SCRIPT}, directory="/home/submit/second")

    # 2b. docker rm + docker run with the same volumes: a new container
    subprocess.run(["docker", "stop", name], check=True, capture_output=True)
    texts["log before replacement"] = app.logs()
    app.c.remove(v=False)
    app = start_appliance(RESTART_CONFIG, name=name, network=network, volumes=volumes, docker_socket=True, env=ENV)
    assert app.pool_id() == pool and app.sh("sha256sum /var/lib/appliance/keys/POOL") == key
    clouds = {c["name"]: c for c in app.status()["data"]}
    assert clouds["local"]["enabled"] is False and clouds["docker"]["enabled"] is False, clouds
    assert clouds["docker"]["max_workers"] == 2, clouds
    assert app.sh(f"condor_q {second} -allusers -af ProcId JobStatus").split() == ["0", "1", "1", "1"], "queue lost"
    assert len(account_only(app, cluster)) == 4          # and the history of the first jobs

    app.sh("cloud_admin -e docker -C test")
    app.wait("the queued jobs to complete", lambda: len(account_only(app, second)) == 2, timeout=180)
    numbers = account(app, "/home/submit/second/job.log", 2, [second])
    assert len(numbers["done"]) == 2, numbers
    app.wait("no live worker left", lambda: app.status("-m")["data"] == [], timeout=120)
    moves = transitions(app)
    for wid in {m[0] for m in moves}:
        assert [m for m in moves if m[0] == wid and m[2] in ("failed", "retired")], (wid, moves)

    assert_no_orphans(app, client)
    assert_no_secret_leaks(secrets, {**outputs_to_search(app, client), **texts})
    print(f"restart scenario: workers {workers}, moves {len(moves)}")


# ---------------------------------------------------------------- 4 + 6

BROKEN = f"{PREFIX}-broken:1"
BLACKHOLE = f"{PREFIX}-blackhole:1"


REMOVE_ON_STOP_CONFIG = f"""
scheduler: {{interval: 1, idle_timeout: 5, boot_timeout: 120, on_shutdown: remove}}
clouds:
  - {{name: docker, type: docker, image: "{IMAGE}", max_workers: 1, worker: {{cpus: 1, memory: 512}}}}
"""


def test_a_job_whose_worker_was_removed_by_a_restart_runs_again_at_once(start_appliance, network, volumes,
                                                                      client):
    """compose's on_shutdown: remove takes the busy worker down with the appliance. Before
    the fix its job stayed "running" after the restart for the whole job lease (40 min),
    its shadow waiting for a worker that could not come back; now it is put back in the
    queue and runs again on a new worker."""
    app = start_appliance(REMOVE_ON_STOP_CONFIG, network=network, volumes=volumes, docker_socket=True, env=ENV)
    cluster = app.submit(jobs_sub([15]), {"job.sh": JOB_SCRIPT})
    app.wait("the job to run on a docker worker", lambda: app.sh(
        f"condor_q {cluster} -allusers -af JobStatus").split() == ["2"], timeout=120)
    (first,) = [w["id"] for w in app.status("-m")["data"]]
    pool = app.pool_id()
    # the real schedd finds the job by its worker's name alone (as when it starts running on
    # the removed worker's claim after the removal): a constraint this schedd reads otherwise
    # than the classad library did let the job wait out its lease in CI
    found = app.sh("python3 -c 'import htcondor; from appliance.condor import requeue_constraint; "
                   f"print(len(htcondor.Schedd().query(requeue_constraint(\"{first}\", 0), [\"ProcId\"])))'")
    assert found.strip().splitlines()[-1:] == ["1"], found

    subprocess.run(["docker", "restart", app.name], check=True, capture_output=True)
    app.wait_ready()
    assert not [c for c in labelled(client, pool) if c.labels.get("appliance.worker") == first], \
        "the worker should have been removed at stop (on_shutdown: remove)"
    # failed if the scheduler had seen it busy, else retired: its last cycle may predate the job's start
    removed = [e for e in app.events() if e.get("worker_id") == first and e.get("to_state") in ("failed", "retired")]
    assert removed and "stopping" in removed[-1]["reason"], removed
    # well inside the 40 min lease: a second start on a new worker, then done
    try:
        app.wait("the stranded job to complete after the restart", lambda: account_only(app, cluster), timeout=180)
    except Exception as err:      # what the queue and the scheduler's retry list say of the job
        job = app.sh(f"condor_q {cluster} -allusers -af JobStatus EnteredCurrentStatus MachineAttrWorkerId0 "
                     f"LastJobStatus NumShadowStarts RemoteHost LastRemoteHost HoldReason", check=False)
        stranded = app.sh("python3 -c 'from appliance.store import Store; print(Store().get(\"stranded_jobs\"))'",
                          check=False)
        raise AssertionError(f"{err}\n--- the job: {job}\n--- stranded: {stranded}") from None
    assert any("put back in the queue" in e["reason"] for e in app.events()), app.events()[-20:]
    app.wait("no live worker left", lambda: app.status("-m")["data"] == [], timeout=120)
    assert_no_orphans(app, client)


@pytest.fixture
def bad_images(client, image):
    for tag, entry in ((BROKEN, '["false"]'), (BLACKHOLE, '["sh", "-c", "sleep 3600", "--"]')):
        docker_build(tag, f"FROM {image}\nENTRYPOINT {entry}\n")
    yield
    for tag in (BROKEN, BLACKHOLE):
        try:
            client.images.remove(tag, force=True)
        except docker.errors.APIError:
            pass


BAD_CLOUDS_CONFIG = f"""
scheduler: {{interval: 1, idle_timeout: 3, boot_timeout: 5, backoff_base: 1}}
clouds:
  - {{name: broken, type: docker, image: "{BROKEN}", priority: 0, max_workers: 1}}
  - {{name: blackhole, type: docker, image: "{BLACKHOLE}", priority: 1, max_workers: 1}}
  - {{name: local, type: local, priority: 10, max_workers: 1}}
"""


def test_broken_image_and_black_hole_back_off_then_stop_while_local_carries_the_demand(
        start_appliance, network, client, bad_images):
    app = start_appliance(BAD_CLOUDS_CONFIG, network=network, docker_socket=True, env=ENV)
    # 60 s of work for one local worker: demand lasts long enough for both breakers to open
    cluster = app.submit(jobs_sub([15] * 4), {"job.sh": JOB_SCRIPT})
    # an absurd request: no worker anywhere could run it; it must never launch anything
    absurd = app.submit(jobs_sub([1], extra="request_memory = 10000000\nrequest_cpus = 512"), {"job.sh": JOB_SCRIPT},
                        directory="/home/submit/absurd")

    def stopped(name):
        return next(c for c in app.status()["data"] if c["name"] == name)["health"] == "stopped"
    app.wait("both bad clouds to be stopped by their breaker", lambda: stopped("broken") and stopped("blackhole"),
             timeout=90)
    app.wait("the 4 jobs to complete on local", lambda: len(account_only(app, cluster)) == 4, timeout=120)
    outs = app.sh("cat /home/submit/job/out.*")
    assert outs.count('CloudName = "local"') == 4, outs

    clouds = {c["name"]: c for c in app.status()["data"]}
    events = app.events()
    for name, why in (("broken", "vanished: its container is exited"),
                      ("blackhole", "did not join the pool within boot_timeout")):
        c = clouds[name]
        assert c["failures"] >= 5 and why in c["last_error"], c
        delays = [int(e["reason"].split()[2].rstrip("s:")) for e in events
                  if e["cloud"] == name and e["reason"].startswith("backing off")]
        assert len(delays) >= 3 and delays == sorted(delays) and delays[-1] > delays[0], (name, delays)
        assert any(e["cloud"] == name and e["reason"].startswith("breaker open after") for e in events)
    launched = lambda name: [e for e in app.events() if e["to_state"] == "requested" and e["cloud"] == name]  # noqa
    before = {n: len(launched(n)) for n in ("broken", "blackhole")}
    assert all(5 <= n <= 6 for n in before.values()), before
    text = app.sh("cloud_status")
    assert "stopped (re-enable to retry)" in text and "vanished" in text

    # the absurd job: unschedulable, with the reason, and never the cause of a launch
    q = app.status("-q")["data"]
    assert q["unschedulable_jobs"] == 1 and "10000000 MB" in q["groups"][0]["reason"], q
    assert not [e for e in app.events() if e["to_state"] == "requested" and "10000000" in e["reason"]]

    # 6. bad operator input against the live appliance: a clear error each time, and nothing changes
    snapshot = lambda: ([(c["name"], c["enabled"], c["max_workers"], c["health"], c["failures"])  # noqa
                         for c in app.status()["data"]],
                        [e for e in app.events() if e["kind"] in ("cloud", "admin")])
    before_state = snapshot()
    for cmd, code in (("cloud_admin -e nope -C t", 1), ("cloud_admin -v -3 -c local -C t", 1), ("cloud_admin -v abc -c local -C t", 1),
                      ("cloud_admin -v 99999999999 -c local -C t", 1), ("cloud_admin -v ² -c local -C t", 1),
                      ("cloud_admin -k -c local -n local-zzzzzz -C t", 1), ("cloud_admin -k -c local -C t", 2),
                      ("cloud_admin -e", 2), ("cloud_admin -e $'\\e[2Jx' -C t", 1), ("cloud_status -c nope", 1),
                      ("cloud_status -e -n 0", 1), ("cloud_status -n x", 2), ("cloud_admin --bogus", 2)):
        rc, out = app.rc(cmd)
        assert rc == code and out.strip() and "Traceback" not in out, (cmd, rc, out)
        assert "\x1b" not in out, (cmd, out)
    app.wait_cycles(3)   # a few more cycles: still nothing launched, nothing changed
    assert snapshot() == before_state
    assert {n: len(launched(n)) for n in before} == before

    # an operator re-enables the broken cloud: the breaker resets
    app.sh("cloud_admin -e broken -C test")
    c = next(c for c in app.status()["data"] if c["name"] == "broken")
    assert c["health"] == "ok" and c["failures"] == 0, c

    app.sh("cloud_admin -d broken -C test && cloud_admin -d blackhole -C test")
    app.sh(f"condor_rm {absurd}", user="submit")
    numbers = account(app, "/home/submit/job/job.log", 4, [cluster])
    assert not numbers["lost"], numbers
    assert_no_orphans(app, client)


# ---------------------------------------------------------------- 5

CHURN_CONFIG = f"""
scheduler: {{interval: 1, idle_timeout: 3, boot_timeout: 120}}
clouds:
  - {{name: local, type: local, priority: 0, max_workers: 3, worker: {{cpus: 1, memory: 512}}}}
  - {{name: docker, type: docker, image: "{IMAGE}", priority: 1, max_workers: 2, worker: {{cpus: 1, memory: 512}}}}
"""
CHURN_LENGTHS = [1, 7, 12, 3, 9, 2, 11, 5, 4, 10]    # seconds; each wave has all of them


@pytest.mark.slow
def test_churn_with_a_short_idle_timeout_never_evicts_a_job(start_appliance, network, client):
    """30 jobs of 1-12 s in three waves, idle_timeout 3 s: workers drain and
    relaunch between and during the waves, and no running job is ever cut."""
    app = start_appliance(CHURN_CONFIG, network=network, docker_socket=True, env=ENV)
    clusters = []
    for _wave in range(3):
        clusters.append(app.submit(jobs_sub(CHURN_LENGTHS), {"job.sh": JOB_SCRIPT}))
        # a sleep on purpose: the waves are spaced in time (longer than idle_timeout), so that
        # workers go idle, drain and relaunch between and during them
        time.sleep(9)
    app.wait("all 30 jobs to complete", lambda: len(account_only_many(app, clusters)) == 30, timeout=300)
    numbers = account(app, "/home/submit/job/job.log", 30, clusters)
    assert len(numbers["done"]) == 30 and not numbers["lost"], numbers["lost"]
    moves = transitions(app)
    drained = [m for m in moves if m[2] == "draining"]
    assert len(drained) >= 2, moves          # there was real scale-down during the run
    assert_no_orphans(app, client)
    print(f"churn: {len([m for m in moves if m[2] == 'requested'])} workers launched, {len(drained)} drained")


def account_only_many(app, clusters) -> list[str]:
    constraint = " || ".join(f"ClusterId == {c}" for c in clusters)
    out = app.sh(f"condor_history -constraint '{constraint}' -af ProcId JobStatus ExitCode")
    return [l for l in out.splitlines() if l.split()[1:] == ["4", "0"]]
