"""Demand read from cluster ads plus the procs that differ from them, against a real schedd.

Clusters whose procs vary their requirements, request_memory and +WorkerImage per proc
(queue ... from), one job edited alone (condor_qedit) and a late-materialized cluster that
varies its request: the appliance's demand() must find exactly the groups, and counts, that
a group-by of every job on its whole request finds (what demand() was before it read
cluster ads), and the daemon records them.
"""
from __future__ import annotations

import json
import re

import pytest

pytestmark = pytest.mark.timeout(300)

CONFIG = """
scheduler: {interval: 1}
clouds:
  - {name: local, type: local, max_workers: 0}
"""

VARIED = """executable = /bin/true
request_cpus = 1
request_memory = $(mem)
request_disk = 10MB
+WorkerImage = "$(img)"
requirements = (TARGET.Memory >= $(mem)) && $(extra)
queue mem img extra from (
  100 a true
  100 a true
  200 a true
  100 b true
  100 a false
  100 a true
)"""

PLAIN = """executable = /bin/true
request_memory = 300
request_disk = 10MB
queue 4"""

LATE = """executable = /bin/true
request_memory = $(mem)
request_disk = 10MB
max_materialize = 3
queue mem from (
  400
  450
  400
  450
  400
)"""

COMPARE = """
import json, subprocess, htcondor
from appliance.condor import Condor, DEMAND_PROJECTION, groups_from_ads

def every_job():
    ads = htcondor.Schedd().query("true", DEMAND_PROJECTION, opts=htcondor.QueryOpts.GroupBy)
    return {g.key: [g.count, g.memory, g.requirements, g.asks.image] for g in groups_from_ads(ads)}

condor = Condor("x")
out = {"every_job": every_job(),
       "ours": {g.key: [g.count, g.memory, g.requirements, g.asks.image] for g in condor.demand()},
       "log": condor._log.path, "log_followed": condor._log.head is not None}
# one more job edited alone, seen by the same reader through the job queue log (no cluster is new now)
subprocess.run(["condor_qedit", "%(job)s", "RequestMemory", "777"], check=True, capture_output=True)
out["every_job_after"] = every_job()
out["ours_after"] = {g.key: [g.count, g.memory, g.requirements, g.asks.image] for g in condor.demand()}
print(json.dumps(out))
"""


def submit(app, sub: str, name: str) -> int:
    app.sh(f"mkdir -p /home/submit/{name} && cat > /home/submit/{name}/job.sub <<'EOF'\n{sub}\nEOF", user="submit")
    out = app.sh(f"cd /home/submit/{name} && condor_submit job.sub 2>&1", user="submit")
    found = re.search(r"submitted to cluster (\d+)", out)
    assert found, out
    return int(found.group(1))


def test_procs_that_differ_from_their_cluster_are_grouped_as_a_group_by_of_every_job_groups_them(start_appliance):
    app = start_appliance(CONFIG)
    submit(app, VARIED, "varied")
    plain = submit(app, PLAIN, "plain")
    submit(app, LATE, "late")
    app.sh(f"condor_qedit {plain}.2 RequestMemory 999", user="submit")
    app.wait("the late cluster to materialize its 3 jobs",
             lambda: app.sh("condor_q -allusers -af JobStatus | grep -c 1", check=False).strip() == "13", timeout=30)

    found = json.loads(app.sh(f"python3 - <<'EOF'\n{COMPARE % {'job': f'{plain}.0'}}\nEOF"))
    assert found["ours"] == found["every_job"], found
    assert found["log_followed"], found["log"]          # else every cluster is compared every cycle
    assert found["ours_after"] == found["every_job_after"], found
    assert sorted(v[:2] for v in found["ours_after"].values() if v[1] in (300, 777)) == [[1, 777], [2, 300]]
    by_request = sorted((count, memory, image) for count, memory, _, image in found["ours"].values())
    assert by_request == [(1, 100, "a"), (1, 100, "b"), (1, 200, "a"), (1, 450, None), (1, 999, None),
                          (2, 400, None), (3, 100, "a"), (3, 300, None)], by_request

    # the daemon read the same, and says how long each phase of its cycle took
    want = {k: v[0] for k, v in found["ours_after"].items()}
    app.wait("the scheduler to record the demand",
             lambda: {g["key"]: g["count"] for g in app.status("-q")["data"]["groups"]} == want, timeout=20)
    phases = app.status()["scheduler"]["cycle_phases"]
    assert set(phases) == {"observe_demand", "observe_supply", "decide", "act", "record"}, phases
