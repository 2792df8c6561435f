"""The docker cloud: workers are sibling containers started through the mounted socket.

Real dockerd, the real image in both roles (appliance and worker), real HTCondor.
"""
from __future__ import annotations

import re
import time

import docker
import pytest

from .conftest import IMAGE, JOB_SCRIPT, job_sub
from .test_appliance import completed

pytestmark = pytest.mark.timeout(600)


def docker_config(idle: int = 5, max_workers: int = 2, extra: str = "") -> str:
    return f"""
scheduler: {{interval: 1, idle_timeout: {idle}, boot_timeout: 120}}
clouds:
  - name: docker
    type: docker
    image: {IMAGE}
    max_workers: {max_workers}
    worker: {{cpus: 1, memory: 512}}
{extra}
"""


def worker_containers(client, app) -> list:
    return client.containers.list(all=True, filters={"label": f"appliance.pool={app.pool_id()}"})


def test_jobs_run_in_worker_containers_which_then_go_away(start_appliance, network, client):
    volumes_before = {v.name for v in client.volumes.list()}
    app = start_appliance(docker_config(), network=network, docker_socket=True)
    cluster = app.submit(job_sub(3, seconds=4), {"job.sh": JOB_SCRIPT})
    app.wait("3 jobs to complete", lambda: len(completed(app, cluster)) == 3, timeout=240)

    ids = set()
    for i in range(3):
        out = app.sh(f"cat /home/submit/job/out.{i}")
        m = re.search(r'^WorkerId = "(docker-[0-9a-f]{6})"$', out, re.M)
        assert m and 'CloudName = "docker"' in out, out
        # the job ran in the worker's own container: its hostname is the worker id, not the appliance's
        assert f"host={m.group(1)}" in out and f"host={app.name}" not in out, out
        ids.add(m.group(1))
    assert 1 <= len(ids) <= 2

    # the containers carried our labels and the worker size as limits while they lived
    events = app.events()
    launched = [e for e in events if e["to_state"] == "booting"]
    assert len(launched) == len(ids), launched

    app.wait("the workers to retire", lambda: app.status("-m")["data"] == [], timeout=120)
    app.wait("no labelled container left", lambda: worker_containers(client, app) == [], timeout=30)
    moves = [(e["worker_id"], e["to_state"]) for e in app.events() if e["to_state"]]
    for wid in ids:
        assert (wid, "draining") in moves and (wid, "retired") in moves, moves
    # nor any volume: the image's VOLUME lines gave each worker two anonymous ones, left for ever
    app.c.reload()
    own = {m.get("Name") for m in app.c.attrs["Mounts"]}
    left = {v.name for v in client.volumes.list()} - volumes_before - own
    assert left == set(), f"volumes left behind by the workers: {sorted(left)}"


def test_worker_container_has_limits_labels_and_no_secret_in_its_environment(start_appliance, network, client):
    app = start_appliance(docker_config(idle=60, max_workers=1), network=network, docker_socket=True)
    app.submit(job_sub(1, seconds=30), {"job.sh": JOB_SCRIPT})
    app.wait("a worker container", lambda: worker_containers(client, app), timeout=60)
    c = worker_containers(client, app)[0]
    attrs = c.attrs
    labels = attrs["Config"]["Labels"]
    assert labels["appliance.cloud"] == "docker" and labels["appliance.worker"].startswith("docker-")
    assert attrs["HostConfig"]["NanoCpus"] == 1_000_000_000
    assert attrs["HostConfig"]["Memory"] >= 512 * 1024 * 1024
    assert network in attrs["NetworkSettings"]["Networks"]
    env = " ".join(attrs["Config"]["Env"])
    assert "TOKEN" not in env and "eyJ" not in env      # the token travels as a file, never in inspect
    app.wait("the worker to join", lambda: any(w["state"] in ("idle", "busy") for w in app.status("-m")["data"]),
             timeout=60)
    # the copied bundle is deleted once installed; the token file is private to root
    rc, out = c.exec_run(["sh", "-c", "ls /etc/appliance/worker; stat -c '%a %U' /var/lib/condor-worker/tokens.d/pool"])
    assert out.decode().split() == ["600", "root"], out


SHAPE_SCRIPT = JOB_SCRIPT.replace("(WorkerId|CloudName)", "(WorkerId|CloudName|WorkerShape)")
MiB = 1024 * 1024


def test_each_job_gets_a_container_of_the_smallest_shape_that_fits(start_appliance, network, client):
    """Two shapes: a 1-cpu job gets a 1-cpu container, a 2-cpu job a 2-cpu one."""
    config = f"""
scheduler: {{interval: 1, idle_timeout: 5, boot_timeout: 120}}
clouds:
  - name: docker
    type: docker
    image: {IMAGE}
    max_workers: 2
    shapes:
      - {{name: small, cpus: 1, memory: 512}}
      - {{name: large, cpus: 2, memory: 1024}}
"""
    app = start_appliance(config, network=network, docker_socket=True)
    # each container lives for its boot, its job (8 s) and idle_timeout: long enough to inspect both
    one = app.submit(job_sub(1, seconds=8), {"job.sh": SHAPE_SCRIPT}, directory="/home/submit/one")
    two = app.submit(job_sub(1, seconds=8, extra="request_cpus = 2"), {"job.sh": SHAPE_SCRIPT},
                     directory="/home/submit/two")
    app.wait("two worker containers", lambda: len(worker_containers(client, app)) == 2, timeout=60)
    sizes = {}
    for c in worker_containers(client, app):
        host = c.attrs["HostConfig"]
        sizes[c.attrs["Config"]["Labels"]["appliance.shape"]] = (host["NanoCpus"], host["Memory"])
    assert sizes == {"small": (1_000_000_000, (512 + 256) * MiB), "large": (2_000_000_000, (1024 + 256) * MiB)}
    assert sorted(w["shape"] for w in app.status("-m")["data"]) == ["large", "small"]
    reasons = [e["reason"] for e in app.events() if e["to_state"] == "requested"]
    assert any("smallest fit: 1 x small" in r for r in reasons) and any("smallest fit: 1 x large" in r
                                                                         for r in reasons), reasons

    app.wait("both jobs to complete", lambda: len(completed(app, one)) == len(completed(app, two)) == 1, timeout=240)
    # the 2-cpu job can only have run on the large worker; the 1-cpu one ran on either
    # (the negotiator, not the plan, decides where it runs)
    assert 'WorkerShape = "large"' in app.sh("cat /home/submit/two/out.0")
    assert re.search(r'^WorkerShape = "(small|large)"$', app.sh("cat /home/submit/one/out.0"), re.M)
    app.wait("the workers to retire", lambda: app.status("-m")["data"] == [], timeout=120)
    app.wait("no labelled container left", lambda: worker_containers(client, app) == [], timeout=30)


def test_killed_worker_job_reruns_and_worker_is_replaced(start_appliance, network, client):
    app = start_appliance(docker_config(idle=30, max_workers=1), network=network, docker_socket=True)
    # long enough to be still running when its container is killed, the moment it shows busy
    cluster = app.submit(job_sub(1, seconds=15), {"job.sh": JOB_SCRIPT})

    def running_worker():
        ws = [w for w in app.status("-m")["data"] if w["state"] == "busy"]
        return ws[0] if ws else None
    first = app.wait("the job to run", running_worker, timeout=120)
    container = client.containers.get(first["resource_id"])
    container.kill()

    app.wait("the job to complete on a replacement", lambda: len(completed(app, cluster)) == 1, timeout=300)
    out = app.sh("cat /home/submit/job/out.0")
    second = re.search(r'^WorkerId = "(docker-[0-9a-f]{6})"$', out, re.M).group(1)
    assert second != first["id"], out

    moves = {(e["worker_id"], e["to_state"]): e["reason"] for e in app.events() if e["to_state"]}
    assert (first["id"], "failed") in moves, moves
    assert "vanished" in moves[(first["id"], "failed")], moves
    # the dead worker's container was cleaned up
    app.wait("the killed container to be removed",
             lambda: not [c for c in worker_containers(client, app) if c.id.startswith(first["resource_id"])],
             timeout=30)


def test_orphan_container_is_removed_within_two_cycles(start_appliance, network, client):
    app = start_appliance(docker_config(), network=network, docker_socket=True)
    pool = app.pool_id()
    orphan = client.containers.run(IMAGE, ["sleep", "600"], detach=True, network=network,
                                   name=f"apptest-orphan-{pool}",
                                   labels={"appliance.pool": pool, "appliance.cloud": "docker",
                                           "appliance.worker": "docker-0rphan"})
    try:
        started = time.monotonic()
        app.wait("the orphan to be removed", lambda: _gone(client, orphan.id), timeout=20, every=0.25)
        took = time.monotonic() - started
        assert took <= 2 * 1 + 3, took      # two 1 s cycles plus the removal itself
        assert any("removed orphan docker-0rphan" in e["reason"] for e in app.events())
    finally:
        try:
            orphan.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass


def _gone(client, cid: str) -> bool:
    try:
        client.containers.get(cid)
        return False
    except docker.errors.NotFound:
        return True


def test_missing_image_backs_off_and_falls_through_to_local(start_appliance, network, client):
    config = """
scheduler: {interval: 1, idle_timeout: 5, boot_timeout: 120}
clouds:
  - {name: docker, type: docker, image: "apptest-no-such-image:1", priority: 0, max_workers: 2}
  - {name: local, type: local, priority: 10, max_workers: 1}
"""
    app = start_appliance(config, network=network, docker_socket=True)
    cluster = app.submit(job_sub(1, seconds=1), {"job.sh": JOB_SCRIPT})
    app.wait("the job to complete on the local cloud", lambda: len(completed(app, cluster)) == 1, timeout=180)
    assert 'CloudName = "local"' in app.sh("cat /home/submit/job/out.0")
    docker_cloud = next(c for c in app.status()["data"] if c["name"] == "docker")
    assert docker_cloud["health"] == "backoff" or docker_cloud["failures"] >= 1, docker_cloud
    assert docker_cloud["last_error"].startswith("image:"), docker_cloud
    assert "image" in app.sh("cloud_status")      # the reason is shown to operators
    assert any(e["cloud"] == "docker" and "backing off" in e["reason"] for e in app.events())
    assert "Traceback" not in app.logs()
