"""Scale-up latency: condor_submit to the job executing, on a cold or warm worker.

    python3 -m bench.latency --cloud local --trials 20
    python3 -m bench.latency --cloud local --trials 20 --warm

Each trial submits one job and reads the time it started executing (the job
prints it). Cold trials start from zero workers (the previous worker is
drained away first); warm trials keep an idle worker. The events give where
the time went: submit -> launch -> joined the pool -> executing.
"""
from __future__ import annotations

import argparse
import time

from .common import Appliance, build_image, stamp_job, summary, table, write_result

CONFIGS = {
    "local": """
scheduler: {{interval: 1, idle_timeout: {idle}}}
clouds:
  - {{name: local, type: local, max_workers: 2}}
""",
}


def trial(app: Appliance, i: int, warm: bool) -> dict:
    d = f"/home/submit/lat{i}"
    app.sh(stamp_job(d, "job"), user="submit")
    if not warm:
        app.wait("zero workers", lambda: not app.live_workers(), timeout=300)
    events_before = len(app.status("-e", "-n", "100000")["data"])
    t0 = float(app.sh(f"cd {d} && date +%s.%N && condor_submit job.sub >/dev/null", user="submit").split()[0])
    out = app.wait("the job to run", lambda: app.sh(f"cat {d}/job.out 2>/dev/null", check=False).strip(), timeout=300)
    started = float(out.split()[0])
    events = app.status("-e", "-n", "100000")["data"][events_before:]
    def first(to):
        for e in events:
            if e["to_state"] == to:
                return round(e["time"] - t0, 2)
        return None
    return {"latency": round(started - t0, 3), "launched": first("requested"), "joined": first("idle"),
            "busy": first("busy")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cloud", default="local", choices=sorted(CONFIGS))
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--warm", action="store_true", help="keep an idle worker between trials")
    p.add_argument("--no-build", action="store_true")
    args = p.parse_args(argv)
    if not args.no_build:
        build_image()
    idle = 600 if args.warm else 3
    with Appliance(CONFIGS[args.cloud].format(idle=idle)) as app:
        app.wait_ready()
        if args.warm:   # one untimed job brings up the worker that the trials reuse
            trial(app, 999, warm=True)
        rows = [trial(app, i, args.warm) for i in range(args.trials)]
    lat = summary([r["latency"] for r in rows])
    print(table([[i + 1, r["latency"], r["launched"], r["joined"], r["busy"]] for i, r in enumerate(rows)],
                ["TRIAL", "SUBMIT->RUNNING s", "LAUNCHED s", "JOINED s", "BUSY s"]))
    print(f"\n{args.cloud} {'warm' if args.warm else 'cold'}: p50 {lat['p50']} s, p95 {lat['p95']} s, "
          f"min {lat['min']} s, max {lat['max']} s over {lat['n']} trials")
    path = write_result(f"latency-{args.cloud}-{'warm' if args.warm else 'cold'}",
                        {"cloud": args.cloud, "warm": args.warm, "trials": rows, "latency": lat})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
