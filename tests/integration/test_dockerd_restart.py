"""The Docker engine itself restarted while docker workers run jobs (live-restore
off, Docker's default): every container on the engine stops, the appliance too.

The engine is a Docker-in-Docker node's (dockerd_support.Node) that hosts both
the appliance and its workers, as one host's engine does. Two ways it happens:

* `compose`: a restart (SIGTERM, then start: what `systemctl restart docker` and a
  package upgrade do), the appliance run as compose.yaml runs it
  (`restart: always`, `stop_grace_period: 30s`, `on_shutdown: remove`).
* `by-hand`: a crash (SIGKILL, then start), the appliance run as
  docs/clouds/docker.md's `docker run` (no restart policy, `on_shutdown: keep`):
  the engine stops what was still running when it comes back, and the appliance
  stays stopped until the operator starts it.

Either way, what is checked: the worker containers (restart policy `no`) never run
again; the appliance, once back, judges each failed (`vanished: its container is
exited`), removes its container and volumes, and their jobs run again on new
workers; every job completes once (005 once; the two that were running start a
second time, the rest once) with one whole output; queued and new demand is served;
nothing is left on the engine. docs/reliability.md (scenario 17) describes it.
"""
from __future__ import annotations

import time
import uuid

import docker.errors
import pytest

from tests.waiting import wait_until

from .conftest import IMAGE, PREFIX, Appliance, remove_labelled
from .dockerd_support import ENGINE_DOWN, Held, Node
from .faults_support import FAULT_JOB, check_outputs, completed, fault_jobs_sub, requested, worker_containers
from .reliability_support import ABORTED, ENV, EXECUTE, HELD, TERMINATED, account, assert_no_orphans, job_events

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

# two run when the engine restarts, two wait (max_workers 2); the engine stops within seconds of
# both running, well inside the long jobs' 20 s, and each runs its 20 s again on a new worker
LENGTHS = [20, 20, 5, 5]
JOBS, FRESH = "/home/submit/job", "/home/submit/fresh"

VARIANTS = {
    "compose": dict(signal="TERM", restart="always", on_shutdown="remove"),
    "by-hand": dict(signal="KILL", restart="no", on_shutdown="keep"),
}


def config(on_shutdown: str) -> str:
    return f"""
scheduler: {{interval: 1, idle_timeout: 5, boot_timeout: 120, lost_timeout: 120, on_shutdown: {on_shutdown}}}
clouds:
  - {{name: docker, type: docker, image: "{IMAGE}", max_workers: 2, worker: {{cpus: 1, memory: 512}}}}
"""


@pytest.fixture(scope="module")
def node(client, image):
    """One DinD node for the module, with the appliance image loaded into its engine."""
    n = Node(client)
    try:
        n.start_dockerd()
        n.load(image)
        yield n
    finally:
        n.remove()


@pytest.fixture
def inner_appliance(node):
    """Start an appliance on the node's engine as a user would (named volumes for state,
    queue and /home, the engine's socket, its own network); removed with all it made."""
    made = []

    def start(cfg: str, restart: str) -> Appliance:
        tag = uuid.uuid4().hex[:8]
        name = f"{PREFIX}-{tag}"
        net = node.engine.networks.create(f"{PREFIX}-net-{tag}", driver="bridge")
        volumes = {f"{PREFIX}-{part}-{tag}": path for part, path in
                   (("state", "/var/lib/appliance"), ("spool", "/var/lib/condor/spool"), ("home", "/home"))}
        with open(f"{node.dir}/{name}.yaml", "w") as f:
            f.write(cfg)
        made.append((name, net.name, list(volumes)))
        api = node.engine.api        # the low-level API: containers.run has no stop_timeout
        binds = {"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
                 f"/ext/{name}.yaml": {"bind": "/etc/appliance/appliance.yaml", "mode": "ro"},
                 **{v: {"bind": p, "mode": "rw"} for v, p in volumes.items()}}
        api.start(api.create_container(
            IMAGE, name=name, hostname=name, environment=ENV, detach=True, stop_timeout=30,
            host_config=api.create_host_config(binds=binds, network_mode=net.name,
                                               restart_policy={"Name": restart})))
        app = Appliance(Held(node.engine.containers.get(name)))
        app.wait_ready(timeout=90)
        return app

    yield start
    node.ensure_dockerd()      # a test that failed midway may have left it down
    for name, net, volumes in made:
        try:
            c = node.engine.containers.get(name)
            rc, out = c.exec_run(["cat", "/var/lib/appliance/pool-id"]) if c.status == "running" else (1, b"")
            c.remove(force=True, v=True)
            if rc == 0:
                remove_labelled(node.engine, out.decode().strip())
        except docker.errors.NotFound:
            pass
        for c in node.engine.containers.list(all=True, filters={"label": "appliance.pool"}):
            c.remove(force=True, v=True)       # whatever a failed test left of its workers
        for v in volumes:
            try:
                node.engine.volumes.get(v).remove(force=True)
            except docker.errors.NotFound:
                pass
        node.engine.networks.get(net).remove()


def moves(app) -> list[tuple[str, str, str, str, float]]:
    return [(e["worker_id"], e["from_state"] or "", e["to_state"], e["reason"], e["time"])
            for e in app.events() if e["kind"] == "worker" and e["to_state"]]


def first(history, worker: str, to: str) -> float | None:
    return next((t for w, _, s, _, t in history if w == worker and s == to), None)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_dockerd_restart_fails_the_stopped_workers_and_reruns_their_jobs_on_new_ones(node, inner_appliance, variant):
    how = VARIANTS[variant]
    engine = node.engine
    app = inner_appliance(config(how["on_shutdown"]), how["restart"])
    pool = app.pool_id()
    cluster = app.submit(fault_jobs_sub(LENGTHS), {"job.sh": FAULT_JOB}, directory=JOBS)
    running = {f"{cluster}.0", f"{cluster}.1"}

    def both_running():
        starts = job_events(app, f"{JOBS}/job.log")
        return (all(starts[j][EXECUTE] for j in running)
                and [w["state"] for w in app.status("-m")["data"]] == ["busy"] * 2)
    app.wait("the two long jobs to execute on two busy docker workers", both_running, timeout=120)
    rows = sorted(w["id"] for w in app.status("-m")["data"])
    old = worker_containers(engine, pool)
    assert sorted(old) == rows, (old, rows)

    # ---- the fault: the engine stops (or dies) and starts again
    t0 = time.time()
    stopped = node.stop_dockerd(how["signal"])
    up = node.start_dockerd()
    seen_running = set()        # an old worker container seen running again (restart policy `no`: never)

    def look_at_old() -> dict[str, str]:
        states = {}
        for wid, cid in old.items():
            try:
                c = engine.containers.get(cid)
            except docker.errors.NotFound:
                states[wid] = "removed"
                continue
            states[wid] = f"{c.status} (restarts {c.attrs['RestartCount']})"
            if c.status == "running" or c.attrs["RestartCount"]:
                seen_running.add(wid)
        return states
    after_start = look_at_old()
    appc = engine.containers.get(app.name)
    if how["restart"] == "no":
        # nothing brings it back but the operator: the engine stopped it (a crash: at its start)
        assert appc.status == "exited", appc.attrs["State"]
        appc.start()
    wait_until("the appliance's container to run again", lambda: engine.containers.get(app.name).status == "running",
               60, 0.5, retry_on=ENGINE_DOWN, context=node.log_tail)
    app.wait_ready(timeout=90)
    ready = time.time() - t0
    # new demand, once it answers again
    fresh = app.submit(fault_jobs_sub([3]), {"job.sh": FAULT_JOB}, directory=FRESH)

    # ---- the stopped workers: judged failed, their containers removed, never run again
    def judged():
        history = moves(app)
        look_at_old()
        return all(first(history, w, "failed") for w in rows) and history
    history = app.wait("both stopped workers to be failed", judged, timeout=60)
    for w in rows:
        (reason,) = [r for wid, _, to, r, _ in history if wid == w and to == "failed"]
        assert reason.startswith("vanished: its container is exited"), (w, reason)
    app.wait("their containers to be removed", lambda: set(look_at_old().values()) == {"removed"}, timeout=30)
    assert not seen_running, (seen_running, after_start)

    # ---- every job completes once: the two cut short start again, the rest once
    app.wait("every job to complete", lambda: len(completed(app, [cluster])) == len(LENGTHS)
             and completed(app, [fresh]), timeout=240)
    done = time.time() - t0
    for log, n, clusters, lengths, directory in ((f"{JOBS}/job.log", len(LENGTHS), [cluster], LENGTHS, JOBS),
                                                 (f"{FRESH}/job.log", 1, [fresh], [3], FRESH)):
        numbers = account(app, log, n, clusters)
        assert len(numbers["done"]) == n, numbers
        for job, codes in numbers["events"].items():
            assert codes[TERMINATED] == 1 and not codes[ABORTED] and not codes[HELD], (job, dict(codes))
            assert codes[EXECUTE] in ((1, 2) if job in running else (1,)), (job, dict(codes))
        assert not check_outputs(app, directory, clusters[0], lengths)
    starts = {j: c[EXECUTE] for j, c in job_events(app, f"{JOBS}/job.log").items()}

    # ---- nothing left on the engine but the appliance and its named volumes
    assert_no_orphans(app, engine)
    assert [c.name for c in engine.containers.list(all=True)] == [app.name]
    mounted = {m["Name"] for m in engine.containers.get(app.name).attrs["Mounts"] if m["Type"] == "volume"}
    assert {v.name for v in engine.volumes.list()} == mounted

    # ---- two new workers served it all; nothing else failed; the cloud is healthy (no backoff for this)
    history = moves(app)
    new = [w for w in requested(app) if w not in rows]
    assert 1 <= len(new) <= 2, history
    assert all(first(history, w, "requested") >= t0 for w in new), history
    assert sorted(w for w, _, to, _, _ in history if to == "failed") == rows, history
    (cloud,) = app.status()["data"]
    assert cloud["health"] == "ok" and not cloud["failures"], cloud
    log = app.logs()
    assert log.count("scheduler started") == 2
    # while the engine was away (the crash: until it came back and stopped the appliance) a
    # cycle's listing failed, and only the docker cloud's: never the whole cycle
    assert "scheduler cycle failed" not in log, log[-4000:]
    unreachable = [line for line in log.splitlines() if "cannot list workers" in line]
    failed_at = max(first(history, w, "failed") for w in rows) - t0
    busy_at = max(first(history, w, "busy") or 0 for w in new) - t0
    print(f"dockerd {variant} ({how['signal']}): engine down in {stopped:.1f}s, back in {up:.1f}s; old workers "
          f"{after_start} once it was back; appliance answering at +{ready:.0f}s, old workers failed at "
          f"+{failed_at:.0f}s, new workers {new} busy at +{busy_at:.0f}s, all jobs done at +{done:.0f}s; starts {starts}; while the engine was away: "
          f"{unreachable[:1]}")
