"""Burst: N jobs of S seconds on up to W docker workers started from zero, against a
static pool of W workers already running.

    python3 -m bench.burst                                 # 200 jobs of 10 s, 8 workers
    python3 -m bench.burst --jobs 16 --seconds 2 --workers 2   # a smoke run

Both runs use the docker cloud (sibling containers of this same image, one cpu
each, so one job per worker). The static run first brings up W workers with
W 20-second jobs and waits until they are all idle; the elastic run starts with
none. A sampler inside the appliance records, every 0.5 s, idle and running
jobs and live workers. From the submit to the last job's end:

  makespan             seconds from condor_submit to an empty queue
  busy worker-s        the integral of running jobs (one job per worker)
  idle worker-s        the integral of live workers (booting included) minus busy
  workers launched     how many the scheduler started (never more than needed: <= W, <= jobs)

Goals (issue 7): elastic makespan <= 1.2 x static, idle worker-s < 15% of busy.
The plot (--plot, default docs/burst.png) shows idle jobs, running jobs and
workers over time for both runs.
"""
from __future__ import annotations

import json
import subprocess
import time

from .common import IMAGE, REPO, Appliance, image_ready, load, parser, table, write_result

CONFIG = """
scheduler: {{idle_timeout: {idle}, on_shutdown: remove}}
clouds:
  - {{name: docker, type: docker, image: "{image}", max_workers: {workers}, worker: {{cpus: 1, memory: 512}}}}
"""
GOALS = {"makespan_ratio": 1.2, "idle_fraction": 0.15}

SAMPLER = r"""
import json, os, sys, time
from collections import Counter
import htcondor
from appliance import lifecycle
from appliance.store import Store
store, schedd = Store(), htcondor.Schedd()
with open("/tmp/burst-samples.jsonl", "a") as out:
    while not os.path.exists("/tmp/burst-stop"):
        t = time.time()
        try:
            counts = {a["JobStatus"]: a["JobCount"] for a in
                      schedd.query("true", ["JobStatus"], opts=htcondor.QueryOpts.GroupBy)}
        except Exception:
            counts = None
        live = [w for w in store.workers() if w.state in lifecycle.LIVE]
        out.write(json.dumps({"t": t, "idle": None if counts is None else counts.get(1, 0),
                              "running": None if counts is None else counts.get(2, 0),
                              "workers": len(live), "launched": len(store.workers()),
                              "states": Counter(w.state.value for w in live)}) + "\n")
        out.flush()
        time.sleep(max(0.5 - (time.time() - t), 0.05))
"""


def job(jobs: int, seconds: int) -> str:
    return (f"executable = /bin/sleep\narguments = {seconds}\ntransfer_executable = false\n"
            f"request_cpus = 1\nrequest_memory = 128\nrequest_disk = 10MB\nqueue {jobs}\n")


def queue_empty(app: Appliance) -> bool:
    out = app.sh("condor_q -allusers -af JobStatus | wc -l", check=False).strip()
    return out == "0"


def one_run(static: bool, jobs: int, seconds: int, workers: int) -> dict:
    idle_timeout = 3600 if static else max(2 * seconds, 10)
    cfg = CONFIG.format(idle=idle_timeout, image=IMAGE, workers=workers)
    with Appliance(cfg, docker_socket=True, network=True) as app:
        app.wait_ready()
        app.sh("mkdir -p /home/submit/burst", user="submit")
        if static:   # bring up the static pool: W jobs long enough that all W workers are needed at once
            app.sh(f"cd /home/submit/burst && printf '{job(workers, 20)}' > warm.sub && condor_submit warm.sub",
                   user="submit")
            app.wait("the static pool", lambda: queue_empty(app) and sum(
                w["state"] == "idle" for w in app.live_workers()) == workers, timeout=600, every=1)
        subprocess.run(["docker", "exec", "-i", app.name, "sh", "-c", "cat > /tmp/burst-sampler.py"],
                       input=SAMPLER, text=True, check=True)
        subprocess.run(["docker", "exec", "-d", app.name, "python3", "/tmp/burst-sampler.py"], check=True)
        time.sleep(2)    # the sampler's clock, not the scheduler's: a few samples (every 0.5 s) before the submit
        host_load = load()
        t0 = float(app.sh(f"cd /home/submit/burst && printf '{job(jobs, seconds)}' > burst.sub && "
                          "date +%s.%N && condor_submit burst.sub >/dev/null", user="submit").split()[0])
        app.wait("the burst to finish", lambda: queue_empty(app), timeout=60 + jobs * seconds * 2, every=1)
        time.sleep(2)    # a few more samples after the last job, so the series ends on an empty queue
        app.sh("touch /tmp/burst-stop")
        time.sleep(1)    # the sampler's last write (it checks for the stop file every 0.5 s)
        samples = [json.loads(l) for l in app.sh("cat /tmp/burst-samples.jsonl").splitlines() if l.strip()]
        end = max(s["t"] for s in samples if s["t"] >= t0 and (s["idle"] or s["running"])) + 0.5
        window = [s for s in samples if t0 <= s["t"] <= end]
        busy = idle = 0.0
        for a, b in zip(window, window[1:]):
            dt = b["t"] - a["t"]
            busy += (a["running"] or 0) * dt
            idle += max(a["workers"] - (a["running"] or 0), 0) * dt
        # workers started during the burst (the static pool's own are counted before it)
        launched = max(s["launched"] for s in samples) - min(s["launched"] for s in samples)
        return {"static": static, "makespan_s": round(end - t0, 1), "busy_worker_s": round(busy, 1),
                "idle_worker_s": round(idle, 1), "idle_fraction": round(idle / busy, 3) if busy else None,
                "max_workers_seen": max(s["workers"] for s in window), "workers_launched": launched,
                "load_before": host_load, "load_after": load(),
                "series": [{"t": round(s["t"] - t0, 2), "idle": s["idle"], "running": s["running"],
                            "workers": s["workers"]} for s in samples if s["t"] >= t0 - 1]}


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    for ax, run in zip(axes, (result["elastic"], result["static"])):
        s = run["series"]
        t = [p["t"] for p in s]
        ax.plot(t, [p["idle"] for p in s], label="idle jobs", color="tab:orange")
        ax.plot(t, [p["running"] for p in s], label="running jobs", color="tab:green")
        ax.step(t, [p["workers"] for p in s], where="post", label="workers", color="tab:blue", linewidth=2)
        kind = "static pool (workers already running)" if run["static"] else "elastic, from zero workers"
        ax.set_title(f"{kind}: makespan {run['makespan_s']} s, idle worker-s "
                     f"{run['idle_worker_s']} ({100 * (run['idle_fraction'] or 0):.0f}% of busy)", fontsize=10)
        ax.axvline(run["makespan_s"], color="grey", linestyle=":", linewidth=1)
        ax.set_ylabel("count")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("seconds since condor_submit")
    p = result["params"]
    fig.suptitle(f"Burst: {p['jobs']} jobs of {p['seconds']} s, max {p['workers']} docker workers "
                 f"(2-core host, load {result['elastic']['load_before'][0]})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(jobs: int, seconds: int, workers: int, out: str | None = None, plot_path: str | None = None) -> dict:
    elastic = one_run(False, jobs, seconds, workers)
    static = one_run(True, jobs, seconds, workers)
    ratio = round(elastic["makespan_s"] / static["makespan_s"], 3)
    result = {"params": {"jobs": jobs, "seconds": seconds, "workers": workers}, "goal": GOALS,
              "makespan_ratio": ratio, "elastic": elastic, "static": static}
    print(table([[("static" if r["static"] else "elastic"), r["makespan_s"], r["busy_worker_s"], r["idle_worker_s"],
                  f"{100 * (r['idle_fraction'] or 0):.1f}%", r["max_workers_seen"], r["workers_launched"],
                  r["load_before"][0]] for r in (elastic, static)],
                ["RUN", "MAKESPAN s", "BUSY worker-s", "IDLE worker-s", "IDLE/BUSY", "MAX WORKERS",
                 "LAUNCHED", "LOAD1"]))
    ideal = jobs * seconds / workers
    print(f"\nmakespan elastic/static {ratio} (goal <= 1.2: {'met' if ratio <= 1.2 else 'MISSED'}); "
          f"idle {100 * (elastic['idle_fraction'] or 0):.1f}% of busy (goal < 15%: "
          f"{'met' if (elastic['idle_fraction'] or 0) < 0.15 else 'MISSED'}); "
          f"workers launched {elastic['workers_launched']} (never more than {min(workers, jobs)}: "
          f"{'met' if elastic['workers_launched'] <= min(workers, jobs) else 'MISSED'}); ideal makespan {ideal:.0f} s")
    path = write_result("burst", result, out)
    print(f"results: {path}")
    if plot_path:
        plot(result, plot_path)
        print(f"plot: {plot_path}")
    return result


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--plot", default=str(REPO / "docs" / "burst.png"), help="PNG path ('' for none)")
    args = p.parse_args(argv)
    image_ready(args)
    run(args.jobs, args.seconds, args.workers, args.out, args.plot or None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
