"""A real multi-node Swarm: two Docker-in-Docker nodes, the appliance on the manager,
swarm workers placed across both nodes, and jobs completing on workers of each node.

The nodes are Debian's docker.io in a trixie image (tests/integration/dind), started
with the near-privileged flags of ../shared/tools/README.md (--privileged fails here).
The appliance image reaches each node's engine with `docker save | docker load`.
"""
from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.waiting import wait_until

from .conftest import IMAGE

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

DIND_IMAGE = "apptest-dind:1"
NODE_FLAGS = dict(cap_add=["ALL"], cap_drop=["SYS_RESOURCE"],
                  security_opt=["seccomp=unconfined", "apparmor=unconfined"], cgroupns="host",
                  volumes={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
                  environment={"DOCKER_ALLOW_IPV6_ON_IPV4_INTERFACE": "1"}, tmpfs={"/var/lib/docker": "exec"})

# Each worker reserves a whole node's 2 CPUs, so Swarm must place the second on the other
# node. With room for both on one node its scheduler may put both there (seen in CI): each
# worker is a service of its own, and Swarm spreads the tasks of a service, not services.
CONFIG = """
scheduler: {interval: 1, idle_timeout: 5, boot_timeout: 180}
clouds:
  - {name: swarm, type: swarm, image: %s, max_workers: 2, worker: {cpus: 2, memory: 512}}
"""

JOB = """#!/bin/sh
echo "host=$(hostname)"
grep -E '^(WorkerId|CloudName) ' "$_CONDOR_MACHINE_AD"
sleep 8
"""
SUB = """executable = job.sh
output = out.$(Process)
log = job.log
request_cpus = 1
request_memory = 128
queue 4
"""


def run(node, *cmd: str, stdin: bytes | None = None, check: bool = True) -> str:
    proc = subprocess.run(["docker", "exec", "-i", node.name, *cmd], input=stdin, capture_output=True)
    out = proc.stdout.decode(errors="replace")
    if check and proc.returncode != 0:
        raise AssertionError(f"{node.name}: {' '.join(cmd)} exited {proc.returncode}: {out}{proc.stderr.decode()[-2000:]}")
    return out


def wait(what, predicate, timeout, every=1.0):
    """wait_until (tests/waiting.py), retrying while a `docker exec` into a node fails (run asserts)."""
    return wait_until(what, predicate, timeout, every, retry_on=(AssertionError,))


@pytest.fixture(scope="module")
def nodes(client, image):
    subprocess.run(["docker", "build", "-q", "-t", DIND_IMAGE, str(Path(__file__).parent / "dind")],
                   check=True, stdout=subprocess.DEVNULL)
    net = client.networks.create(f"apptest-mn-{uuid.uuid4().hex[:8]}", driver="bridge")
    started = []
    try:
        for i in (1, 2):
            started.append(client.containers.run(DIND_IMAGE, detach=True, name=f"{net.name}-node{i}",
                                                  hostname=f"node{i}", network=net.name, **NODE_FLAGS))
        for node in started:
            def engine_version(node=node):
                return run(node, "docker", "info", "--format", "{{.ServerVersion}}", check=False).strip()
            wait(f"the engine in {node.name}", engine_version, 60)
        manager, worker = started
        manager.reload()
        ip = manager.attrs["NetworkSettings"]["Networks"][net.name]["IPAddress"]
        run(manager, "docker", "swarm", "init", "--advertise-addr", ip)
        token = run(manager, "docker", "swarm", "join-token", "-q", "worker").strip()
        run(worker, "docker", "swarm", "join", "--token", token, f"{ip}:2377")
        wait("both nodes ready", lambda: run(manager, "docker", "node", "ls", "--format", "{{.Status}}").split()
             == ["Ready", "Ready"], 60)
        # the appliance image, into each node's engine
        saved = subprocess.run(["docker", "save", image], check=True, capture_output=True).stdout
        for node in started:
            run(node, "docker", "load", "-q", stdin=saved)
        yield manager, worker
    finally:
        for node in started:
            node.remove(force=True, v=True)
        net.remove()


def test_workers_spread_over_two_swarm_nodes_and_run_jobs_on_both(nodes):
    manager, _ = nodes
    run(manager, "sh", "-c", "cat > /appliance.yaml", stdin=(CONFIG % IMAGE).encode())
    run(manager, "docker", "network", "create", "-d", "overlay", "--attachable", "appnet")
    run(manager, "docker", "run", "-d", "--name", "appliance", "--hostname", "appliance", "--network", "appnet",
        "-v", "/var/run/docker.sock:/var/run/docker.sock", "-v", "/appliance.yaml:/etc/appliance/appliance.yaml:ro",
        IMAGE)

    def app(*cmd: str, user: str = "root", stdin: bytes | None = None) -> str:
        return run(manager, "docker", "exec", "-i", "-u", user, "-w", "/home/submit", "appliance", *cmd, stdin=stdin)

    wait("the appliance to run", lambda: json.loads(app("cloud_status", "--json"))["scheduler"]["running"], 90)
    app("sh", "-c", "cat > job.sh && chmod +x job.sh", user="submit", stdin=JOB.encode())
    app("sh", "-c", "cat > job.sub", user="submit", stdin=SUB.encode())
    app("condor_submit", "job.sub", user="submit")

    def node_of_workers() -> dict[str, str]:
        out = run(manager, "sh", "-c", "docker service ps -q $(docker service ls -q) | xargs -r docker inspect "
                                       "--format '{{index .Spec.ContainerSpec.Labels \"appliance.worker\"}} {{.NodeID}}'")
        # A task not yet scheduled has no NodeID: it prints only its label, so skip it until it has one.
        fields = [line.split() for line in out.splitlines()]
        ids = {f[0]: f[1] for f in fields if len(f) == 2}
        return ids if len(ids) == 2 else {}
    placement = wait("two worker services", node_of_workers, 120)
    assert len(set(placement.values())) == 2, f"both workers on one node: {placement}"

    def done() -> bool:
        hist = app("condor_history", "-af", "JobStatus")
        return hist.split() == ["4"] * 4
    wait("4 jobs to complete", done, 300, every=2)

    ran_on = set()
    for i in range(4):
        out = app("cat", f"out.{i}")
        m = re.search(r'^WorkerId = "(swarm-[0-9a-f]{6})"$', out, re.M)
        assert m and f"host={m.group(1)}" in out, out
        ran_on.add(placement[m.group(1)])
    assert len(ran_on) == 2, f"jobs ran on only one node: {ran_on}"

    # scale-down removes the workers' services on both nodes
    wait("the workers to retire", lambda: json.loads(app("cloud_status", "-m", "--json"))["data"] == [], 120)
    wait("no worker service left", lambda: run(manager, "docker", "service", "ls", "-q").strip() == "", 60)
