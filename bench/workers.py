"""Supply at scale: the scheduler's cycle with 1,000 / 10,000 idle workers in the collector.

    python3 -m bench.workers                 # 1,000 and 10,000 workers
    python3 -m bench.workers --sizes 50      # a smoke run

One appliance is started (its cloud at max_workers 0) and its own scheduler daemon is
stopped (`supervisorctl stop scheduler`), so nothing acts on what follows. For each size N:

  - N startd ads are advertised to the appliance's real collector with `condor_advertise
    -multiple UPDATE_STARTD_AD`, each the partitionable slot of a simulated worker as a
    local worker advertises it (Name slot1@<id>@<host>, ApplianceWorker, WorkerId, every
    attribute of condor.SUPPLY_PROJECTION, Unclaimed/Idle), authenticated with a worker
    token (condor_token_create, ADVERTISE_STARTD), ClassAdLifetime an hour; the benchmark
    waits until the collector holds all N;
  - inside the container, in one Python process with the image's own python3, HTCondor
    bindings and appliance package, a Daemon (appliance/daemon.py) is built as main()
    builds it, but on a Store of its own (a temporary file) and with a stand-in for the
    cloud driver: its list() returns the simulated workers' resources. 10,000 real VMs
    cannot exist here, so the cloud's listing is a prepared mapping and its cost (an API
    call's, on a real cloud) is not measured. The real Condor wrapper reads the real
    collector and the real schedd (an empty queue). The N workers are written into that
    store with its own API as the daemon writes them (add_worker, then booting with a
    resource id, then idle with the name they joined as), with idle_timeout a day and the
    cloud's max_workers N: nothing is drained, nothing is launched;
  - Daemon.cycle() is called directly: 2 warm-up cycles (the first one prunes the store),
    then `--cycles` timed ones, whose phases are read from the heartbeat the cycle stores
    (appliance/cycletime.py); then 3 more with sqlite3's trace callback on the store's
    connection, counting the SQL statements (each row of an executemany is one) and the
    transactions (BEGIN) per cycle, and which statements they are; the collector query
    alone (Collector.query with SUPPLY_PROJECTION) and summarize_slots are timed apart;
    and the process's VmRSS (and VmHWM) is read from /proc/self/status at the end.

Goals (issue 17): observe_supply + decide p50 <= 0.3 s at 10,000 workers, the daemon's
RSS <= 200 MB, and store statements per cycle not growing with the number of idle
workers.
"""
from __future__ import annotations

import json
import statistics

from .common import Appliance, image_ready, load, parser, table, write_result

CONFIG = """
scheduler: {idle_timeout: 86400}
clouds:
  - {name: local, type: local, max_workers: 0}
"""
GOALS = {"supply_decide_p50_s_at_10k": 0.3, "rss_mb": 200, "store_statements_per_cycle": "not growing with workers"}
SUPERVISORCTL = "supervisorctl -c /etc/appliance/supervisord.conf"


# Runs as root in the container: advertise ads 0..N-1 (again, for those already there),
# then wait until the collector holds exactly N of our workers.
ADVERTISE = """
import os, socket, subprocess, sys, tempfile, time
import htcondor
from appliance.condor import token_create, worker_identity, KEYS_DIR
from appliance.config import load

n = {n}
cfg = load()
host = socket.gethostname()
ids = [f"local-{{i:06x}}" for i in range(n)]     # as the daemon names workers: <cloud>-<6 hex digits>
token = token_create(worker_identity("bench", cfg.pool.name), "POOL", KEYS_DIR, authz=["ADVERTISE_STARTD", "READ"],
                     lifetime=7200)

def ad(wid):
    name = f"slot1@{{wid}}@{{host}}"
    return "\\n".join([
        'MyType = "Machine"', 'TargetType = "Job"',
        f'Name = "{{name}}"', f'Machine = "{{host}}"', 'MyAddress = "<127.0.0.1:9618>"',
        'StartdIpAddr = "<127.0.0.1:9618>"', f'UidDomain = "{{cfg.pool.name}}"',
        f'FileSystemDomain = "{{wid}}.{{cfg.pool.name}}"', 'OpSys = "LINUX"', 'Arch = "X86_64"',
        'State = "Unclaimed"', 'Activity = "Idle"', 'SlotType = "Partitionable"', 'PartitionableSlot = true',
        'SlotID = 1', 'Cpus = 1', 'TotalSlotCpus = 1', 'TotalCpus = 1', 'Memory = 1024', 'TotalSlotMemory = 1024',
        'Disk = 4000000', 'TotalSlotDisk = 4000000', 'GPUs = 0',
        'ApplianceWorker = true', f'WorkerId = "{{wid}}"', 'CloudName = "local"', 'CloudType = "local"',
        'WorkerShape = ""', 'WorkerImage = ""', 'WorkerImageRef = ""',
        'WorkerInterrupted = ""', 'WorkerRebalance = false',
        'Start = true', 'Requirements = START', 'Rank = 0',
        'ClassAdLifetime = 3600', f'DaemonStartTime = {{int(time.time())}}',
    ])

with tempfile.TemporaryDirectory(prefix="bench-ads-") as d:
    tokens = os.path.join(d, "tokens")       # every file there must be the token, private
    os.mkdir(tokens, 0o700)
    with os.fdopen(os.open(os.path.join(tokens, "bench"), os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(token + "\\n")
    env = dict(os.environ, _CONDOR_SEC_TOKEN_DIRECTORY=tokens, _CONDOR_SEC_TOKEN_SYSTEM_DIRECTORY=tokens,
               _CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS="IDTOKENS")
    t0 = time.monotonic()
    for start in range(0, n, 2000):          # a few thousand ads per connection
        path = os.path.join(d, "ads")
        with open(path, "w") as f:
            f.write("\\n\\n".join(ad(w) for w in ids[start:start + 2000]) + "\\n")
        proc = subprocess.run(["condor_advertise", "-tcp", "-multiple", "UPDATE_STARTD_AD", path],
                              capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            sys.exit(f"condor_advertise exited {{proc.returncode}}: {{(proc.stderr or proc.stdout)[-1000:]}}")
    advertise_s = time.monotonic() - t0

deadline = time.monotonic() + 120
while True:
    have = len(htcondor.Collector().query(htcondor.AdTypes.Startd, constraint="ApplianceWorker =?= true",
                                          projection=["Name"]))
    if have == n or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(f"{{have}} {{advertise_s:.2f}}")
"""

MEASURE = """
import json, os, re, statistics, tempfile, time
from collections import Counter

def rss():
    fields = dict(l.split(":", 1) for l in open("/proc/self/status") if l.startswith(("VmRSS", "VmHWM")))
    return {{k: round(int(v.split()[0]) / 1024, 1) for k, v in fields.items()}}

base = rss()
import htcondor
from appliance import condor as C
from appliance.clouds.base import CloudError, Driver
from appliance.condor import Condor, summarize_slots
from appliance.config import load
from appliance.daemon import Daemon
from appliance.lifecycle import State
from appliance.model import Resource
from appliance.store import Store
imported = rss()

n, cycles = {n}, {cycles}
cfg = load()
cloud = cfg.clouds[0]
ids = [f"local-{{i:06x}}" for i in range(n)]
host = os.uname().nodename


class Simulated(Driver):
    # the simulated workers' cloud: it lists them, and does nothing else
    def __init__(self, cloud, pool, resources):
        super().__init__(cloud, pool, "bench")
        self.resources = resources
    def condor_host(self):
        return "127.0.0.1"
    def launch(self, spec):
        raise CloudError("config", "simulated workers cannot be launched")
    def list(self):
        return self.resources
    def terminate(self, worker_id, resource_id):
        raise AssertionError(f"the benchmark's cycle removed {{worker_id}}")


tmp = tempfile.mkdtemp(prefix="bench-workers-")
store = Store(os.path.join(tmp, "appliance.db"))
t0 = time.monotonic()
now = time.time()
with store.tx():
    store.set_cloud(cloud.name, max_workers=n, now=now, actor="bench")
    for wid in ids:
        store.add_worker(wid, cloud.name, "launch: bench", now)
        store.transition(wid, State.BOOTING, "launched as sim:" + wid, now, resource_id="sim:" + wid)
        store.transition(wid, State.IDLE, f"joined the pool as {{wid}}@{{host}}", now)
    store.mark_seen({{wid: f"{{wid}}@{{host}}" for wid in ids}}, now)
insert_s = time.monotonic() - t0
resources = {{wid: Resource(wid, "sim:" + wid) for wid in ids}}
daemon = Daemon(cfg, store, Condor(cfg.pool.name), {{cloud.name: Simulated(cloud, cfg.pool.name, resources)}})

def one():
    plan = daemon.cycle()
    beat = store.get("heartbeat")[0]
    bad = plan.launches or plan.drains or plan.terminations or plan.orphans or plan.transitions
    assert not bad, f"the cycle acted: {{bad!r:.500}}"
    assert len(plan.seen) == n, f"the cycle saw {{len(plan.seen)}} of {{n}} workers"
    return beat

for _ in range(2):
    one()
beats = [one() for _ in range(cycles)]

stmts = []
def trace(sql):
    stmts.append(sql)
store.db.set_trace_callback(trace)
counted = []
for _ in range(3):
    stmts.clear()
    one()
    counted.append(list(stmts))
store.db.set_trace_callback(None)

def shape(sql):
    sql = re.sub(r"'(?:[^']|'')*'", "?", sql)
    sql = re.sub(r"\\b\\d+(?:\\.\\d+)?(?:e[-+]?\\d+)?\\b", "?", sql)
    return " ".join(sql.split())[:120]

kinds = Counter(shape(s) for s in counted[-1])
tx = [sum(1 for s in c if s.strip().upper().startswith("BEGIN")) for c in counted]

query, summ = [], []
for _ in range(cycles):
    t = time.perf_counter()
    ads = htcondor.Collector().query(htcondor.AdTypes.Startd, constraint="ApplianceWorker =?= true",
                                     projection=C.SUPPLY_PROJECTION)
    t1 = time.perf_counter()
    slots = summarize_slots(ads)
    t2 = time.perf_counter()
    query.append(t1 - t)
    summ.append(t2 - t1)
    assert len(ads) == n and len(slots) == n, f"the collector returned {{len(ads)}} ads, {{len(slots)}} workers"
del ads, slots

med = lambda xs: round(statistics.median(xs), 4)
ph = lambda k: [b["phases"][k] for b in beats]
out = {{
    "workers": n, "cycles": cycles, "insert_s": round(insert_s, 2),
    "supply_decide_s": [round(b["phases"]["observe_supply"] + b["phases"]["decide"], 4) for b in beats],
    "cycle_s": [b["duration"] for b in beats],
    "phases_p50": {{k: med(ph(k)) for k in beats[0]["phases"]}},
    "collector_query_s": [round(x, 4) for x in query], "summarize_s": [round(x, 4) for x in summ],
    "store_statements_per_cycle": [len(c) for c in counted], "store_transactions_per_cycle": tx,
    "store_statements_by_kind": dict(kinds.most_common(25)),
    "rss_mb": rss(), "rss_mb_at_start": base, "rss_mb_after_imports": imported,
}}
store.close()
import shutil; shutil.rmtree(tmp, ignore_errors=True)
print(json.dumps(out))
"""


def measure_size(app: Appliance, n: int, cycles: int) -> dict:
    have, advertise_s = app.python(ADVERTISE.format(n=n), timeout=1200).split()
    assert int(have) == n, f"the collector holds {have} of the {n} simulated workers' ads"
    total = app.sh("condor_status -total -constraint 'ApplianceWorker =?= true' 2>&1 | tail -3", check=False)
    m = json.loads(app.python(MEASURE.format(n=n, cycles=cycles), timeout=3600))
    med = lambda xs: round(statistics.median(xs), 4)   # noqa: E731
    return {"workers": n, "advertise_s": float(advertise_s), "condor_status_total": total.strip().splitlines(),
            "supply_decide_p50_s": med(m["supply_decide_s"]), "cycle_p50_s": med(m["cycle_s"]),
            "collector_query_p50_s": med(m["collector_query_s"]), "summarize_p50_s": med(m["summarize_s"]),
            "phases_p50_s": m["phases_p50"], "rss_mb": m["rss_mb"]["VmRSS"], "rss_peak_mb": m["rss_mb"]["VmHWM"],
            "rss_mb_after_imports": m["rss_mb_after_imports"]["VmRSS"],
            "store_statements_per_cycle": max(m["store_statements_per_cycle"]),
            "store_transactions_per_cycle": max(m["store_transactions_per_cycle"]),
            "store_statements_by_kind": m["store_statements_by_kind"],
            "runs": {k: m[k] for k in ("supply_decide_s", "cycle_s", "collector_query_s", "summarize_s",
                                       "store_statements_per_cycle", "store_transactions_per_cycle")},
            "insert_s": m["insert_s"], "load1": load()[0]}


def run(sizes: list[int], cycles: int = 10, out: str | None = None) -> dict:
    rows = []
    with Appliance(CONFIG) as app:
        app.wait_ready()
        app.sh(f"{SUPERVISORCTL} stop scheduler")
        for n in sorted(sizes):
            row = measure_size(app, n, cycles)
            rows.append(row)
            print(f"  {n} workers: supply+decide p50 {row['supply_decide_p50_s']:.4f} s, cycle p50 "
                  f"{row['cycle_p50_s']:.4f} s, collector query {row['collector_query_p50_s']:.4f} s, RSS "
                  f"{row['rss_mb']} MB, store {row['store_statements_per_cycle']} statements / "
                  f"{row['store_transactions_per_cycle']} transactions per cycle", flush=True)
    print(table([[r["workers"], f"{r['supply_decide_p50_s']:.4f}", f"{r['phases_p50_s']['observe_supply']:.4f}",
                  f"{r['phases_p50_s']['decide']:.4f}", f"{r['phases_p50_s']['record']:.4f}",
                  f"{r['cycle_p50_s']:.4f}", f"{r['collector_query_p50_s']:.4f}", r["rss_mb"],
                  r["store_statements_per_cycle"], r["store_transactions_per_cycle"], r["load1"]] for r in rows],
                ["WORKERS", "SUPPLY+DECIDE s", "SUPPLY s", "DECIDE s", "RECORD s", "CYCLE s", "QUERY s", "RSS MB",
                 "STATEMENTS", "TRANSACTIONS", "LOAD1"]))
    big = max(rows, key=lambda r: r["workers"])
    small = min(rows, key=lambda r: r["workers"])
    verdict = {
        "workers": big["workers"],
        "supply_decide_p50_s": big["supply_decide_p50_s"],
        "supply_decide_met": big["supply_decide_p50_s"] <= GOALS["supply_decide_p50_s_at_10k"],
        "rss_mb_max": max(r["rss_mb"] for r in rows),
        "rss_met": max(r["rss_mb"] for r in rows) <= GOALS["rss_mb"],
        "store_statements_per_cycle": {r["workers"]: r["store_statements_per_cycle"] for r in rows},
        "store_transactions_per_cycle": {r["workers"]: r["store_transactions_per_cycle"] for r in rows},
        "store_statements_met": big["store_statements_per_cycle"] <= small["store_statements_per_cycle"],
    }
    print(f"\nat {big['workers']} workers: supply+decide p50 {verdict['supply_decide_p50_s']:.3f} s (goal <= 0.3 s "
          f"at 10,000): {'met' if verdict['supply_decide_met'] else 'missed'}; RSS <= {verdict['rss_mb_max']} MB "
          f"(goal <= 200 MB): {'met' if verdict['rss_met'] else 'missed'}; store statements per cycle "
          f"{verdict['store_statements_per_cycle']} (goal: not growing): "
          f"{'met' if verdict['store_statements_met'] else 'missed'}")
    result = {"goal": GOALS, "verdict": verdict, "cycles": cycles, "rows": rows}
    path = write_result("workers", result, out)
    print(f"results: {path}")
    return result


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--cycles", type=int, default=10, help="timed cycles at each size (default 10)")
    args = p.parse_args(argv)
    image_ready(args)
    run(args.sizes, args.cycles, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
