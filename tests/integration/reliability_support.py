"""What the fault-injection tests share: job accounting from the job event log,
orphan checks, and the hunt for leaked secrets.

Every number the reliability suite reports is added up in NUMBERS and printed
at the end of the run (see test_reliability.py).
"""
from __future__ import annotations

import re
import uuid
from collections import Counter, defaultdict

import docker

from .conftest import labelled

# a value unique to this run, so finding it anywhere is a real leak
ADMIN_PASSWORD = "rel-admin-" + uuid.uuid4().hex
ENV = {"APPLIANCE_ADMIN_PASSWORD": ADMIN_PASSWORD}

NUMBERS: Counter = Counter()

EVENT = re.compile(r"^(\d{3}) \((\d+)\.(\d+)\.\d+\)", re.M)
SUBMIT, EXECUTE, EVICTED, TERMINATED, SHADOW_EXCEPTION, ABORTED, HELD = \
    "000", "001", "004", "005", "007", "009", "012"


def job_events(app, log_path: str) -> dict[str, Counter]:
    """job id -> Counter of event codes, from a job event log (job.log)."""
    out: dict[str, Counter] = defaultdict(Counter)
    for code, cluster, proc in EVENT.findall(app.sh(f"cat {log_path}")):
        out[f"{int(cluster)}.{int(proc)}"][code] += 1
    return out


def finished_ok(app, clusters) -> dict[str, str]:
    """job id -> 'ok' for jobs in the history that completed with exit code 0."""
    constraint = " || ".join(f"ClusterId == {c}" for c in clusters)
    out = app.sh(f"condor_history -constraint '{constraint}' -af ClusterId ProcId JobStatus ExitCode")
    return {f"{c}.{p}": "ok" for c, p, st, ec in (l.split() for l in out.splitlines() if l.strip())
            if st == "4" and ec == "0"}


def account(app, log_path: str, submitted: int, clusters) -> dict:
    """Add one scenario's jobs to the run's numbers and return them.

    A job counts as evicted if its log shows an eviction (004), a shadow
    exception (007), an abort (009) or a hold (012), or if it started more than
    once (two 001 events): each of those is work lost or redone.
    """
    events = job_events(app, log_path)
    done = finished_ok(app, clusters)
    lost = {j: dict(c) for j, c in events.items()
            if c[EVICTED] or c[SHADOW_EXCEPTION] or c[ABORTED] or c[HELD] or c[EXECUTE] > 1}
    NUMBERS["scenarios"] += 1
    NUMBERS["jobs submitted"] += submitted
    NUMBERS["jobs completed"] += len(done)
    NUMBERS["evictions"] += sum(c[EVICTED] for c in events.values())
    NUMBERS["shadow exceptions"] += sum(c[SHADOW_EXCEPTION] for c in events.values())
    NUMBERS["jobs started more than once"] += sum(1 for c in events.values() if c[EXECUTE] > 1)
    return {"events": events, "done": done, "lost": lost}


def orphans(app, client) -> list[str]:
    """What is left of an appliance's workers once it reports none: labelled
    containers or services, worker processes inside it, worker ads in its collector."""
    left = [getattr(t, "name", str(t)) for t in labelled(client, app.pool_id())]
    masters = [l for l in app.sh("ps -eo pid,args").splitlines() if "condor_master" in l]
    left += masters[1:]          # the first is the appliance's own
    ads = app.sh("condor_status -any -constraint 'ApplianceWorker =?= true' -af Name", check=False)
    left += [f"ad {n}" for n in ads.split()]
    return left


def assert_no_orphans(app, client) -> None:
    app.wait("every worker to end", lambda: app.status("-m")["data"] == [], timeout=120)
    left = []

    def clean():
        left[:] = orphans(app, client)
        return not left
    try:
        app.wait("no orphan", clean, timeout=30)
    finally:
        NUMBERS["orphans left"] += len(left)


# ---------------------------------------------------------------- secrets

def _jwt_parts(token: str) -> set[str]:
    token = token.strip()
    out = {token} if token else set()
    if token.count(".") == 2:
        out.add(token.rsplit(".", 1)[1])       # the signature alone is enough to matter
    return out


def harvest_secrets(app, client) -> set[str]:
    """The secrets an appliance holds now: its pool key, worker keys, the worker
    tokens of its local and docker workers, and the admin password."""
    found = {ADMIN_PASSWORD, app.sh("cat /var/lib/appliance/keys/POOL").strip()}
    keys = app.sh("cat /var/lib/appliance/worker-keys/* 2>/dev/null; echo", check=False)
    found |= {k.strip() for k in keys.split("\n") if len(k.strip()) >= 32}
    tokens = app.sh("cat /var/lib/appliance/workers/*/*/tokens.d/pool 2>/dev/null; echo", check=False)
    for t in tokens.split("\n"):
        found |= _jwt_parts(t)
    for c in labelled(client, app.pool_id()):
        if getattr(c, "status", "") != "running":
            continue
        try:
            rc, out = c.exec_run(["cat", "/var/lib/condor-worker/tokens.d/pool"])
        except docker.errors.APIError:
            continue
        if rc == 0:
            found |= _jwt_parts(out.decode())
    return {s for s in found if len(s) >= 16}


def outputs_to_search(app, client, extra=()) -> dict[str, str]:
    """Everything an operator or a log collector sees."""
    texts = {"container log": app.logs()}
    for args in ("-e -n 100000", "-m -a", "", "-q"):
        for fmt in ("--json", ""):
            texts[f"cloud_status {args} {fmt}"] = app.sh(f"cloud_status {args} {fmt}", check=False)
    texts["condor logs"] = app.sh("cat /var/log/condor/* 2>/dev/null", check=False)
    for c in labelled(client, app.pool_id()):
        if hasattr(c, "logs"):
            try:
                texts[f"worker container {c.name}"] = c.logs().decode(errors="replace")
            except docker.errors.APIError:
                pass
    for i, t in enumerate(extra):
        texts[f"extra {i}"] = t
    return texts


def assert_no_secret_leaks(secrets: set[str], texts: dict[str, str]) -> None:
    assert len(secrets) >= 2
    leaks = [(where, s[:6] + "...") for s in secrets for where, text in texts.items() if s in text]
    NUMBERS["secret leaks"] += len(leaks)
    NUMBERS["secrets searched for"] += len(secrets)
    assert not leaks, leaks
