"""What the fault scenarios of test_faults.py share: a job that proves it ran
once and whole, the worker containers as Docker sees them, an appliance
started with extra `docker run` options (a tmpfs), and the duplicate count.

Job accounting (evictions, shadow exceptions, second starts) and the orphan
check come from reliability_support; every number lands in its NUMBERS, which
the run prints at its end ("reliability numbers: ...").
"""
from __future__ import annotations

import json
import re
import shlex
import uuid

from testcontainers.core.container import DockerContainer

from .conftest import PREFIX, Appliance, labelled
from .reliability_support import EXECUTE, NUMBERS, job_events

# One run of this job: a token unique to the run, one numbered tick a second,
# then `done` with the same token. A whole, single run's output is exactly
# `start T`, the machine ad lines, `tick 1` .. `tick N`, `done T`; two runs
# appended to each other, a run cut short or a run mixed with another shows.
FAULT_JOB = """#!/bin/sh
token=$(cat /proc/sys/kernel/random/uuid)
echo "start $token host=$(hostname)"
grep -E '^(WorkerId|CloudName) ' "$_CONDOR_MACHINE_AD"
i=1
while [ "$i" -le "${1:-20}" ]; do
  echo "tick $i"
  sleep 1
  i=$((i + 1))
done
echo "done $token"
"""


def fault_jobs_sub(lengths, extra: str = "") -> str:
    """One cluster, one FAULT_JOB per length (ticks, about seconds), all logging to job.log."""
    args = "\n".join(str(s) for s in lengths)
    return ("executable = job.sh\noutput = out.$(Cluster).$(Process)\nerror = err.$(Cluster).$(Process)\n"
            "log = job.log\nrequest_cpus = 1\nrequest_memory = 128\nrequest_disk = 10MB\n"
            f"{extra}\nqueue arguments from (\n{args}\n)")


def completed(app, clusters) -> list[str]:
    """'cluster.proc' of the jobs of these clusters that completed with exit code 0."""
    constraint = " || ".join(f"ClusterId == {c}" for c in clusters)
    out = app.sh(f"condor_history -constraint '{constraint}' -af ClusterId ProcId JobStatus ExitCode")
    return [f"{c}.{p}" for c, p, st, ec in (l.split() for l in out.splitlines() if l.strip())
            if st == "4" and ec == "0"]


def output_problems(text: str, ticks: int) -> list[str]:
    """What is wrong with one job's output, if it is not exactly one whole run."""
    problems = []
    starts = re.findall(r"^start (\S+)", text, re.M)
    dones = re.findall(r"^done (\S+)$", text, re.M)
    seen = [int(n) for n in re.findall(r"^tick (\d+)$", text, re.M)]
    if len(starts) != 1:
        problems.append(f"{len(starts)} start lines")
    if len(dones) != 1:
        problems.append(f"{len(dones)} done lines")
    if starts and dones and starts != dones:
        problems.append("the done token is not the start token: two runs mixed")
    if seen != list(range(1, ticks + 1)):
        problems.append(f"ticks {seen[:5]}...{seen[-5:]} ({len(seen)}), expected 1..{ticks} once each")
    return problems


def check_outputs(app, directory: str, cluster: int, lengths) -> dict[str, list[str]]:
    """job id -> problems, for each job of the cluster whose output is not one whole run.
    Counted in NUMBERS as "duplicate or broken outputs"."""
    bad = {}
    for proc, ticks in enumerate(lengths):
        text = app.sh(f"cat {directory}/out.{cluster}.{proc}", check=False)
        problems = output_problems(text, ticks)
        if problems:
            bad[f"{cluster}.{proc}"] = problems + [text[-400:]]
    NUMBERS["duplicate or broken outputs"] += len(bad)
    return bad


def executes(app, log_path: str) -> dict[str, int]:
    """job id -> how many times the job event log says it started (001)."""
    return {j: c[EXECUTE] for j, c in job_events(app, log_path).items()}


def worker_containers(client, pool_id: str) -> dict[str, str]:
    """worker id -> container id of the pool's labelled containers that are running."""
    return {c.labels["appliance.worker"]: c.id for c in labelled(client, pool_id)
            if getattr(c, "status", "") == "running" and "appliance.worker" in c.labels}


def requested(app) -> list[str]:
    """Every worker the scheduler ever decided to launch (a `-> requested` event), in order."""
    return [e["worker_id"] for e in app.events() if e["kind"] == "worker" and e["to_state"] == "requested"]


def status_json(app, *args: str) -> dict:
    """`cloud_status --json ARGS` from its stdout alone. conftest's Appliance.status reads
    stdout and stderr together, so it cannot parse the answer while the scheduler is
    down (exit 3 adds a line on stderr)."""
    rc, (out, err) = app.c.exec_run(["bash", "-lc", "cloud_status --json " + " ".join(shlex.quote(a) for a in args)],
                                    demux=True)
    assert rc in (0, 3), (rc, out, err)
    return json.loads(out.decode())


def start_raw_appliance(client, image: str, config_path: str, name: str | None = None,
                        network: str | None = None, env: dict[str, str] | None = None,
                        docker_socket: bool = False, **kwargs) -> tuple[Appliance, DockerContainer]:
    """An appliance like conftest's start_appliance, with extra `docker run` keyword
    arguments (e.g. a tmpfs on /var/lib/appliance). Not waited for; the caller removes it
    (conftest.remove_appliance)."""
    name = name or f"{PREFIX}-{uuid.uuid4().hex[:8]}"
    c = DockerContainer(image).with_name(name).with_volume_mapping(config_path, "/etc/appliance/appliance.yaml", "ro")
    if docker_socket:
        c = c.with_volume_mapping("/var/run/docker.sock", "/var/run/docker.sock", "rw")
    for k, v in (env or {}).items():
        c = c.with_env(k, v)
    c = c.with_kwargs(hostname=name, **({"network": network} if network else {}), **kwargs)
    c.start()
    return Appliance(c), c
