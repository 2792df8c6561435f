"""The swarm cloud on a single-node Swarm made by the test (and left by it afterwards).

One service per worker: scale-down removes exactly the drained worker's service.
"""
from __future__ import annotations

import re

import docker
import pytest

from .conftest import IMAGE, JOB_SCRIPT, job_sub, labelled
from .test_appliance import completed

pytestmark = pytest.mark.timeout(600)


CONFIG = f"""
scheduler: {{interval: 1, idle_timeout: 5, boot_timeout: 120}}
clouds:
  - name: swarm
    type: swarm
    image: {IMAGE}
    max_workers: 2
    worker: {{cpus: 1, memory: 512}}
    constraints: ["node.role == manager"]
    labels: {{team: physics}}
"""


def test_jobs_run_on_swarm_services_which_then_go_away(swarm, start_appliance, overlay):
    app = start_appliance(CONFIG, network=overlay, docker_socket=True)
    pool = app.pool_id()
    cluster = app.submit(job_sub(3, seconds=4), {"job.sh": JOB_SCRIPT})

    def services():
        return swarm.services.list(filters={"label": f"appliance.pool={pool}"})
    app.wait("a worker service", services, timeout=60)
    svc = services()[0]
    spec = svc.attrs["Spec"]
    assert spec["TaskTemplate"]["RestartPolicy"]["Condition"] == "none"
    assert spec["TaskTemplate"]["Placement"]["Constraints"] == ["node.role == manager"]
    assert spec["TaskTemplate"]["Resources"]["Limits"]["NanoCPUs"] == 1_000_000_000
    assert spec["Labels"]["team"] == "physics" and spec["Labels"]["appliance.cloud"] == "swarm"
    env = " ".join(spec["TaskTemplate"]["ContainerSpec"].get("Env", []))
    assert "TOKEN" not in env       # the worker's files travel as a Docker secret

    app.wait("3 jobs to complete", lambda: len(completed(app, cluster)) == 3, timeout=240)
    ids = set()
    for i in range(3):
        out = app.sh(f"cat /home/submit/job/out.{i}")
        m = re.search(r'^WorkerId = "(swarm-[0-9a-f]{6})"$', out, re.M)
        assert m and 'CloudName = "swarm"' in out and f"host={m.group(1)}" in out, out
        ids.add(m.group(1))

    app.wait("the workers to retire", lambda: app.status("-m")["data"] == [], timeout=120)
    app.wait("no labelled service or container left", lambda: labelled(swarm, pool) == [], timeout=60)
    app.wait("the workers' secrets removed",
             lambda: not swarm.secrets.list(filters={"label": f"appliance.pool={pool}"}), timeout=30)
    moves = [(e["worker_id"], e["to_state"]) for e in app.events() if e["to_state"]]
    for wid in ids:
        assert (wid, "draining") in moves and (wid, "retired") in moves, moves


def test_orphan_service_is_removed(swarm, start_appliance, overlay):
    app = start_appliance(CONFIG, network=overlay, docker_socket=True)
    pool = app.pool_id()
    orphan = swarm.services.create(IMAGE, ["sleep", "600"], name=f"apptest-orphan-{pool}",
                                   labels={"appliance.pool": pool, "appliance.cloud": "swarm",
                                           "appliance.worker": "swarm-0rphan"})
    try:
        app.wait("the orphan service to be removed",
                 lambda: not swarm.services.list(filters={"name": f"apptest-orphan-{pool}"}), timeout=20, every=0.5)
        assert any("removed orphan swarm-0rphan" in e["reason"] for e in app.events())
    finally:
        try:
            orphan.remove()
        except docker.errors.NotFound:
            pass
