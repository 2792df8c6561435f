"""`appliance-simulate`: the command line of the simulator.

    appliance-simulate WORKLOAD CONFIG [--seed N] [--plot out.png] [--json] [cloud options]
    appliance-simulate --from-history OUT.csv [--constraint EXPR] [--limit N]

Bad input (a workload row, a column, a file type, a configuration key, an
option) is one line on stderr naming what is wrong, and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ..config import ConfigError, load
from .clouds import OptionError, build_options
from .engine import Result, simulate
from .workload import WorkloadError, read_history, to_csv
from .workload import load as load_workload

PROG = "appliance-simulate"
EXIT_USAGE = 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Replay a workload through the appliance's scheduler on simulated clouds, "
                               "and print what it would cost. See docs/simulator.md.")
    p.add_argument("workload", nargs="?", help="jobs: a .csv or .json file (submit_time, request_cpus, "
                                               "request_memory, duration[, request_disk, request_gpus, count])")
    p.add_argument("config", nargs="?", help="the appliance's configuration file (appliance.yaml)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same run (default 0)")
    p.add_argument("--plot", metavar="PNG", help="draw idle and running jobs, workers and spend over time")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    g = p.add_argument_group("simulated clouds (repeatable)")
    g.add_argument("--boot", action="append", default=[], metavar="[CLOUD=]SECONDS|LOW-HIGH",
                   help="boot delay, fixed or uniform (default: ec2 60-120, docker 2-3, local 1.5-2.5, swarm 2.5-4)")
    g.add_argument("--capacity-errors", action="append", default=[], metavar="[CLOUD[/SHAPE]=]RATE",
                   help="share of launches refused with InsufficientInstanceCapacity, 0-1")
    g.add_argument("--refuse", action="append", default=[], metavar="CLOUD/SHAPE",
                   help="this shape refuses every launch (no capacity)")
    g.add_argument("--interruptions", action="append", default=[], metavar="[CLOUD=]RATE",
                   help="spot interruptions per worker-hour (without CLOUD: the ec2 clouds with market: spot)")
    g.add_argument("--notice", type=float, default=120.0, metavar="SECONDS",
                   help="from an interruption notice to the instance's end (default 120)")
    h = p.add_argument_group("exporting a workload")
    h.add_argument("--from-history", metavar="OUT", help="write the schedd's completed jobs (condor_history) "
                                                         "to OUT (.csv or .json) and exit; run in the appliance")
    h.add_argument("--constraint", default="true", help="with --from-history: which jobs (a ClassAd expression)")
    h.add_argument("--limit", type=int, default=-1, help="with --from-history: at most this many jobs")
    return p


def fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.from_history:
            return export_history(args)
        if not args.workload or not args.config:
            return fail("give a WORKLOAD and a CONFIG (or --from-history OUT)")
        jobs = load_workload(args.workload)
        cfg = load(args.config)
        options = build_options(cfg, args.seed, args.boot, args.capacity_errors, args.refuse,
                                args.interruptions, args.notice)
    except (WorkloadError, OptionError) as err:
        return fail(str(err))
    except ConfigError as err:
        return fail(f"configuration: {err}")
    t0 = time.perf_counter()
    result = simulate(cfg, jobs, options)
    wall = time.perf_counter() - t0
    plotted = ""
    if args.plot:
        plotted = plot(result, args.plot, f"{os.path.basename(args.workload)} on {os.path.basename(args.config)}")
    if args.json:
        out = {"workload": args.workload, "config": args.config, "seed": args.seed,
               "wall_seconds": round(wall, 3), **result.as_dict()}
        if args.plot:
            out["plot"] = plotted or None
        print(json.dumps(out, indent=2))
    else:
        print(report(result, args.workload, args.config, args.seed, wall, len(cfg.clouds)))
        if args.plot and plotted:
            print(f"plot: {plotted}")
    if args.plot and not plotted:
        print("plot: matplotlib is not installed here (apt-get install python3-matplotlib, or pip install "
              "matplotlib); numbers only", file=sys.stderr)
    return 0


def export_history(args) -> int:
    out = args.from_history
    ext = os.path.splitext(out)[1].lower()
    if ext not in (".csv", ".json"):
        return fail(f"{out}: unknown workload file type {ext or '(none)'!r}: name it .csv or .json")
    jobs, skipped = read_history(args.constraint, args.limit)
    if not jobs:
        return fail(f"no completed jobs in the schedd's history match {args.constraint!r}"
                    + (f" (skipped: {_skipped(skipped)})" if skipped else ""))
    if ext == ".csv":
        text = to_csv(jobs)
    else:
        text = json.dumps([{"submit_time": j.submit, "request_cpus": j.cpus, "request_memory": j.memory,
                            "request_disk": j.disk, "request_gpus": j.gpus, "duration": j.duration}
                           for j in jobs], indent=1) + "\n"
    try:
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as err:
        return fail(f"{out}: cannot write: {err.strerror}")
    print(f"{out}: {len(jobs)} jobs" + (f"; skipped {_skipped(skipped)}" if skipped else ""))
    return 0


def _skipped(skipped: dict) -> str:
    return ", ".join(f"{n} {why}" for why, n in sorted(skipped.items()))


def duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def report(r: Result, workload: str, config: str, seed: int, wall: float, clouds: int) -> str:
    lines = [
        f"simulated {r.jobs:,} jobs from {workload} on {clouds} cloud(s) of {config}, seed {seed}: "
        f"{wall:.2f} s, {r.cycles:,} scheduler cycles",
        f"  makespan          {duration(r.makespan)}  (first submit to last completion; last worker gone at "
        f"{duration(r.end)})",
        f"  cost              {r.cost:.2f}  (each worker at its shape's price, per second from launch to end)",
        f"  worker-hours      {r.worker_hours:.1f}",
        f"  idle fraction     {100 * r.idle_fraction:.1f} %  (worker time, boot included, running no job)",
        f"  cpu utilisation   {100 * r.cpu_utilisation:.1f} %  (job cpu-seconds / worker cpu-seconds)",
        f"  jobs completed    {r.completed:,} of {r.jobs:,}",
        f"  jobs requeued     {r.requeued:,}  (runs cut short, run again from the start)",
        f"  workers           {r.workers:,} launched, {r.peak_workers:,} at most at once; "
        f"{r.launch_failures:,} launches refused, {r.interruptions:,} interrupted",
        f"  job wait          mean {r.wait_mean:.0f} s, p95 {r.wait_p95:.0f} s  (submit to start)",
    ]
    if r.by_shape:
        lines.append("  by shape:")
        width = max(len(k) for k in r.by_shape)
        for key, row in sorted(r.by_shape.items()):
            price = f"{row['price']:g}/h" if row["price"] is not None else "no price"
            lines.append(f"    {key.ljust(width)}  {price:>10}  {row['workers']:>6} workers  "
                         f"{row['hours']:>9.1f} h  {row['cost']:>9.2f}")
    for key, why in r.never_ran.items():
        lines.append(f"  never completed: jobs of {key}: {why}")
    if r.note:
        lines.append(f"  note: {r.note}")
    return "\n".join(lines)


def plot(r: Result, path: str, title: str) -> str:
    """Draw the run; returns the path, or "" when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ""
    s = r.samples
    hours = [x.t / 3600 for x in s]
    fig, axes = plt.subplots(3, 1, figsize=(8, 6.4), sharex=True, dpi=80)
    top, mid, low = axes
    top.step(hours, [x.idle for x in s], where="post", label="idle jobs", color="tab:orange")
    top.step(hours, [x.running for x in s], where="post", label="running jobs", color="tab:blue")
    top.set_ylabel("jobs")
    top.legend(loc="upper right", fontsize=8)
    mid.step(hours, [x.workers for x in s], where="post", color="tab:green")
    mid.set_ylabel("workers")
    low.plot(hours, [x.spend for x in s], color="tab:red")
    low.set_ylabel("spend")
    low.set_xlabel("hours since the first submit")
    top.set_title(f"{title}: cost {r.cost:.2f}, makespan {duration(r.makespan)}", fontsize=10)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
