"""Scale-up latency: condor_submit to the job executing, on a cold or warm worker.

    python3 -m bench.latency --cloud local --trials 20
    python3 -m bench.latency --cloud docker --trials 20
    python3 -m bench.latency --cloud swarm --trials 5     (a one-node swarm if the engine is in none)
    python3 -m bench.latency --cloud local --trials 20 --warm
    python3 -m bench.latency --cloud local --trials 20 --min-idle 1

Each trial submits one job and reads the time it started executing (the job
prints `date` first thing; the worker's clock is the host's). Cold trials
start from zero workers (the previous worker is drained away first); warm
trials keep an idle worker (idle_timeout 600 s); min_idle trials run the cloud
with `min_idle: N` and a short idle_timeout, as a pool would keep warm headroom:
each job takes the kept worker and a replacement boots. The appliance's events say where the time went:

  see     submit -> the scheduler decided to launch a worker (its poll + decide)
  boot    that decision -> the worker's startd is in the collector and the scheduler saw
          it: the driver's launch call (process spawn / docker create+start), the
          master and startd starting, the first advertisement, the next scheduler poll
          (the launch call is not split out: its events carry the cycle's time)
  run     joined -> executing (reschedule, negotiation, claim, shadow/starter, file transfer;
          1 s of it is the starter's sleep after the input transfer, for a job that does
          not name its outputs: --named-outputs times a job that does)

Goals: cold p50 <= 3 s (issue 17; issue 7 asked 5 s), p95 <= 8 s; warm p50 <= 2 s (issue 7);
with min_idle: 1, p50 <= 1 s (issue 17).
"""
from __future__ import annotations

import contextlib
import time
import uuid

from .common import (
    IMAGE,
    Appliance,
    image_ready,
    load,
    parser,
    sh,
    stamp_job,
    summary,
    table,
    write_result,
)

CONFIGS = {
    "local": """
scheduler: {{idle_timeout: {idle}}}
clouds:
  - {{name: local, type: local, max_workers: {max_workers}, min_idle: {min_idle}}}
""",
    "docker": """
scheduler: {{idle_timeout: {idle}, on_shutdown: remove}}
clouds:
  - {{name: docker, type: docker, image: "{image}", max_workers: {max_workers}, min_idle: {min_idle},
     worker: {{cpus: 1, memory: 512}}}}
""",
}
CONFIGS["swarm"] = CONFIGS["docker"].replace("docker, type: docker", "swarm, type: swarm")
GOALS = {"cold": {"p50": 3.0, "p95": 8.0}, "warm": {"p50": 2.0}, "min_idle": {"p50": 1.0}}


def settled(app: Appliance, min_idle: int) -> bool:
    """The headroom is back: min_idle idle workers, none starting, no job left running."""
    workers = app.live_workers()
    return (sum(w["state"] == "idle" for w in workers) >= min_idle
            and not any(w["state"] in ("requested", "booting", "busy") for w in workers))


def trial(app: Appliance, i: int, warm: bool, min_idle: int = 0, named_outputs: bool = False) -> dict:
    d = f"/home/submit/lat{i}"
    app.sh(stamp_job(d, "job", named_outputs), user="submit")
    if min_idle:
        app.wait("the headroom", lambda: settled(app, min_idle), timeout=300)
    elif warm:
        app.wait("an idle worker", lambda: any(w["state"] == "idle" for w in app.live_workers()), timeout=300)
    else:
        app.wait("zero workers", lambda: not app.live_workers(), timeout=300, every=0.5)
    # HTCondor's timing, not the scheduler's: let the previous trial's reschedule and negotiation settle
    time.sleep(1.5)
    events_before = max((e["id"] for e in app.status("-e", "-n", "100000")["data"]), default=0)
    host_load = load()[0]
    t0 = float(app.sh(f"cd {d} && date +%s.%N && condor_submit job.sub >/dev/null", user="submit").split()[0])
    out = app.wait("the job to run", lambda: app.sh(f"cat {d}/job.out 2>/dev/null", check=False).strip(),
                   timeout=300, every=0.5)
    started = float(out.split()[0])
    events = [e for e in app.status("-e", "-n", "100000")["data"] if e["id"] > events_before]

    def at(to):
        for e in events:
            if e["to_state"] == to:
                return e["time"]
        return None
    requested, booting, joined = at("requested"), at("booting"), at("idle") or at("busy")
    joined = joined if joined is not None else None
    row = {"latency": round(started - t0, 3), "load1": host_load}
    if not warm and requested and booting and joined:
        row.update(see=round(requested - t0, 2), boot=round(joined - requested, 2),
                   run=round(started - joined, 2))
    return row


@contextlib.contextmanager
def swarm_overlay():
    """An attachable overlay for the appliance and its swarm workers (and a swarm, if none)."""
    made_swarm = sh("docker", "info", "--format", "{{.Swarm.LocalNodeState}}").strip() != "active"
    if made_swarm:
        sh("docker", "swarm", "init", "--advertise-addr", "127.0.0.1")
    name = f"bench-ov-{uuid.uuid4().hex[:8]}"
    sh("docker", "network", "create", "-d", "overlay", "--attachable", name)
    try:
        yield name
    finally:
        sh("docker", "network", "rm", name, check=False)
        if made_swarm:
            sh("docker", "swarm", "leave", "--force", check=False)


def run(cloud: str, trials: int, warm: bool, out: str | None = None, min_idle: int = 0,
        named_outputs: bool = False) -> dict:
    idle = 600 if warm and not min_idle else 2
    engine = cloud in ("docker", "swarm")
    config = CONFIGS[cloud].format(idle=idle, image=IMAGE, min_idle=min_idle, max_workers=max(2, min_idle + 1))
    with (swarm_overlay() if cloud == "swarm" else contextlib.nullcontext(engine)) as network, \
            Appliance(config, docker_socket=engine, network=network) as app:
        app.wait_ready()
        if warm and not min_idle:   # one untimed job brings up the worker that the trials reuse
            trial(app, 999, warm=False)
        rows = [trial(app, i, warm, min_idle, named_outputs) for i in range(trials)]
    kind = "min_idle" if min_idle else "warm" if warm else "cold"
    job = "named-outputs" if named_outputs else "default"
    lat = summary([r["latency"] for r in rows])
    phases = {k: summary([r[k] for r in rows if k in r]) for k in ("see", "boot", "run")}
    phases = {k: v for k, v in phases.items() if v}
    print(table([[i + 1, r["latency"], r.get("see", "-"), r.get("boot", "-"), r.get("run", "-"), r["load1"]]
                 for i, r in enumerate(rows)],
                ["TRIAL", "SUBMIT->RUNNING s", "SEE s", "BOOT s", "RUN s", "LOAD1"]))
    goal = GOALS[kind]
    verdict = ", ".join(f"{k} {lat[k]} s (goal <= {v} s: {'met' if lat[k] <= v else 'MISSED'})"
                        for k, v in goal.items())
    print(f"\n{cloud} {kind} ({job} job): {verdict}; min {lat['min']} s, max {lat['max']} s over {lat['n']} trials")
    if phases:
        print("phase medians: " + ", ".join(f"{k} {v['p50']} s" for k, v in phases.items()))
    result = {"cloud": cloud, "warm": warm, "min_idle": min_idle, "job": job, "goal": goal, "latency": lat,
              "phases": phases, "trials": rows}
    path = write_result(f"latency-{cloud}-{kind}" + ("-named-outputs" if named_outputs else ""), result, out)
    print(f"results: {path}")
    return result


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--cloud", default="local", choices=sorted(CONFIGS))
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--warm", action="store_true", help="keep an idle worker between trials")
    p.add_argument("--min-idle", type=int, default=0, metavar="N",
                   help="run the cloud with min_idle: N (warm headroom) and time jobs that take a kept worker")
    p.add_argument("--named-outputs", action="store_true",
                   help="the job names its outputs (+TransferOutput): HTCondor's starter then skips the one-second "
                        "sleep it makes before a job that sends back every changed file")
    args = p.parse_args(argv)
    image_ready(args)
    run(args.cloud, args.trials, args.warm or args.min_idle > 0, args.out, args.min_idle, args.named_outputs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
