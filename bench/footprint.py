"""Appliance footprint: start time to a usable pool and idle memory.

    python3 -m bench.footprint --trials 3

start   `docker run` -> the first condor_submit accepted (a job in the queue)
memory  the whole container's memory after it has idled (docker stats), and the
        resident memory of its main processes (/proc), with no workers and no jobs
"""
from __future__ import annotations

import json
import time

from .common import Appliance, image_ready, load, parser, summary, table, write_result

CONFIG = """
clouds:
  - {name: local, type: local, max_workers: 0}
"""
PROCESSES = ["condor_master", "condor_collector", "condor_negotiator", "condor_schedd", "condor_shared_port",
             "condor_procd", "appliance.daemon", "gunicorn", "supervisord"]

RSS = r"""
import json, os
rss = {}
for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
        cmd = open(f'/proc/{pid}/cmdline', 'rb').read().replace(b'\0', b' ').decode()
        kb = int([l for l in open(f'/proc/{pid}/status') if l.startswith('VmRSS')][0].split()[1])
    except (OSError, IndexError):
        continue
    if int(pid) == os.getpid():
        continue
    for name in NAMES:
        if name in cmd:
            rss[name] = rss.get(name, 0) + kb
            break
print(json.dumps({k: round(v / 1024, 1) for k, v in rss.items()}))
"""


def trial(idle_s: float) -> dict:
    with Appliance(CONFIG) as app:
        app.wait("the first accepted submit", lambda: "submitted" in app.sh(
            "cd /tmp && printf 'executable=/bin/true\\nqueue\\n' > f.sub && condor_submit f.sub 2>&1",
            user="submit", check=False), timeout=120, every=0.2)
        start = time.monotonic() - app.started
        app.sh("condor_rm -all >/dev/null 2>&1", user="submit", check=False)
        time.sleep(idle_s)      # the idle period itself is what is measured
        return {"start_s": round(start, 2), "memory_mb": app.memory_mb(),
                "rss_mb": json.loads(app.python(RSS.replace("NAMES", repr(PROCESSES)))), "load1": load()[0]}


def run(trials: int, idle_s: float, out: str | None = None) -> dict:
    rows = [trial(idle_s) for _ in range(trials)]
    start, mem = summary([r["start_s"] for r in rows]), summary([r["memory_mb"] for r in rows])
    print(table([[i + 1, r["start_s"], r["memory_mb"], r["load1"]] for i, r in enumerate(rows)],
                ["TRIAL", "DOCKER RUN -> SUBMIT ACCEPTED s", "IDLE MEMORY MB", "LOAD1"]))
    print("\nresident memory by process (MB, last trial): " +
          ", ".join(f"{k} {v}" for k, v in sorted(rows[-1]["rss_mb"].items(), key=lambda kv: -kv[1])))
    print(f"start to a usable pool: p50 {start['p50']} s; idle memory p50 {mem['p50']} MB")
    result = {"start": start, "memory_mb": mem, "idle_seconds": idle_s, "trials": rows}
    path = write_result("footprint", result, out)
    print(f"results: {path}")
    return result


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--idle", type=float, default=20, help="seconds to idle before reading memory")
    args = p.parse_args(argv)
    image_ready(args)
    run(args.trials, args.idle, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
