"""Soak, compressed: many worker lifecycles in minutes, and whether anything grows.

    python3 -m bench.soak --minutes 30      # a full run (two hours is the goal)
    python3 -m bench.soak --minutes 3       # what CI runs (tests/integration/test_soak.py)

One appliance, local cloud, max_workers 4, jobs of 1 s (`/bin/sleep 1`), idle_timeout
3 s. The load is waves of 2-8 jobs. Three waves in four wait, after their last job,
until every worker has retired, so each is a fresh set of lifecycles (requested,
booting, idle, busy, draining, retired); the fourth starts after a pause of 0-5 s,
while workers are still idle or draining (reuse, and drains racing new demand). A
scraper inside the container reads the web app every 3 s as a dashboard and
Prometheus would (/metrics, /api/clouds, /api/workers?all=true, /api/queue,
/api/events). The store starts at its event cap (max_events filler events), as a
long-running appliance's would.

Retention: `retention: {event_days: 1, max_events: 1000, worker_days: 1}`, the
smallest the configuration allows, applied by the scheduler every
`retention.prune_every` seconds (--prune-every, default 60, the smallest allowed;
the product's default is an hour, which a compressed run would hardly see).

Samples are taken at quiet points (queue empty, no live worker, no slot ad, no
worker directory): the first after the warm-up, the last at the end, --samples in
all. Each metric gets its start, end and slope per hour (least squares over the
samples). Bounded means, by the metric's kind (TOLERANCE says why):

  memory     rss_mb.<process> (summed over processes of the same name): the fitted growth
             over the run, slope x span, is at most max(A, 3% of start), A = --memory-allowance
             (2 MB; CI 3 MB); slope tolerance = that / span. The slope judged is the smaller
             of the whole run's and the later half's: growth that has stopped by the later
             half was a warm-up (a cache reaching its size); a leak is steady and shows in both
  count      fds.<process>, threads.scheduler, processes, zombies: fitted growth at most 2 (same rule)
  zero       leftovers.*: worker processes, directories, keys, live workers, slot ads and
             shadows are 0 at every quiet point
  baseline   ads.total, the collector's ads: never above the first sample's
  capped     db.events: never above max_events + what is written between two prunes
  retained   db.workers: grows by exactly one row per lifecycle (ended workers are kept
             worker_days >= 1 day, longer than any compressed run; bound: worker_days x rate)
  explained  db.bytes (appliance.db): growth at most 1 KB per new worker row + 256 KB
  ceiling    db.wal_bytes: never above 8 MiB (checkpoints keep it near 4 MB)
  info       reported, not judged: cycle time, spool, condor logs, container log, ads by type,
             the container's anonymous memory (cgroup: it counts the soak's own scraper too)

Also: jobs submitted == jobs completed (the jobs' user log), no wave stuck, no
appliance process restarted (a restart would hide a leak). Results are written to
bench/results/soak.json after every sample, so a run cut short keeps what it measured.
"""
from __future__ import annotations

import collections
import json
import math
import os
import random
import secrets
import subprocess
import tempfile
import time

from .common import IMAGE, REPO, Appliance, image_ready, load, parser, sh, summary, table, write_result

CONFIG = """
scheduler: {{interval: 1, idle_timeout: {idle}, max_booting: {workers}, max_workers: {workers}, backoff_base: 5}}
retention: {{event_days: 1, max_events: {max_events}, worker_days: 1, prune_every: {prune_every}}}
clouds:
  - {{name: local, type: local, max_workers: {workers}, worker: {{cpus: 1, memory: 512, disk: 1024}}}}
"""
# what the scraper reads every 3 s: a Prometheus server and an open dashboard
SCRAPED = ["/metrics", "/api/clouds", "/api/workers?all=true", "/api/queue", "/api/events?limit=30"]
MAX_EVENTS = 1000       # the smallest max_events the configuration accepts
DIR = "/tmp/soak"       # the soak's scripts inside the container (left out of the measurements)
JOBS = "/home/submit/soak"

# Why these tolerances (see the module docstring for what each kind checks).
TOLERANCE = {
    "memory": "RSS moves in steps of allocator arenas (pymalloc's are 1 MiB, glibc trims its heap when it "
              "likes), so one or two steps up or down between quiet points is noise; a leak is a steady rise, "
              "seen in the fit over the whole run and in the fit over its later half alike (growth that stops "
              "by the later half is a cache reaching its size, so the smaller of the two slopes is judged). "
              "Allowed: a fitted rise of max(2 MB, 3% of start) over the whole run, i.e. slope <= that / span. "
              "The longer the run, the tighter the slope; per lifecycle it is reported as KB per worker "
              "lifecycle. A 3-minute run (CI) allows 3 MB: in its first minutes HTCondor's collector and schedd "
              "still fill their caches (+1.3 to 1.8 MB each in the 3 minutes after a 2-minute warm-up, "
              "measured), which 2 MB over 2.5 minutes would not tell from a leak.",
    "count": "Descriptors, threads and processes are exact at quiet points; 2 allows one lazily opened log or "
             "cached connection. Allowed: a fitted rise of 2 over the run.",
    "zero": "Nothing of a worker that is gone may stay: no process, directory, key, slot ad or shadow.",
    "baseline": "With no worker, the collector holds only the central manager's own ads.",
    "capped": "Retention keeps max_events; between two prunes the table may hold what was written since.",
    "retained": "Ended workers are kept worker_days (>= 1 day): one row per lifecycle, never more.",
    "explained": "The file may grow with the worker rows retention keeps (about 0.6 KB each, measured; 1 KB "
                 "allowed), "
                 "not with events (pruned pages are reused) or anything else.",
    "ceiling": "SQLite checkpoints the WAL every 1000 pages (4 MB); far above that, checkpoints are starved.",
}
WAL_CEILING = 8 * 2**20

# Inside the container, as root: every appliance process by name, its RSS, fds and
# threads; what is left of workers; the store; the collector's ads; disk.
PROBE = r"""
import collections, json, os, sqlite3, subprocess, time
WORKERS = "/var/lib/appliance/workers"
MARK = b"CONDOR_CONFIG=" + WORKERS.encode() + b"/"
DB = "/var/lib/appliance/state/appliance.db"
me = os.getpid()
procs = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    pid = int(pid)
    if pid == me:
        continue
    try:
        argv = [a.decode(errors="replace") for a in open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0") if a]
        status = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status") if ":" in l)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        continue
    try:        # only the process's own user may read it (no CAP_SYS_PTRACE in a container)
        env = open(f"/proc/{pid}/environ", "rb").read()
    except OSError:
        env = b""
    procs[pid] = {"argv": argv, "ppid": int(status["PPid"]), "state": status["State"].split()[0],
                  "rss_kb": int(status.get("VmRSS", "0 kB").split()[0]), "threads": int(status["Threads"]),
                  "fds": fds, "worker": MARK in env or any(WORKERS + "/" in a for a in argv)}

def base(pid):
    argv = procs[pid]["argv"] if pid in procs else []
    return os.path.basename(argv[0]) if argv else ""

# a worker is a condor_master not started by supervisord, with everything under it
# (the daemons drop to user condor, so their environment cannot be read)
children = collections.defaultdict(list)
for pid, p in procs.items():
    children[p["ppid"]].append(pid)
todo = [pid for pid in procs if base(pid) == "condor_master" and base(procs[pid]["ppid"]) != "supervisord"
        and "supervisord" not in " ".join(procs.get(procs[pid]["ppid"], {}).get("argv", []))]
while todo:
    pid = todo.pop()
    procs[pid]["worker"] = True
    todo.extend(children.get(pid, []))

def name(pid):
    p = procs[pid]
    if p["worker"]:
        return "worker"
    if not p["argv"]:
        return "zombie" if p["state"] == "Z" else None
    cmd = " ".join(p["argv"])
    exe = os.path.basename(p["argv"][0])
    if "/tmp/soak/" in cmd:
        return None
    if "appliance.daemon" in cmd:
        return "scheduler"
    if "gunicorn" in cmd:
        parent = procs.get(p["ppid"])
        return "gunicorn_worker" if parent and "gunicorn" in " ".join(parent["argv"]) else "gunicorn_master"
    if exe.startswith("condor_"):
        return exe
    if "supervisord" in cmd:
        return "supervisord"
    return exe

out = {"rss_mb": collections.Counter(), "fds": collections.Counter(), "threads": collections.Counter(),
       "count": collections.Counter(), "pids": collections.defaultdict(list), "zombies": 0}
for pid, p in procs.items():
    n = name(pid)
    if n is None:
        continue
    if p["state"] == "Z":
        out["zombies"] += 1
        continue
    out["rss_mb"][n] += p["rss_kb"] / 1024
    out["fds"][n] += p["fds"]
    out["threads"][n] += p["threads"]
    out["count"][n] += 1
    out["pids"][n].append(pid)
out["rss_mb"] = {k: round(v, 2) for k, v in out["rss_mb"].items()}
out["processes"] = sum(c for n, c in out["count"].items() if n != "worker")

def size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0

def du(path):
    total = files = 0
    for root, _, names in os.walk(path):
        for f in names:
            total += size(os.path.join(root, f))
            files += 1
    return total, files

def entries(path):
    try:
        return len(os.listdir(path))
    except OSError:
        return 0

db = sqlite3.connect(DB, timeout=10, isolation_level=None)
one = lambda q: db.execute(q).fetchone()[0]
counts = dict(db.execute("SELECT to_state, SUM(n) FROM transition_counts GROUP BY to_state").fetchall())
kv = {k: json.loads(v) for k, v in db.execute(
    "SELECT key, value FROM kv WHERE key IN ('heartbeat', 'cycle_histogram')").fetchall()}
out["db"] = {"bytes": size(DB), "wal_bytes": size(DB + "-wal"), "shm_bytes": size(DB + "-shm"),
             "events": one("SELECT COUNT(*) FROM events"), "max_event_id": one("SELECT COALESCE(MAX(id), 0) FROM events"),
             "workers": one("SELECT COUNT(*) FROM workers"),
             "live_workers": one("SELECT COUNT(*) FROM workers WHERE state NOT IN ('retired', 'failed')"),
             "kv": one("SELECT COUNT(*) FROM kv"), "requests": one("SELECT COUNT(*) FROM requests"),
             "transitions": counts, "heartbeat": kv.get("heartbeat"),
             "cycles": (kv.get("cycle_histogram") or {}).get("count", 0),
             "cycle_seconds": (kv.get("cycle_histogram") or {}).get("sum", 0.0)}
db.close()
ads = subprocess.run(["condor_status", "-any", "-af", "MyType"], capture_output=True, text=True)
out["ads"] = dict(collections.Counter(ads.stdout.split())) if ads.returncode == 0 else None
out["leftovers"] = {"worker_processes": out["count"].pop("worker", 0), "worker_dirs": entries(WORKERS + "/local"),
                    "worker_keys": entries("/var/lib/appliance/worker-keys"),
                    "live_workers": out["db"]["live_workers"],
                    "machine_ads": (out["ads"] or {}).get("Machine", 0),
                    "shadows": out["count"].get("condor_shadow", 0)}
spool, _ = du("/var/lib/condor/spool")
logs, _ = du("/var/log/condor")
out["disk"] = {"spool_bytes": spool, "job_queue_log_bytes": size("/var/lib/condor/spool/job_queue.log"),
               "history_bytes": size("/var/lib/condor/spool/history"), "condor_log_bytes": logs,
               "state_bytes": du("/var/lib/appliance")[0]}
mem = {}
for current, stat_file, anon, cache in (("memory.current", "memory.stat", "anon", "file"),      # cgroup v2
                                        ("memory/memory.usage_in_bytes", "memory/memory.stat", "total_rss",
                                         "total_cache")):                                  # cgroup v1
    try:
        stat = dict(l.split() for l in open("/sys/fs/cgroup/" + stat_file))
        mem = {"current_mb": int(open("/sys/fs/cgroup/" + current).read()) / 2**20,
               "anon_mb": int(stat[anon]) / 2**20, "file_mb": int(stat[cache]) / 2**20}
        break
    except (OSError, KeyError, ValueError):
        continue
out["cgroup"] = {k: round(v, 2) for k, v in mem.items()}
out["time"] = time.time()
print(json.dumps(out))
"""

# Quick state for the load loop: jobs in the queue, live workers, slot ads, worker directories.
STATE = r"""
import json, os, sqlite3, subprocess
q = subprocess.run(["condor_q", "-allusers", "-af", "JobStatus"], capture_output=True, text=True)
s = subprocess.run(["condor_status", "-af", "Name"], capture_output=True, text=True)
db = sqlite3.connect("/var/lib/appliance/state/appliance.db", timeout=10, isolation_level=None)
live = db.execute("SELECT COUNT(*) FROM workers WHERE state NOT IN ('retired', 'failed')").fetchone()[0]
try:
    dirs = len(os.listdir("/var/lib/appliance/workers/local"))
except OSError:
    dirs = 0
print(json.dumps({"jobs": q.stdout.split() if q.returncode == 0 else None, "live": live,
                  "slots": len(s.stdout.split()) if s.returncode == 0 else None, "dirs": dirs}))
"""

# A dashboard and a Prometheus server, every 3 s, until /tmp/soak/stop exists.
SCRAPER = r"""
import base64, json, os, ssl, time, urllib.error, urllib.request
auth = "Basic " + base64.b64encode(("admin:" + os.environ["APPLIANCE_ADMIN_PASSWORD"]).encode()).decode()
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
paths = os.environ["SOAK_PATHS"].split(",")
stats = {"ok": 0, "errors": 0, "last_error": "", "base": None}

def get(url):
    req = urllib.request.Request(url, headers={"Authorization": auth})
    with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
        r.read()

while not os.path.exists("/tmp/soak/stop"):
    t = time.time()
    for path in paths:
        bases = [stats["base"]] if stats["base"] else ["https://127.0.0.1:8080", "http://127.0.0.1:8080"]
        for base in bases:
            try:
                get(base + path)
                stats["ok"] += 1
                stats["base"] = base
                break
            except (OSError, urllib.error.URLError) as err:
                if base == bases[-1]:
                    stats["errors"] += 1
                    stats["last_error"] = f"{path}: {err}"
    with open("/tmp/soak/scraper.json.new", "w") as f:
        json.dump(stats, f)
    os.replace("/tmp/soak/scraper.json.new", "/tmp/soak/scraper.json")
    time.sleep(max(3 - (time.time() - t), 0.1))
"""

FILL = r"""
import sys
from appliance.store import Store
s = Store()
with s.tx():
    for i in range(int(sys.argv[1])):
        s.event("soak", "filler: the store starts at its event cap, as a long-running appliance's would")
s.close()
"""



def job(n: int, seconds: int) -> str:
    return (f"executable = /bin/sleep\narguments = {seconds}\ntransfer_executable = false\n"
            f"log = {JOBS}/jobs.log\nrequest_cpus = 1\nrequest_memory = 64\nrequest_disk = 1MB\nqueue {n}\n")


def slope_per_hour(ts: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over ts (seconds), per hour."""
    n = len(ts)
    if n < 2:
        return 0.0
    tm, ym = sum(ts) / n, sum(ys) / n
    var = sum((t - tm) ** 2 for t in ts)
    if var == 0:
        return 0.0
    return sum((t - tm) * (y - ym) for t, y in zip(ts, ys)) / var * 3600


class Soak:
    def __init__(self, app: Appliance, args, password: str):
        self.app, self.args, self.password = app, args, password
        self.rng = random.Random(args.seed)
        self.submitted = 0
        self.waves: list[dict] = []
        self.stuck: list[dict] = []
        self.samples: list[dict] = []
        self.t0 = time.monotonic()

    # ------------------------------------------------------------ in the container
    def put(self, path: str, text: str) -> None:
        subprocess.run(["docker", "exec", "-i", self.app.name, "sh", "-c", f"cat > {path}"], input=text,
                       text=True, check=True)

    def py(self, script: str, *args: str) -> dict:
        return json.loads(sh("docker", "exec", self.app.name, "python3", f"{DIR}/{script}", *args))

    def state(self) -> dict:
        return self.py("state.py")

    def setup(self) -> None:
        self.app.sh(f"mkdir -p {DIR}")
        for name, text in (("probe.py", PROBE), ("state.py", STATE), ("scraper.py", SCRAPER), ("fill.py", FILL)):
            self.put(f"{DIR}/{name}", text)
        self.app.sh(f"mkdir -p {JOBS}", user="submit")
        sh("docker", "exec", self.app.name, "python3", f"{DIR}/fill.py", str(MAX_EVENTS))
        sh("docker", "exec", "-d", "-e", f"SOAK_PATHS={self.args.scrape}", self.app.name, "python3",
           f"{DIR}/scraper.py")

    # ------------------------------------------------------------ load
    def wave(self) -> None:
        n = self.rng.randint(max(self.args.workers // 2, 1), 2 * self.args.workers)
        t = time.monotonic()
        out = sh("docker", "exec", "-i", "-u", "submit", "-w", JOBS, self.app.name, "condor_submit",
                 input=job(n, self.args.job_seconds))
        cluster = int(out.strip().split()[-1].rstrip("."))
        self.submitted += n
        timeout = 180 + 10 * n
        while True:
            q = subprocess.run(["docker", "exec", self.app.name, "condor_q", "-allusers", "-af", "JobStatus"],
                               capture_output=True, text=True)
            if q.returncode == 0 and not q.stdout.strip():
                break
            if time.monotonic() - t > timeout:
                held = sh("docker", "exec", self.app.name, "condor_q", "-allusers", "-af", "ClusterId", "ProcId",
                          "JobStatus", "HoldReason", check=False)
                self.stuck.append({"cluster": cluster, "jobs": n, "queue": held[-2000:], "at_s": self.elapsed()})
                sh("docker", "exec", self.app.name, "condor_rm", "-all", check=False)
                break
            time.sleep(0.5)
        wave = {"jobs": n, "seconds": round(time.monotonic() - t, 1)}
        if self.rng.random() < 0.25:        # the next wave while workers still idle or drain
            pause = self.rng.uniform(0, self.args.idle_timeout + 2)
            wave["pause"] = round(pause, 1)
            time.sleep(pause)
        else:
            self.quiet(settle=False)
        self.waves.append(wave)

    def quiet(self, settle: bool = True) -> None:
        """No job and no live worker; with settle, also up to 60 s for the collector to drop the
        slot ads and the driver the directories (if they do not, the sample says so), then 2 s
        for the scheduler's last bookkeeping."""
        self.app.wait("a quiet appliance (no jobs, no live workers)",
                      lambda: (lambda st: st["jobs"] == [] and st["live"] == 0)(self.state()), timeout=240, every=0.5)
        if settle:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                st = self.state()
                if st["slots"] == 0 and st["dirs"] == 0:
                    break
                time.sleep(0.5)
            time.sleep(2)

    def elapsed(self) -> float:
        return round(time.monotonic() - self.t0, 1)

    # ------------------------------------------------------------ measure
    def sample(self) -> dict:
        self.quiet(settle=True)
        s = self.py("probe.py")
        s["t_run"] = self.elapsed()
        s["load"] = load()
        s["submitted"] = self.submitted
        s["waves"] = len(self.waves)
        logs = subprocess.run(["docker", "logs", self.app.name], capture_output=True)
        s["disk"]["container_log_bytes"] = len(logs.stdout) + len(logs.stderr)
        # the scheduler's own retention runs, as its log tells them (not judged: counted)
        s["prunes"] = (logs.stdout + logs.stderr).count(b"store: pruned ")
        try:
            s["scraper"] = json.loads(sh("docker", "exec", self.app.name, "cat", f"{DIR}/scraper.json"))
        except (RuntimeError, ValueError):
            s["scraper"] = None
        self.samples.append(s)
        launched = s["db"]["transitions"].get("requested", 0)
        print(f"[{s['t_run']:7.0f} s] sample {len(self.samples)}: {launched} lifecycles, {self.submitted} jobs, "
              f"scheduler {s['rss_mb'].get('scheduler')} MB / {s['fds'].get('scheduler')} fds, events "
              f"{s['db']['events']}, worker rows {s['db']['workers']}, ads {sum((s['ads'] or {}).values())}, "
              f"load {s['load'][0]}", flush=True)
        return s

    def run(self) -> dict:
        total = self.args.minutes * 60
        warmup = self.args.warmup if self.args.warmup is not None else min(120.0, 0.15 * total)
        span = total - warmup
        self.warmup = warmup
        due = [warmup + span * i / (self.args.samples - 1) for i in range(self.args.samples)]
        self.setup()
        print(f"soak: {self.args.minutes} min, warm-up {warmup:.0f} s, {self.args.samples} samples, "
              f"max {self.args.workers} workers, idle_timeout {self.args.idle_timeout} s, jobs of "
              f"{self.args.job_seconds} s, retention applied every {self.args.prune_every:.0f} s", flush=True)
        while due:
            if time.monotonic() - self.t0 >= due[0]:
                self.sample()
                due.pop(0)
                self.partial()
                continue
            self.wave()
        self.app.sh(f"touch {DIR}/stop")
        return self.result()

    # ------------------------------------------------------------ report
    def jobs(self) -> dict:
        text = self.app.sh(f"cat {JOBS}/jobs.log 2>/dev/null", check=False)
        # the user log's event codes, at the start of an event's first line
        events = collections.Counter(line[:3] for line in text.splitlines() if line[3:5] == " (")
        return {"submitted": self.submitted, "logged_submits": events["000"], "completed": events["005"],
                "exit_0": text.count("Normal termination (return value 0)"), "evicted": events["004"],
                "shadow_exceptions": events["007"], "held": events["012"], "removed": events["009"],
                "stuck_waves": len(self.stuck)}

    def partial(self) -> None:
        if len(self.samples) >= 2:
            write_result("soak", {**self.result(), "complete": False}, self.args.out)

    def result(self) -> dict:
        first, last = self.samples[0], self.samples[-1]
        span_s = last["time"] - first["time"]
        span_h = span_s / 3600
        ts = [s["time"] - first["time"] for s in self.samples]
        launched = [s["db"]["transitions"].get("requested", 0) for s in self.samples]
        lifecycles = launched[-1] - launched[0]
        per_hour = lifecycles / span_h if span_h else 0.0
        ev_rate = (last["db"]["max_event_id"] - first["db"]["max_event_id"]) / span_h if span_h else 0.0
        prune_s = self.args.prune_every
        metrics = {}
        series = flatten(self.samples)
        for name, ys in series.items():
            kind = kind_of(name)
            start, end = ys[0], ys[-1]
            slope = slope_per_hour(ts, ys)
            later = slope_per_hour(ts[len(ts) // 2:], ys[len(ys) // 2:])
            judged = min(slope, later)     # growth that stopped by the later half was a warm-up
            m = {"kind": kind, "start": round(start, 3), "end": round(end, 3), "min": round(min(ys), 3),
                 "max": round(max(ys), 3), "slope_per_hour": round(slope, 3),
                 # the fit over the later half alone: ~0 where the growth was early and has stopped
                 "slope_later_half_per_hour": round(later, 3)}
            if kind == "memory":
                allowance = max(self.args.memory_allowance, 0.03 * start)
                m["tolerance_per_hour"] = round(allowance / span_h, 3) if span_h else None
                m["bounded"] = judged <= allowance / span_h if span_h else True
                m["per_lifecycle_kb"] = round(slope / per_hour * 1024, 3) if per_hour else None
            elif kind == "count":
                m["tolerance_per_hour"] = round(2 / span_h, 3) if span_h else None
                m["bounded"] = judged <= 2 / span_h if span_h else True
            elif kind == "zero":
                m["bounded"] = max(ys) == 0
            elif kind == "baseline":
                m["bounded"] = max(ys) <= start
            elif kind == "capped":
                m["bound"] = math.ceil(MAX_EVENTS + ev_rate * prune_s / 3600 * 1.5)
                m["bounded"] = max(ys) <= m["bound"]
            elif kind == "retained":
                m["bounded"] = end - start == lifecycles
                m["per_day_at_this_rate"] = round(per_hour * 24)
            elif kind == "explained":
                rows = series["db.workers"][-1] - series["db.workers"][0]
                m["bound_growth"] = 1024 * rows + 256 * 1024
                m["bounded"] = end - start <= m["bound_growth"]
                m["per_lifecycle_bytes"] = round((end - start) / lifecycles) if lifecycles else None
            elif kind == "ceiling":
                m["bound"] = WAL_CEILING
                m["bounded"] = max(ys) <= WAL_CEILING
            metrics[name] = m
        restarted = sorted(n for n in set(first["pids"]) | set(last["pids"])
                           if sorted(first["pids"].get(n, [])) != sorted(last["pids"].get(n, [])))
        jobs = self.jobs()
        unbounded = sorted(n for n, m in metrics.items() if m.get("bounded") is False)
        jobs_ok = jobs["completed"] == jobs["submitted"] == jobs["exit_0"] and not self.stuck
        return {
            "params": {"minutes": self.args.minutes, "warmup_s": self.warmup, "samples": self.args.samples,
                       "workers": self.args.workers, "idle_timeout": self.args.idle_timeout,
                       "job_seconds": self.args.job_seconds, "seed": self.args.seed,
                       "prune_every_s": self.args.prune_every, "scrape": self.args.scrape.split(","),
                       "condor_config": self.args.condor_config, "memory_allowance_mb": self.args.memory_allowance,
                       "retention": {"event_days": 1, "max_events": MAX_EVENTS, "worker_days": 1}},
            "git": git_head(), "image_id": sh("docker", "image", "inspect", "-f", "{{.Id}}", IMAGE).strip()[:19],
            "span_s": round(span_s, 1), "run_s": self.elapsed(),
            "lifecycles": {"measured": lifecycles, "per_hour": round(per_hour), "total": launched[-1],
                           "retired": last["db"]["transitions"].get("retired", 0),
                           "failed": last["db"]["transitions"].get("failed", 0)},
            "events_per_hour": round(ev_rate),
            "jobs": jobs, "waves": {"count": len(self.waves), "seconds": summary([w["seconds"] for w in self.waves]),
                                    "with_pause": sum("pause" in w for w in self.waves)},
            "stuck": self.stuck, "prune_count": last.get("prunes", 0),
            "restarted": restarted, "tolerance": TOLERANCE,
            "verdict": {"bounded": not unbounded and not restarted, "unbounded": unbounded, "jobs_ok": jobs_ok},
            "metrics": metrics, "samples": self.samples,
        }


def flatten(samples: list[dict]) -> dict[str, list[float]]:
    """Every metric as a series over the samples (only those present in all of them)."""
    rows = []
    for s in samples:
        r = {f"rss_mb.{k}": v for k, v in s["rss_mb"].items()}
        r.update({f"fds.{k}": v for k, v in s["fds"].items()})
        r["threads.scheduler"] = s["threads"].get("scheduler", 0)
        r["processes"] = s["processes"]
        r["zombies"] = s["zombies"]
        r.update({f"leftovers.{k}": v for k, v in s["leftovers"].items()})
        for k in ("bytes", "wal_bytes", "events", "workers"):
            r[f"db.{k}"] = s["db"][k]
        ads = s["ads"] or {}
        r["ads.total"] = sum(ads.values())
        r.update({f"ads.{k}": v for k, v in ads.items()})
        if "anon_mb" in s["cgroup"]:
            r["memory_mb.container_anon"] = s["cgroup"]["anon_mb"]
        r.update({f"disk.{k}": v for k, v in s["disk"].items()})
        rows.append(r)
    # the scheduler's mean cycle time between two samples (its histogram's sum and count)
    for i, s in enumerate(samples):
        prev = samples[i - 1]["db"] if i else None
        if prev and s["db"]["cycles"] > prev["cycles"]:
            rows[i]["cycle_ms"] = round(1000 * (s["db"]["cycle_seconds"] - prev["cycle_seconds"])
                                        / (s["db"]["cycles"] - prev["cycles"]), 2)
        elif not prev and s["db"]["cycles"]:     # the first: the mean since the daemon started
            rows[i]["cycle_ms"] = round(1000 * s["db"]["cycle_seconds"] / s["db"]["cycles"], 2)
    common = set(rows[0]).intersection(*rows[1:])
    return {k: [r[k] for r in rows] for k in sorted(common)}


def kind_of(name: str) -> str:
    if name.startswith("rss_mb."):
        return "memory"
    if name.startswith(("fds.", "threads.")) or name in ("processes", "zombies"):
        return "count"
    if name.startswith("leftovers."):
        return "zero"
    return {"ads.total": "baseline", "db.events": "capped", "db.workers": "retained", "db.bytes": "explained",
            "db.wal_bytes": "ceiling"}.get(name, "info")


def git_head() -> dict:
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
    return {"head": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def report(result: dict) -> None:
    rows = []
    for name, m in result["metrics"].items():
        if m["kind"] == "info" and not name.startswith(("cycle", "disk.container")):
            continue
        tol = m.get("tolerance_per_hour", m.get("bound", m.get("bound_growth", "")))
        verdict = {True: "ok", False: "GROWS", None: ""}[m.get("bounded")]
        rows.append([name, m["kind"], m["start"], m["end"], m["slope_per_hour"], tol, verdict])
    print()
    print(table(rows, ["METRIC", "KIND", "START", "END", "SLOPE /h", "TOLERANCE /h or BOUND", ""]))
    lc, jobs = result["lifecycles"], result["jobs"]
    print(f"\n{lc['measured']} worker lifecycles in {result['span_s'] / 60:.1f} measured minutes "
          f"({lc['per_hour']}/h; {lc['total']} in all, {lc['failed']} failed), {result['waves']['count']} waves; "
          f"jobs submitted {jobs['submitted']}, completed {jobs['completed']} (exit 0: {jobs['exit_0']}), "
          f"evicted {jobs['evicted']}, stuck waves {jobs['stuck_waves']}")
    v = result["verdict"]
    print(f"bounded: {'yes' if v['bounded'] else 'NO: ' + ', '.join(v['unbounded'] + result['restarted'])}; "
          f"jobs submitted == completed: {'yes' if v['jobs_ok'] else 'NO'}")


def run(args) -> dict:
    password = "soak-" + secrets.token_urlsafe(12)
    cfg = CONFIG.format(idle=args.idle_timeout, workers=args.workers, max_events=MAX_EVENTS,
                       prune_every=args.prune_every)
    extra = ["-e", f"APPLIANCE_ADMIN_PASSWORD={password}"]
    condor = None
    if args.condor_config:     # an experiment: HTCondor settings on top of the image's
        condor = tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False)
        condor.write("\n".join(args.condor_config) + "\n")
        condor.close()
        os.chmod(condor.name, 0o644)
        extra += ["-v", f"{condor.name}:/etc/condor/config.d/99-soak.conf:ro"]
    try:
        with Appliance(cfg, extra=extra) as app:
            app.wait_ready()
            soak = Soak(app, args, password)
            result = soak.run()
    finally:
        if condor:
            os.unlink(condor.name)
    report(result)
    path = write_result("soak", {**result, "complete": True}, args.out)
    print(f"results: {path}")
    return result


def main(argv=None) -> int:
    p = parser(__doc__, "write the JSON here instead of bench/results/soak.json")
    p.add_argument("--minutes", type=float, default=30, help="length of the load, warm-up included")
    p.add_argument("--warmup", type=float, help="seconds before the first sample (default min(120, 15%% of the run))")
    p.add_argument("--samples", type=int, default=None, help="quiet-point samples, first and last included "
                   "(default: one every 3 minutes, at least 5, at most 41)")
    p.add_argument("--workers", type=int, default=4, help="max_workers of the local cloud")
    p.add_argument("--idle-timeout", type=float, default=3)
    p.add_argument("--job-seconds", type=int, default=1)
    p.add_argument("--prune-every", type=float, default=60,
                   help="retention.prune_every: the scheduler applies retention every this many seconds (>= 60)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--memory-allowance", type=float, default=2.0, metavar="MB",
                   help="fitted RSS growth over the run allowed per process (at least 3%% of its start)")
    p.add_argument("--scrape", default=",".join(SCRAPED), help="the web paths the scraper reads every 3 s")
    p.add_argument("--condor-config", action="append", default=[], metavar="LINE",
                   help="an HTCondor configuration line for the appliance, for experiments "
                        "(e.g. 'SEC_DEFAULT_SESSION_LEASE = 120'); repeatable")
    args = p.parse_args(argv)
    if args.samples is None:
        args.samples = max(5, min(41, round(args.minutes / 3) + 1))
    if args.prune_every < 60:
        p.error("--prune-every must be at least 60 (retention.prune_every's smallest value)")
    if args.samples < 3:
        p.error("--samples must be at least 3 (a slope needs them)")
    image_ready(args)
    result = run(args)
    return 0 if result["verdict"]["bounded"] and result["verdict"]["jobs_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
