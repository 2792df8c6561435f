"""Decision cost at scale: one observe+decide cycle against a real schedd holding
1,000 / 10,000 / 100,000 / 1,000,000 idle jobs spread over 10 and 100 distinct requests.

    python3 -m bench.decision                        # 1k, 10k, 100k, 1M jobs; 10 and 100 requests
    python3 -m bench.decision --sizes 1000 --groups 10   # a smoke run

For each number of distinct requests, one appliance is started with its cloud
at max_workers 0 (the scheduler runs, matches and places, but launches
nothing), and jobs are submitted in big clusters through the Python bindings,
each cluster with its own request_memory. At each size it measures, inside
the container (the appliance's own code and bindings), the median of several runs:

  floor   the schedd's summary-only query: it walks its whole queue and returns only
          totals, the least any scan of every job costs
  ours    the whole observe+decide: Condor.demand() read afresh (reuse=False: its cluster
          ads, and the procs of the clusters where the job queue log shows a request
          written since the last read) + supply() + decide(), as the daemon does every
          cycle once it has read the queue once
  cold    the same on a new Condor (the daemon's first cycle, or after the schedd
          rewrote its log): every proc of every cluster is compared with its cluster
  reused  the same while the queue is unchanged (demand() answers from its last read)
  before  the same with the demand query of the previous release: a group-by of every
          job on its whole request, Requirements included
  naive   what peers do: query every job with every attribute, group in Python

and reads the running daemon's own last cycle (its heartbeat: duration and phases)
and its RSS from /proc. Goals (issue 17): ours p50 <= 0.25 s at 100,000 jobs, at most
6x the floor, at least 10x faster than naive.
"""
from __future__ import annotations

import json
import statistics
import time

from .common import Appliance, image_ready, load, parser, table, write_result

CONFIG = """
scheduler: {idle_timeout: 60}
clouds:
  - {name: local, type: local, max_workers: 0}
"""
GOALS = {"ours_p50_s_at_100k": 0.25, "ours_over_floor_at_100k": 6, "naive_over_ours_at_100k": 10}

SUBMIT = """
import htcondor, json, sys
total, groups = {total}, {groups}
schedd = htcondor.Schedd()
per, extra = divmod(total, groups)
for g in range(groups):
    n = per + (1 if g < extra else 0)
    if n == 0:
        continue
    sub = htcondor.Submit({{"executable": "/bin/true", "request_cpus": "1",
                           "request_memory": str(100 + g), "request_disk": "10MB"}})
    while n > 0:                      # MAX_JOBS_PER_SUBMISSION is 20,000
        k = min(n, 20000)
        schedd.submit(sub, count=k)
        n -= k
"""

MEASURE = """
import json, statistics, time
import htcondor
from appliance import condor as C
from appliance.condor import Condor, groups_from_ads
from appliance.config import load
from appliance.matching import template_ads
from appliance.model import Observation
from appliance.scheduler import CloudView, decide
from appliance.store import Store

cfg = load()
store = Store()
views = [CloudView(cfg.cloud(h.name), h) for h in store.cloud_health(cfg)]
templates = template_ads(cfg.clouds, cfg.pool.name)
condor = Condor(cfg.pool.name)

def cycle(demand):
    t0 = time.perf_counter()
    groups = demand()
    t1 = time.perf_counter()
    slots = condor.supply()
    t2 = time.perf_counter()
    obs = Observation(time.time(), groups, slots, {{v.name: {{}} for v in views}}, True)
    plan = decide(obs, store.workers(), views, cfg.scheduler, {{}}, templates)
    t3 = time.perf_counter()
    return t3 - t0, t1 - t0, t2 - t1, t3 - t2, len(groups), sum(g.count for g in groups), len(plan.groups)

def before():
    # the previous release's demand(): a group-by of every job on its whole request
    ads = htcondor.Schedd().query(constraint="true", projection=C.DEMAND_PROJECTION, opts=htcondor.QueryOpts.GroupBy)
    return groups_from_ads(ads)

def floor():
    t0 = time.perf_counter()
    htcondor.Schedd().query(constraint="true", projection=[], opts=htcondor.QueryOpts.SummaryOnly)
    return time.perf_counter() - t0

def deviants():
    # how many procs differ from their cluster ad (none here: each cluster is one request)
    schedd = htcondor.Schedd()
    clusters = schedd.query("true", C.CLUSTER_PROJECTION, opts=htcondor.QueryOpts.ClusterAds)
    rows = schedd.query(C.deviation_constraint(clusters), ["ClusterId"], opts=htcondor.QueryOpts.GroupBy)
    return sum(int(r.get("JobCount", 0)) for r in rows)

def naive():
    # every job, every attribute (no projection), grouped by request in Python
    t0 = time.perf_counter()
    n, groups = 0, {{}}
    for ad in htcondor.Schedd().xquery(constraint="true"):
        n += 1
        if ad.get("JobStatus") == 1:
            key = tuple(str(ad.lookup(a)) if a in ad else "" for a in
                        ("RequestCpus", "RequestMemory", "RequestDisk", "Requirements"))
            groups[key] = groups.get(key, 0) + 1
    return time.perf_counter() - t0, n, len(groups)

r = lambda xs, k: [round(x[k], 4) for x in xs]
fl = [floor() for _ in range({repeats})]
cold = [cycle(lambda: Condor(cfg.pool.name).demand()) for _ in range({repeats})]
condor.demand()
ours = [cycle(lambda: condor.demand(reuse=False)) for _ in range({repeats})]
reused = [cycle(condor.demand) for _ in range({repeats})]
old = [cycle(before) for _ in range({slow_repeats})]
out = {{"floor_s": [round(x, 4) for x in fl], "ours_s": r(ours, 0), "ours_demand_s": r(ours, 1),
       "ours_supply_s": r(ours, 2), "ours_decide_s": r(ours, 3), "groups": ours[0][4], "idle_jobs": ours[0][5],
       "reused_s": r(reused, 0), "cold_s": r(cold, 0), "before_s": r(old, 0), "before_groups": old[0][4], "deviants": deviants()}}
if {naive}:
    nv = [naive() for _ in range({slow_repeats})]
    out.update(naive_s=[round(x[0], 3) for x in nv], naive_jobs=nv[0][1], naive_groups=nv[0][2])
print(json.dumps(out))
"""


def measure_size(app: Appliance, groups: int, size: int, naive: bool, repeats: int) -> dict:
    slow = 1 if size >= 50000 else 3
    m = json.loads(app.python(MEASURE.format(repeats=repeats, naive=naive, slow_repeats=slow), timeout=3600))
    assert m["idle_jobs"] == size and m["groups"] == groups, f"queue has {m['idle_jobs']} jobs in {m['groups']} groups"
    assert m["before_groups"] == groups, f"the previous query found {m['before_groups']} groups"
    # the daemon's cycle below is its last cycle's: wait until one began with the queue full
    # (the first cycle to complete may have begun before the last submit; the second did not)
    app.wait_cycles(2)
    st = app.status()["scheduler"]
    med = statistics.median
    row = {"jobs": size, "groups": groups, "floor_s": med(m["floor_s"]), "ours_s": med(m["ours_s"]),
           "ours_demand_s": med(m["ours_demand_s"]), "ours_supply_s": med(m["ours_supply_s"]),
           "ours_decide_s": med(m["ours_decide_s"]), "ours_runs": m["ours_s"], "floor_runs": m["floor_s"],
           "reused_s": med(m["reused_s"]), "cold_s": med(m["cold_s"]), "cold_runs": m["cold_s"],
           "before_s": med(m["before_s"]), "before_runs": m["before_s"],
           "deviant_procs": m["deviants"],
           "daemon_cycle_s": st.get("cycle_seconds"), "daemon_phases": st.get("cycle_phases"),
           "daemon_rss_mb": app.rss_mb("appliance.daemon"), "load1": load()[0]}
    row["ours_over_floor"] = round(row["ours_s"] / max(row["floor_s"], 1e-6), 1)
    if naive:
        row.update(naive_s=med(m["naive_s"]), naive_runs=m["naive_s"],
                   speedup=round(med(m["naive_s"]) / max(row["ours_s"], 1e-6), 1))
    return row


def run(sizes: list[int], group_counts: list[int], repeats: int = 5, naive: bool = True,
        out: str | None = None, largest_for: list[int] | None = None) -> dict:
    rows = []
    for groups in group_counts:
        # submitting the largest size takes minutes: it may be run for some request counts only
        mine = [s for s in sizes if largest_for is None or groups in largest_for or s < max(sizes)]
        with Appliance(CONFIG) as app:
            app.wait_ready()
            # the schedd's per-owner cap is exactly 100,000 by default; the benchmark goes past it
            app.sh("printf 'MAX_JOBS_PER_OWNER = 2000000\\nMAX_JOBS_SUBMITTED = 2000000\\n' "
                   "> /etc/condor/config.d/99-bench.conf && condor_reconfig -daemon schedd >/dev/null")
            have = 0
            for size in sorted(mine):
                t = time.monotonic()
                app.python(SUBMIT.format(total=size - have, groups=groups), timeout=7200, user="submit")
                submit_s = time.monotonic() - t
                have = size
                row = measure_size(app, groups, size, naive, repeats)
                row["submit_s"] = round(submit_s, 1)
                rows.append(row)
                print(f"  {groups} requests, {size} jobs: floor {row['floor_s']:.4f} s, ours {row['ours_s']:.4f} s "
                      f"({row['ours_over_floor']}x floor), cold {row['cold_s']:.3f} s, before {row['before_s']:.3f} s, "
                      f"naive {row.get('naive_s', '-')} s, daemon RSS {row['daemon_rss_mb']} MB", flush=True)
    print(table([[r["groups"], r["jobs"], f"{r['floor_s']:.4f}", f"{r['ours_s']:.4f}", f"{r['ours_demand_s']:.4f}",
                  f"{r['ours_decide_s']:.4f}", r["ours_over_floor"], f"{r['reused_s']:.4f}", f"{r['cold_s']:.3f}",
                  f"{r['before_s']:.3f}",
                  r.get("naive_s", "-"), r.get("speedup", "-"), r["deviant_procs"], r["daemon_cycle_s"],
                  r["daemon_rss_mb"], r["load1"]] for r in rows],
                ["REQUESTS", "JOBS", "FLOOR s", "OURS s", "DEMAND s", "DECIDE s", "x FLOOR", "REUSED s", "COLD s", "BEFORE s",
                 "NAIVE s", "SPEEDUP", "DEVIANTS", "DAEMON CYCLE s", "DAEMON RSS MB", "LOAD1"]))
    at = 100000 if 100000 in sizes else max(sizes)
    big = [r for r in rows if r["jobs"] == at]
    verdict = {
        "jobs": at,
        "ours_p50_s": max(r["ours_s"] for r in big),
        "ours_over_floor": max(r["ours_over_floor"] for r in big),
        "naive_over_ours": min((r["speedup"] for r in big if "speedup" in r), default=None),
        "daemon_rss_mb_max": max(r["daemon_rss_mb"] for r in rows),
    }
    print(f"\nat {at} jobs: ours p50 {verdict['ours_p50_s']:.3f} s (goal <= 0.25 s at 100,000), "
          f"{verdict['ours_over_floor']}x the floor (goal <= 6x), naive / ours {verdict['naive_over_ours']}x "
          f"(goal >= 10x); daemon RSS <= {verdict['daemon_rss_mb_max']} MB")
    result = {"goal": GOALS, "verdict": verdict, "rows": rows}
    path = write_result("decision", result, out)
    print(f"results: {path}")
    return result


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000, 1000000])
    p.add_argument("--groups", type=int, nargs="+", default=[10, 100])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-naive", action="store_true")
    p.add_argument("--largest-for", type=int, nargs="+", metavar="REQUESTS",
                   help="run the largest size with these request counts only (default: all)")
    args = p.parse_args(argv)
    image_ready(args)
    run(args.sizes, args.groups, args.repeats, not args.no_naive, args.out, args.largest_for)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
