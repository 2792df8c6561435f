"""Cost: what cheapest-fit shapes save, measured with the simulator (no Docker needed).

    python3 -m bench.cost                  # 2,000 jobs, five EC2 shapes vs one; plots in docs/
    python3 -m bench.cost --idle-timeout 60 --no-plots --out /tmp/cost.json

The workload (bench/workloads/mixed-2000.csv, made by this script with seed 1):
2,000 jobs in 8 bursts 30 minutes apart, each burst 250 jobs submitted over 60 s,
in a shuffled mix of 70% 1 cpu / 2 GB for 10 min, 20% 4 cpus / 8 GB for 30 min
and 10% 1 cpu / 30 GB for 20 min.

The clouds: one ec2 cloud, us-east-1 on-demand Linux list prices per hour of five
instance types (https://aws.amazon.com/ec2/pricing/on-demand/, read 2026-11-30), memory
as the instance's GiB (the shapes advertise it whole), boots of 60-120 s (the
simulator's ec2 default):

    m6i.large    2 cpu    8 GiB  0.096
    m6i.xlarge   4 cpu   16 GiB  0.192
    c6i.xlarge   4 cpu    8 GiB  0.170
    r6i.xlarge   4 cpu   32 GiB  0.252
    r6i.2xlarge  8 cpu   64 GiB  0.504

It compares the cost of the same appliance (same limits, idle_timeout, interval)
with the five shapes, with one shape (the cheapest that fits every job: r6i.xlarge),
and with two lower bounds (docs/benchmarks.md#cost):

  bound    a true lower bound: per-unit prices (p $/cpu-h, q $/GiB-h) that no shape
           undercuts (p * cpus + q * GiB <= price for every shape), chosen to make the
           workload's cpu-hours and GiB-hours cost the most; any pool, however packed,
           costs at least that. A 2-variable linear programme, solved at its vertices.
  ideal    each job alone at its cheapest per-job rate, workers always full, no boot and no
           idle time: min over shapes of price / (jobs of its kind a worker holds).
           What cheapest fit aims at; not a bound (jobs of different kinds can share).

Goals (issue 14): shapes <= 1.15 x bound, one shape >= 2 x shapes, makespan with shapes
<= 1.1 x one shape's. The scheduler's own settings are the benchmark's to choose
(documented in the JSON): max_workers and max_booting high enough for a burst.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

warnings.filterwarnings("ignore", message="Neither the environment variable CONDOR_CONFIG")

from appliance.config import loads  # noqa: E402
from appliance.shapes import Request, Shape, fits  # noqa: E402
from appliance.simulate.cli import duration, plot  # noqa: E402
from appliance.simulate.clouds import build_options  # noqa: E402
from appliance.simulate.engine import Simulation, simulate  # noqa: E402
from appliance.simulate.workload import Job, to_csv  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
WORKLOADS = REPO / "bench" / "workloads"
DOCS = REPO / "docs"

# us-east-1, on-demand, Linux, per hour (https://aws.amazon.com/ec2/pricing/on-demand/)
SHAPES = [Shape("m6i.large", 2, 8 * 1024, 100_000, price=0.096),
          Shape("m6i.xlarge", 4, 16 * 1024, 100_000, price=0.192),
          Shape("c6i.xlarge", 4, 8 * 1024, 100_000, price=0.17),
          Shape("r6i.xlarge", 4, 32 * 1024, 100_000, price=0.252),
          Shape("r6i.2xlarge", 8, 64 * 1024, 100_000, price=0.504)]
# (share, cpus, memory MB, seconds)
MIX = [(0.7, 1, 2048, 600), (0.2, 4, 8192, 1800), (0.1, 1, 30 * 1024, 1200)]
GOALS = {"shapes_over_bound": 1.15, "one_shape_over_shapes": 2.0, "makespan_ratio": 1.1}


def workload(n: int = 2000, bursts: int = 8, gap: float = 1800.0, spread: float = 60.0, seed: int = 1) -> list[Job]:
    rng = random.Random(seed)
    kinds = []
    for share, cpus, memory, seconds in MIX[1:]:
        kinds += [(cpus, memory, seconds)] * round(n * share)
    kinds = [(MIX[0][1], MIX[0][2], MIX[0][3])] * (n - len(kinds)) + kinds
    rng.shuffle(kinds)
    per = -(-n // bursts)
    jobs = [Job((i // per) * gap + rng.uniform(0, spread), c, m, 1024, s) for i, (c, m, s) in enumerate(kinds)]
    return sorted(jobs, key=lambda j: j.submit)


def steady(n: int, hours: float = 24.0, seed: int = 1) -> list[Job]:
    """The same mix arriving one by one at random over `hours` (for the speed figure)."""
    rng = random.Random(seed)
    jobs = []
    for _ in range(n):
        _, cpus, memory, seconds = rng.choices(MIX, weights=[m[0] for m in MIX])[0]
        jobs.append(Job(rng.uniform(0, hours * 3600), cpus, memory, 1024, seconds))
    return sorted(jobs, key=lambda j: j.submit)


def config(shapes, idle_timeout: float, interval: float, max_workers: int, max_booting: int) -> str:
    lines = "\n".join(f"      - {{name: {s.name}, cpus: {s.cpus}, memory: {s.memory}, disk: {s.disk}, "
                      f"price: {s.price}}}" for s in shapes)
    return f"""# bench/cost.py: the appliance of the cost benchmark (simulated; the ami is a placeholder)
pool: {{condor_host: cm.example.org}}
scheduler: {{interval: {interval:g}, idle_timeout: {idle_timeout:g}, max_workers: {max_workers}, max_booting: {max_booting}}}
clouds:
  - name: aws
    type: ec2
    region: us-east-1
    ami: ami-0123456789abcdef0
    max_workers: {max_workers}
    shapes:
{lines}
"""


def one_shape(shapes, jobs) -> Shape:
    """The cheapest shape that holds every job (ties: the smaller)."""
    requests = {(j.cpus, j.memory, j.disk, j.gpus) for j in jobs}
    ok = [s for s in shapes if all(fits(s, Request(*r)) >= 1 for r in requests)]
    return min(ok, key=lambda s: (s.price, s.size))


def unit_bound(shapes, jobs) -> tuple[float, float, float]:
    """(cost, $/cpu-h, $/GiB-h): the best per-unit prices no shape undercuts, at the LP's vertices."""
    cpu_h = sum(j.cpus * j.duration for j in jobs) / 3600
    gib_h = sum(j.memory / 1024 * j.duration for j in jobs) / 3600
    rows = [(s.cpus, s.memory / 1024, s.price) for s in shapes]
    points = [(min(p / c for c, _, p in rows), 0.0), (0.0, min(p / g for _, g, p in rows))]
    for (c1, g1, p1), (c2, g2, p2) in itertools.combinations(rows, 2):
        det = c1 * g2 - c2 * g1
        if abs(det) > 1e-12:
            points.append(((p1 * g2 - p2 * g1) / det, (c1 * p2 - c2 * p1) / det))
    feasible = [(p, q) for p, q in points
                if p >= -1e-12 and q >= -1e-12 and all(p * c + q * g <= price + 1e-9 for c, g, price in rows)]
    p, q = max(feasible, key=lambda pq: pq[0] * cpu_h + pq[1] * gib_h)
    return p * cpu_h + q * gib_h, p, q


def ideal(shapes, jobs) -> float:
    total = 0.0
    for j in jobs:
        rate = min(s.price / fits(s, Request(j.cpus, j.memory, j.disk, j.gpus))
                   for s in shapes if fits(s, Request(j.cpus, j.memory, j.disk, j.gpus)) >= 1)
        total += rate * j.duration / 3600
    return total


def per_job_max(shapes, jobs) -> float:
    """The issue's simple per-job figure: max(cpus x cheapest $/cpu-h, GiB x cheapest $/GiB-h) x hours."""
    cpu = min(s.price / s.cpus for s in shapes)
    gib = min(s.price / (s.memory / 1024) for s in shapes)
    return sum(max(j.cpus * cpu, j.memory / 1024 * gib) * j.duration / 3600 for j in jobs)


def run(text: str, jobs, seed: int):
    cfg = loads(text)
    t0 = time.perf_counter()
    result = simulate(cfg, jobs, build_options(cfg, seed))
    return result, time.perf_counter() - t0


class Ordered(Simulation):
    """The schedd's group-by query returns the groups in its own order; place() gives the
    room of existing and booting workers to the groups in that order. This run lists them
    sorted by `key` instead, to show what the order costs."""

    def __init__(self, *args, key=None, **kw):
        super().__init__(*args, **kw)
        self.key = key

    def observe(self):
        obs = super().observe()
        return replace(obs, groups=tuple(sorted(obs.groups, key=self.key)))


ORDERS = {"small jobs first": lambda g: (g.memory, g.cpus), "big jobs first": lambda g: (-g.memory, -g.cpus)}


def group_orders(text: str, jobs, seed: int) -> dict:
    cfg = loads(text)
    out = {}
    for name, key in ORDERS.items():
        r = Ordered(cfg, jobs, build_options(cfg, seed), key=key).run()
        out[name] = {"cost": round(r.cost, 4), "makespan": round(r.makespan, 1), "workers": r.workers,
                     "by_shape": {k: v["workers"] for k, v in r.by_shape.items()}}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--idle-timeouts", default="300,60",
                    help="idle_timeout values to compare, comma-separated; the last is the benchmark's own "
                         "(plots, goals); 300 is the appliance's default")
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--max-workers", type=int, default=1000)
    ap.add_argument("--max-booting", type=int, default=1000)
    ap.add_argument("--seeds", default="1,2,3,4,5",
                    help="workload seeds for the spread at the benchmark's idle_timeout (the mix's order differs)")
    ap.add_argument("--speed", type=int, default=10_000, help="also time a run of this many jobs (0: no)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--out", help="the JSON (default bench/results/cost.json)")
    args = ap.parse_args(argv)

    jobs = workload(args.jobs, seed=args.seed)
    single = one_shape(SHAPES, jobs)
    bound, p, q = unit_bound(SHAPES, jobs)
    best, best_one, simple = ideal(SHAPES, jobs), ideal([single], jobs), per_job_max(SHAPES, jobs)
    timeouts = [float(x) for x in args.idle_timeouts.split(",") if x.strip()]
    print(f"{args.jobs} jobs; interval {args.interval:g} s, max_workers {args.max_workers}, "
          f"max_booting {args.max_booting}; boot 60-120 s")
    print(f"{'':30} {'cost':>8} {'makespan':>12} {'workers':>8} {'peak':>5} {'worker-h':>9} {'idle':>6} "
          f"{'cpu use':>7} {'sim s':>6}")
    runs = []
    for timeout in timeouts:
        settings = (timeout, args.interval, args.max_workers, args.max_booting)
        five_cfg, one_cfg = config(SHAPES, *settings), config([single], *settings)
        five, t_five = run(five_cfg, jobs, args.seed)
        one, t_one = run(one_cfg, jobs, args.seed)
        for name, r, wall in (("five shapes", five, t_five), (f"one shape: {single.name}", one, t_one)):
            print(f"{name + f', idle {timeout:g} s':30} {r.cost:8.2f} {duration(r.makespan):>12} {r.workers:8d} "
                  f"{r.peak_workers:5d} {r.worker_hours:9.1f} {100 * r.idle_fraction:5.1f}% "
                  f"{100 * r.cpu_utilisation:6.1f}% {wall:6.2f}")
        ratios = {"shapes_over_bound": five.cost / bound, "one_shape_over_shapes": one.cost / five.cost,
                  "makespan_ratio": five.makespan / one.makespan, "shapes_over_ideal": five.cost / best,
                  "shapes_over_per_job_max": five.cost / simple}
        met = {"shapes_over_bound": ratios["shapes_over_bound"] <= GOALS["shapes_over_bound"],
               "one_shape_over_shapes": ratios["one_shape_over_shapes"] >= GOALS["one_shape_over_shapes"],
               "makespan_ratio": ratios["makespan_ratio"] <= GOALS["makespan_ratio"]}
        runs.append({"idle_timeout": timeout, "shapes": {**five.as_dict(), "sim_seconds": round(t_five, 2)},
                     "one": {**one.as_dict(), "sim_seconds": round(t_one, 2)},
                     "ratios": {k: round(v, 4) for k, v in ratios.items()}, "met": met,
                     "_results": (five, one, five_cfg, one_cfg)})
    print(f"{'lower bound':30} {bound:8.2f}   (at {p:.4f} per cpu-h and {q:.5f} per GiB-h)")
    print(f"{'ideal packing, five shapes':30} {best:8.2f}   (each job at its cheapest per-job rate, no boot or idle)")
    print(f"{'ideal packing, one shape':30} {best_one:8.2f}   (the most one shape could cost less: "
          f"{best_one / best:.3f} x)")
    print(f"{'per-job max':30} {simple:8.2f}   (max of cpus and GiB at the cheapest unit prices, per job)")
    for r in runs:
        for k, goal in GOALS.items():
            print(f"  idle {r['idle_timeout']:g} s: {k:22} {r['ratios'][k]:6.3f}  goal "
                  f"{'>=' if k == 'one_shape_over_shapes' else '<='} {goal}: {'met' if r['met'][k] else 'MISSED'}")
        print(f"  idle {r['idle_timeout']:g} s: {'shapes_over_ideal':22} {r['ratios']['shapes_over_ideal']:6.3f}; "
              f"over the per-job max {r['ratios']['shapes_over_per_job_max']:.3f}")
    five, one, five_cfg, one_cfg = runs[-1].pop("_results")
    for r in runs[:-1]:
        r.pop("_results")
    orders = group_orders(five_cfg, jobs, args.seed)
    for k, v in orders.items():
        shapes = ", ".join(f"{n} x {key.split('/')[1]}" for key, n in sorted(v["by_shape"].items()))
        print(f"  five shapes, idle {timeouts[-1]:g} s, groups listed {k}: cost {v['cost']:.2f} ({shapes})")
    seeds = []
    for seed in [int(x) for x in args.seeds.split(",") if x.strip()]:
        js = workload(args.jobs, seed=seed)
        first = []
        for j in js:
            if (j.cpus, j.memory) not in first:
                first.append((j.cpus, j.memory))
        a, _ = run(five_cfg, js, seed)
        b, _ = run(one_cfg, js, seed)
        cfg = loads(five_cfg)
        big_first = Ordered(cfg, js, build_options(cfg, seed), key=ORDERS["big jobs first"]).run()
        seeds.append({"seed": seed, "groups_in_order": [f"{c} cpu/{m // 1024} GB" for c, m in first],
                      "shapes": round(a.cost, 4), "one": round(b.cost, 4), "makespan_ratio": round(a.makespan / b.makespan, 4),
                      "shapes_over_bound": round(a.cost / bound, 4), "one_shape_over_shapes": round(b.cost / a.cost, 4),
                      "by_shape": {k: v["workers"] for k, v in a.by_shape.items()},
                      "shapes_big_jobs_first": round(big_first.cost, 4)})
    for row in seeds:
        print(f"  seed {row['seed']}: groups {' | '.join(row['groups_in_order']):36} five shapes {row['shapes']:6.2f} "
              f"one shape {row['one']:6.2f}  over bound {row['shapes_over_bound']:.3f}  one/five "
              f"{row['one_shape_over_shapes']:.3f}  makespan {row['makespan_ratio']:.3f}  "
              f"(big jobs listed first: {row['shapes_big_jobs_first']:.2f})")
    if not args.out:
        WORKLOADS.mkdir(parents=True, exist_ok=True)
        (WORKLOADS / f"mixed-{args.jobs}.csv").write_text(to_csv(jobs))
        (WORKLOADS / "ec2-five-shapes.yaml").write_text(five_cfg)
        (WORKLOADS / "ec2-one-shape.yaml").write_text(one_cfg)

    speed = []
    if args.speed:
        for kind, big in (("8 bursts", workload(args.speed, seed=args.seed)),
                          ("steady over 24 h", steady(args.speed, seed=args.seed))):
            r, wall = run(five_cfg, big, args.seed)
            speed.append({"jobs": args.speed, "arrivals": kind, "seconds": round(wall, 2), "cycles": r.cycles,
                          "workers": r.workers, "peak_workers": r.peak_workers, "completed": r.completed,
                          "idle_timeout": timeouts[-1]})
            print(f"  {args.speed:,} jobs, {kind}: simulated in {wall:.2f} s ({r.cycles:,} cycles, "
                  f"{r.workers:,} workers, {r.peak_workers} at once)")

    plots = {}
    if not args.no_plots:
        for name, r in (("cost-shapes", five), ("cost-one-shape", one)):
            path = plot(r, str(DOCS / f"{name}.png"), f"{args.jobs} jobs, "
                        + ("five EC2 shapes" if name == "cost-shapes" else f"one shape ({single.name})"))
            plots[name] = os.path.relpath(path, REPO) if path else "matplotlib missing"

    out = Path(args.out) if args.out else RESULTS / "cost.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "benchmark": "cost", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "kernel": platform.release()},
        "load_at_end": [round(x, 2) for x in os.getloadavg()],
        "workload": {"jobs": args.jobs, "seed": args.seed, "mix": MIX, "bursts": 8, "gap_s": 1800, "spread_s": 60},
        "prices": {s.name: {"cpus": s.cpus, "memory_mb": s.memory, "price": s.price} for s in SHAPES},
        "price_source": "https://aws.amazon.com/ec2/pricing/on-demand/ (us-east-1, Linux, on-demand)",
        "settings": {"interval": args.interval, "max_workers": args.max_workers,
                     "max_booting": args.max_booting, "boot": "60-120 s uniform"},
        "one_shape": single.name,
        "runs": runs,
        "bound": {"cost": round(bound, 4), "per_cpu_hour": round(p, 6), "per_gib_hour": round(q, 6)},
        "ideal": round(best, 4), "ideal_one_shape": round(best_one, 4), "per_job_max": round(simple, 4),
        "goals": GOALS,
        "seeds": seeds,
        "group_order": {"observed": {"cost": round(five.cost, 4), "makespan": round(five.makespan, 1),
                                     "workers": five.workers,
                                     "by_shape": {k: v["workers"] for k, v in five.by_shape.items()}}, **orders},
        "speed": speed, "plots": plots,
    }
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {os.path.relpath(out, REPO) if out.is_relative_to(REPO) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
