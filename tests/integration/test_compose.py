"""The README's one command: `docker compose up -d` from the repo gives a working elastic pool.

Runs the repository's compose.yaml as a user would (it builds the image, mounts
the Docker socket and config/compose.yaml), submits one job, sees it complete
on a worker container, then `docker compose down -v` must leave nothing behind.
"""
from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from tests.waiting import wait_until

from .conftest import REPO

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

PROJECT = "apptest-compose"


def compose(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, COMPOSE_PROJECT_NAME=PROJECT)
    proc = subprocess.run(["docker", "compose", *args], cwd=REPO, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker compose {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def dexec(*args: str, user: str = "root") -> str:
    home = ["-w", "/home/submit"] if user == "submit" else []     # as the README's quickstart
    proc = subprocess.run(["docker", "exec", "-u", user, *home, "appliance", *args], capture_output=True, text=True)
    assert proc.returncode == 0, f"{args}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def appliance_log() -> str:
    logs = subprocess.run(["docker", "logs", "appliance"], capture_output=True, text=True)
    return (logs.stdout + logs.stderr)[-4000:]


def wait(what, predicate, timeout):
    """wait_until (tests/waiting.py), retrying while `docker exec` fails (dexec asserts), with the
    appliance's log in the failure message."""
    return wait_until(what, predicate, timeout, retry_on=(AssertionError,), context=appliance_log)


def docker_json(*args: str) -> list:
    out = subprocess.run(["docker", *args, "--format", "{{json .}}"], capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_compose_up_runs_a_job_on_a_worker_container_and_down_leaves_nothing():
    compose("up", "-d", "--build")
    pool = None
    try:
        wait("the appliance to answer", lambda: dexec("condor_q", "-totals") and
             json.loads(dexec("cloud_status", "--json"))["scheduler"]["running"], timeout=90)
        pool = dexec("cat", "/var/lib/appliance/pool-id").strip()
        out = dexec("condor_submit", "/usr/share/appliance/examples/hello.sub", user="submit")
        cluster = re.search(r"submitted to cluster (\d+)", out).group(1)
        # a job as big as the host: the shipped `shapes: auto` has a worker for it, no config written
        cpus = os.cpu_count()
        out = dexec("bash", "-c", f"sed 's/request_cpus   = 1/request_cpus = {cpus}/; s/queue 3/queue 1/; "
                                  f"s/= hello[.]/= big./' /usr/share/appliance/examples/hello.sub > big.sub && "
                                  f"condor_submit big.sub", user="submit")
        big = re.search(r"submitted to cluster (\d+)", out).group(1)

        def done():
            hist = dexec("condor_history", "-constraint", f"ClusterId == {cluster} || ClusterId == {big}",
                         "-af", "JobStatus")
            return hist.split() == ["4", "4", "4", "4"]      # hello.sub queues 3 jobs, big.sub 1
        wait("the sample jobs to complete", done, timeout=240)
        result = dexec("cat", "/home/submit/hello.0.out")
        # a small job may take the room of the big job's worker once that is done: either shape
        assert 'CloudName = "docker"' in result and re.search(r'^WorkerShape = "\d+cpu"$', result, re.M), result
        big_result = dexec("cat", "/home/submit/big.0.out")
        assert f'WorkerShape = "{cpus}cpu"' in big_result and f"Cpus = {cpus}" in big_result, big_result
        worker = re.search(r'WorkerId = "(docker-[0-9a-f]{6})"', result).group(1)
        events = json.loads(dexec("cloud_status", "-e", "--json"))["data"]
        assert any(e["worker_id"] == worker and e["to_state"] == "busy" for e in events)
        assert docker_json("ps", "--filter", f"label=appliance.pool={pool}"), "the worker container is running"
    finally:
        compose("down", "-v", "--timeout", "30", check=False)

    # nothing left: no container (appliance or worker), no volume, no network of the project
    assert not docker_json("ps", "-a", "--filter", f"label=appliance.pool={pool}")
    # compose's build labels the image with the project, so every container of appliance:latest
    # (other tests', workers) carries it; only the containers compose made have a container number
    assert not docker_json("ps", "-a", "--filter", f"label=com.docker.compose.project={PROJECT}",
                           "--filter", "label=com.docker.compose.container-number")
    assert not docker_json("volume", "ls", "--filter", f"label=com.docker.compose.project={PROJECT}")
    assert not docker_json("network", "ls", "--filter", f"label=com.docker.compose.project={PROJECT}")
