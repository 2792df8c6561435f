"""Upgrades keep state, downgrades are refused clearly (docs/reliability.md, "Upgrades").

The previous release (v0.1.0, commit 7035a17, a store without schema versions) runs on
named volumes for /var/lib/appliance, the spool and /home, builds up state (a disabled
cloud, a changed max_workers, queued jobs, a running docker worker), is stopped, and the
current image is started on the same volumes, as an operator upgrades. Then the other
way: what v0.1.0 does on the migrated DB, and how the current release refuses a DB
whose schema version is newer than it knows.
"""
from __future__ import annotations

import time

import pytest

from appliance.store import SCHEMA_VERSION

from .conftest import JOB_SCRIPT
from .reliability_support import account, assert_no_orphans
from .test_reliability import account_only, jobs_sub, transitions, worker_ads
from .upgrade_support import (
    DB,
    Releases,
    api_status,
    build_old_image,
    scheduler_state,
    schema_names,
    secrets_digest,
    sql,
    user_version,
)

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="session")
def old_image():
    return build_old_image()


@pytest.fixture
def releases(client, tmp_path):
    r = Releases(client, tmp_path)
    yield r
    r.cleanup()


def upgrade_config(worker_image: str) -> str:
    return f"""
scheduler: {{interval: 1, idle_timeout: 5, boot_timeout: 120, lost_timeout: 60, on_shutdown: keep}}
clouds:
  - {{name: docker, type: docker, image: "{worker_image}", priority: 0, max_workers: 3, worker: {{cpus: 1, memory: 512}}}}
  - {{name: local, type: local, priority: 1, max_workers: 2}}
"""


def job_states(app, cluster: int) -> list[str]:
    """'proc:status' for each job of the cluster still in the queue."""
    out = app.sh(f"condor_q {cluster} -allusers -af ProcId JobStatus")
    return [":".join(line.split()) for line in out.splitlines() if line.strip()]


def test_upgrade_from_v0_1_0_keeps_settings_queue_keys_and_workers(old_image, image, releases, network, volumes,
                                                                    client):
    timings = {}
    t0 = time.monotonic()
    # ---- the previous release builds up state
    old = releases.start(old_image, upgrade_config(old_image), network=network, volumes=volumes, docker_socket=True)
    name = old.name
    timings["old started"] = time.monotonic() - t0
    assert user_version(old) == 0
    old.sh("cloud_admin -d local && cloud_admin -v 1 -c docker")
    running = old.submit(jobs_sub([50], extra='+TargetClouds = "docker"'), {"job.sh": JOB_SCRIPT},
                         directory="/home/submit/running")
    worker = old.wait("a busy docker worker", lambda: (lambda ws: len(ws) == 1 and ws[0]["state"] == "busy" and ws[0])(
        old.status("-m")["data"]), timeout=90)
    # work that cannot run yet: it asks for the disabled cloud
    queued = old.submit(jobs_sub([2, 2], extra='+TargetClouds = "local"'), {"job.sh": JOB_SCRIPT},
                        directory="/home/submit/queued")
    old.wait_cycles(2)
    assert job_states(old, queued) == ["0:1", "1:1"]
    secrets = secrets_digest(old)
    password = old.sh("cat /var/lib/appliance/admin-password").strip()
    pool = old.pool_id()
    assert api_status(old, password) == 200
    timings["state built"] = time.monotonic() - t0

    # ---- docker stop, docker rm, docker run of the new image on the same volumes
    code, took = releases.stop_and_remove(old)
    assert code == 0 and took < 10, (code, took)
    kept = client.containers.list(filters={"label": f"appliance.pool={pool}"})
    assert [c.labels["appliance.worker"] for c in kept] == [worker["id"]]      # on_shutdown: keep
    new = releases.start(image, upgrade_config(image), name=name, network=network, volumes=volumes,
                         docker_socket=True)
    timings["new started"] = time.monotonic() - t0

    # the store was migrated, in place
    assert user_version(new) == SCHEMA_VERSION
    assert {"transition_counts", "events_time", "workers_state_since"} <= schema_names(new)
    counts = dict(((c, s), n) for c, s, n in sql(new, "SELECT cloud, to_state, n FROM transition_counts"))
    assert counts.get(("docker", "requested")) == 1 and counts.get(("docker", "busy")) == 1, counts
    # secrets, pool id and admin password are the old ones
    assert secrets_digest(new) == secrets and new.pool_id() == pool
    assert api_status(new, password) == 200 and api_status(new, "not-the-password") == 401
    # the runtime settings survive
    clouds = {c["name"]: c for c in new.status()["data"]}
    assert clouds["local"]["enabled"] is False and clouds["docker"]["enabled"] is True, clouds
    assert clouds["docker"]["max_workers"] == 1 and clouds["local"]["max_workers"] == 2, clouds
    # the queue survives: the queued jobs wait, the running one is still there
    assert job_states(new, queued) == ["0:1", "1:1"]
    assert len(job_states(new, running)) == 1
    # the worker the old release left is adopted: the same row, the same container, back in the pool
    new.wait("the old release's worker to rejoin", lambda: worker["id"] in worker_ads(new), timeout=90)
    assert [w["id"] for w in new.status("-m")["data"]] == [worker["id"]]
    timings["worker rejoined"] = time.monotonic() - t0
    new.wait("the running job to complete", lambda: len(account_only(new, running)) == 1, timeout=120)
    done = account(new, "/home/submit/running/job.log", 1, [running])
    started_twice = [j for j, c in done["events"].items() if c["001"] > 1]

    # the queued jobs run once their cloud is enabled
    new.sh("cloud_admin -e local -C test")
    new.wait("the queued jobs to complete", lambda: len(account_only(new, queued)) == 2, timeout=120)
    assert "CloudName = \"local\"" in new.sh("cat /home/submit/queued/out.*")
    assert not account(new, "/home/submit/queued/job.log", 2, [queued])["lost"]
    timings["jobs done"] = time.monotonic() - t0

    # every worker ends cleanly: the adopted one retired after its job, no orphan anywhere
    assert_no_orphans(new, client)
    moves = transitions(new)
    ends = {w: to for w, _, to, _ in moves if to in ("retired", "failed")}
    assert ends.get(worker["id"]) == "retired", moves
    assert all(to == "retired" for to in ends.values()), moves
    timings["clean"] = time.monotonic() - t0

    # ---- the real downgrade: v0.1.0 on the migrated DB. It knows no schema versions, so it
    # opens the file, recreates the one index version 3 dropped, and otherwise works on it.
    new.sh("cloud_admin -d local -C test")
    code, _ = releases.stop_and_remove(new)
    assert code == 0
    old = releases.start(old_image, upgrade_config(old_image), name=name, network=network, volumes=volumes,
                         docker_socket=True)
    assert user_version(old) == SCHEMA_VERSION                  # untouched by the old code
    assert "workers_state" in schema_names(old)                # recreated by its CREATE INDEX IF NOT EXISTS
    clouds = {c["name"]: c for c in old.status()["data"]}
    assert clouds["local"]["enabled"] is False and clouds["docker"]["max_workers"] == 1, clouds
    old.sh("cloud_admin -e local")
    third = old.submit(jobs_sub([1], extra='+TargetClouds = "local"'), {"job.sh": JOB_SCRIPT},
                       directory="/home/submit/third")
    old.wait("a job to complete on v0.1.0", lambda: len(account_only(old, third)) == 1, timeout=90)
    old.wait("its worker to retire", lambda: old.status("-m")["data"] == [], timeout=90)
    counted = sum(n for c, s, n in sql(old, "SELECT cloud, to_state, n FROM transition_counts") if c == "local")
    code, _ = releases.stop_and_remove(old)
    assert code == 0
    timings["downgraded"] = time.monotonic() - t0

    # ---- and up again: nothing to migrate; the transitions v0.1.0 made are in the events
    # but not in the counters (it did not know them)
    new = releases.start(image, upgrade_config(image), name=name, network=network, volumes=volumes,
                         docker_socket=True)
    assert user_version(new) == SCHEMA_VERSION
    events = {(c, s): n for c, s, n in sql(new, "SELECT cloud, to_state, COUNT(*) FROM events WHERE "
                                               "kind = 'worker' AND to_state IS NOT NULL GROUP BY cloud, to_state")}
    recount = sum(n for c, s, n in sql(new, "SELECT cloud, to_state, n FROM transition_counts") if c == "local")
    assert recount == counted < sum(n for (c, _), n in events.items() if c == "local"), (counted, events)
    third_done = account_only(new, third)
    assert len(third_done) == 1
    timings["up again"] = time.monotonic() - t0
    print(f"upgrade: timings {({k: round(v) for k, v in timings.items()})}, running job started twice: "
          f"{started_twice}")


CONFIG = """
scheduler: {interval: 1, idle_timeout: 5}
clouds:
  - {name: local, type: local, priority: 0, max_workers: 1}
"""
SUPERVISORCTL = "supervisorctl -c /etc/appliance/supervisord.conf"


def refused_start(app, message: str) -> str:
    """Start the scheduler on the file as it is now; wait for `message` in the log. Returns the
    log since that start. The file must not change, whatever supervisord then does (retry or not)."""
    before = app.sh(f"sha256sum {DB}")
    mark = len(app.logs())
    app.sh(f"{SUPERVISORCTL} start scheduler", check=False)     # it exits at once: a failed start
    app.wait(f"the scheduler to refuse the file ({message})", lambda: message in app.logs()[mark:], timeout=30)
    rc, out = app.rc("cloud_status")
    assert rc == 4 and message in out and "Traceback" not in out, (rc, out)
    assert app.sh(f"sha256sum {DB}") == before
    return app.logs()[mark:]


def test_a_newer_or_unusable_state_db_is_refused_with_a_clear_message_and_left_alone(image, releases):
    app = releases.start(image, CONFIG)

    # a downgrade: the DB says a schema version this release does not know
    app.sh(f"{SUPERVISORCTL} stop scheduler")
    newer = SCHEMA_VERSION + 1
    sql(app, f"PRAGMA user_version = {newer}", write=True)
    log = refused_start(app, f"database schema version {newer} is newer than this release's version {SCHEMA_VERSION}")
    assert "the scheduler does not start" in log and "Traceback" not in log, log
    assert user_version(app) == newer
    newer_attempts = log.count("is newer than this release")

    # a file that is not SQLite at all (a disk fault, a wrong volume) is refused the same way
    app.sh(f"{SUPERVISORCTL} stop scheduler", check=False)
    app.sh(f"head -c 8192 /dev/urandom > {DB}.junk && mv {DB}.junk {DB} && rm -f {DB}-wal {DB}-shm")
    log = refused_start(app, "it is not an SQLite database")
    assert "move it aside" in log and "Traceback" not in log, log
    junk = app.sh(f"sha256sum < {DB}")

    # and what the message says to do works: moved aside, the scheduler starts on an empty state
    app.sh(f"{SUPERVISORCTL} stop scheduler", check=False)
    app.sh(f"mv {DB} {DB}.broken")
    app.sh(f"{SUPERVISORCTL} start scheduler")
    app.wait_ready()
    assert user_version(app) == SCHEMA_VERSION and app.sh(f"sha256sum < {DB}.broken") == junk
    print(f"refusal: the newer DB was tried {newer_attempts} time(s) before the next step; "
          f"scheduler now {scheduler_state(app)}")
