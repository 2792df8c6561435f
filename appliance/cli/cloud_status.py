"""cloud_status: what the appliance's clouds, workers and queue look like now."""
from __future__ import annotations

import argparse
import sys
import time

from .. import federation, ops, reload
from .common import BAD_INPUT, BROKEN, NOT_RUNNING, OK, Exit, duration, emit_json, open_state, run, table

EXAMPLES = """\
examples:
  cloud_status              clouds: enabled, booting/idle/busy/draining, max, health
  cloud_status -m           workers: id, cloud, state, condor name, age, idle for
  cloud_status -m -a        workers, including those that ended in the last hour
  cloud_status -q           demand: idle jobs grouped by request (and by schedd, for jobs that flock
                            here), which clouds can run them; the remote schedds allowed to flock here
  cloud_status -c local     one cloud, its workers and its recent events
  cloud_status -e           the latest events (every worker transition, with its reason), and
                            who changed what and why (cloud_admin --comment)
  cloud_status -b           boots per cloud in the last 24 h: launches, joined, failed, success
                            ratio, boot time (mean, p50, p90, max), the commonest failure
  cloud_status -z           each boot failure in the last 24 h: worker, cloud, after how long, why
  cloud_status -g           job times per cloud: jobs that completed on its workers in the last
                            24 h (the schedd's history), mean, p50, p90, max, hours in all
  cloud_status -b --hours 6 the same over the last 6 hours (-b, -z and -g)
  cloud_status --json       any of the above as JSON

The clouds overview ends with the configuration file the scheduler runs and its version
(`cloud_admin --reload` takes an edited file).

exit codes: 0 ok, 1 unknown cloud, 2 usage, 3 scheduler not running, 4 bad config or state
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloud_status", description=__doc__, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group()
    what.add_argument("-m", "--workers", action="store_true", help="list workers")
    what.add_argument("-q", "--queue", action="store_true", help="show demand (idle jobs by request)")
    what.add_argument("-c", "--cloud", metavar="NAME", help="show one cloud in detail")
    what.add_argument("-e", "--events", action="store_true", help="show the latest events")
    what.add_argument("-b", "--boot-times", action="store_true",
                      help="boot statistics per cloud: launches, failures, success ratio, boot times")
    what.add_argument("-z", "--boot-failures", action="store_true", help="list the boot failures, with why")
    what.add_argument("-g", "--job-times", action="store_true",
                      help="job run times per cloud, from the schedd's history")
    p.add_argument("-a", "--all", action="store_true", help="with -m: include workers that ended in the last hour")
    p.add_argument("-n", "--limit", type=int, default=30, metavar="N", help="with -e: how many events (default 30)")
    p.add_argument("--hours", type=int, default=ops.STATS_HOURS, metavar="N",
                   help=f"with -b, -z and -g: the last N hours (default {ops.STATS_HOURS})")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    stats_view = args.boot_times or args.boot_failures or args.job_times
    if args.hours != ops.STATS_HOURS and not stats_view:
        p.error("--hours only goes with -b, -z and -g")
    cfg, store = open_state()
    sched = ops.scheduler_status(store)
    try:
        if args.workers:
            data = ops.workers_status(store, include_ended=args.all)
            text = _workers(data)
        elif args.queue:
            data = ops.queue_status(store)
            schedds = federation.schedds_status(store)
            if schedds:      # only where remote schedds are allowed to flock here
                data["schedds"] = schedds
            text = _queue(data)
        elif args.cloud:
            data = ops.cloud_status(store, cfg, args.cloud)
            text = _cloud(data)
        elif args.events:
            if args.limit < 1:
                raise Exit(BAD_INPUT, f"-n must be a whole number >= 1, got {args.limit}")
            data = ops.events(store, limit=args.limit)
            text = _events(data)
        elif args.boot_times or args.boot_failures:
            boots = ops.boot_status(store, cfg, args.hours)
            key = "clouds" if args.boot_times else "failures"
            data = {"hours": boots["hours"], "since": boots["since"], key: boots[key]}
            text = _boots(data) if args.boot_times else _boot_failures(data)
        elif args.job_times:
            from ..condor import CondorError  # the bindings only for the schedd's history
            try:
                data = ops.job_time_status(cfg, args.hours)
            except CondorError as err:
                raise Exit(BROKEN, str(err)) from None
            text = _job_times(data)
        else:
            data = ops.clouds_status(store, cfg)
            spend = ops.spend_status(store, cfg) if cfg.priced or cfg.budgets else None
            text = _clouds(data) + (_spend(spend) if spend else "")
    except ops.OpError as err:
        raise Exit(BAD_INPUT, str(err)) from None
    overview = not any((args.workers, args.queue, args.cloud, args.events, stats_view))
    # the clouds overview says which file and version the scheduler runs (it changes with a reload)
    active = reload.active_summary(store) if overview else None
    if args.json:
        emit_json({"scheduler": sched, "data": data, **({"spend": spend} if overview and spend else {}),
                   **({"config": active} if overview else {})})
    else:
        print(text)
        print(f"\nscheduler: {sched['message']}")
        if active:
            print(_active(active))
    if not sched["running"]:
        print(f"cloud_status: the scheduler is {sched['message']}", file=sys.stderr)
        return NOT_RUNNING
    return OK


def _clouds(rows) -> str:
    now = time.time()
    # cost columns only when some shape has a price, MIN IDLE only when some cloud keeps headroom
    priced = any(c.get("cost_per_hour") is not None for c in rows)
    warm = any(c.get("headroom") for c in rows)
    return table([[c["name"], c["type"], "yes" if c["enabled"] else "no", c["booting"], c["idle"], c["busy"],
                   c["draining"], c["max_workers"], *([_min_idle(c)] if warm else []),
                   *([_money(c["cost_per_hour"]), _money(c["spend_24h"])] if priced else []),
                   _health(c), _last_error(c, now)] for c in rows],
                 ["CLOUD", "TYPE", "ENABLED", "BOOTING", "IDLE", "BUSY", "DRAINING", "MAX",
                  *(["MIN IDLE"] if warm else []), *(["COST/H", "SPENT 24H"] if priced else []), "HEALTH",
                  "LAST ERROR"])


def _active(a) -> str:
    """'configuration: /etc/appliance/appliance.yaml version 3f2a9c1b7d0e, loaded 12:03:04 (5m00s ago)'."""
    when = a.get("loaded_at")
    loaded = (f", loaded {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(when))} "
              f"({duration(time.time() - when)} ago)") if when else ""
    return f"configuration: {a.get('source')} version {a.get('version')}{loaded}"


def _min_idle(c) -> str:
    """'1', '2 (large 1)', '1 08:00-18:00', '1 08:00-18:00 (off now)': a cloud's warm headroom."""
    h = c.get("headroom")
    if not h:
        return "-"
    shaped = [f"{s['name']} {s['min_idle']}" for s in c.get("shapes") or [] if s.get("min_idle")]
    text = str(c.get("min_idle", 0)) + (f" ({', '.join(shaped)})" if shaped else "")
    if c.get("min_idle_window"):
        text += f" {c['min_idle_window']}"
    return text + (" (off now)" if h.get("off") else "")


def _money(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _spend(s) -> str:
    """The pool's cost and its budget, under the clouds table."""
    caps = [f"{k} {v:g}" for k, v in s["budget"].items() if v is not None]
    return (f"\n\ncost: {s['cost_per_hour']:.2f}/h now, {s['spend_24h']:.2f} in the last 24 h"
            + (f"; budget: {', '.join(caps)}" if caps else "; no budget set"))


def _health(c) -> str:
    if c["health"] == "backoff":
        return f"backoff {c['backoff_seconds']}s"
    if c["health"] == "stopped":
        return "stopped (re-enable to retry)"
    return c["health"]


def _last_error(c, now: float) -> str:
    if not c["last_error"]:
        return "-"
    text = c["last_error"] if len(c["last_error"]) <= 80 else c["last_error"][:77] + "..."
    return f"{duration(now - c['last_error_at'])} ago: {text}" if c["last_error_at"] else text


def _workers(rows) -> str:
    if not rows:
        return "no workers"
    # a SHAPE column only when some cloud has named shapes (a lone worker's is 'default')
    shaped = any(w.get("shape") not in (None, "", "default") for w in rows)
    # an IMAGE column only when some worker runs an image a job asked for by name
    imaged = any(w.get("image") not in (None, "", "default") for w in rows)
    return table([[w["id"], w["cloud"], *([w.get("shape") or "-"] if shaped else []),
                   *([w.get("image") or "default"] if imaged else []), w["state"], w["condor_name"],
                   duration(w["age_seconds"]), duration(w["idle_seconds"]), w["reason"]] for w in rows],
                 ["WORKER", "CLOUD", *(["SHAPE"] if shaped else []), *(["IMAGE"] if imaged else []), "STATE",
                  "CONDOR NAME", "AGE", "IDLE FOR", "LAST CHANGE"])


def _queue(q) -> str:
    schedds = _schedds(q.get("schedds") or [])
    if not q["groups"]:
        return "no idle jobs" + schedds
    remote = any(g.get("schedd") for g in q["groups"])
    body = table([([g.get("schedd") or "local", g.get("owner") or "-"] if remote else []) +
                  [g["count"], g["cpus"], g["memory"], g["disk"] // 1024, ",".join(g["clouds"]) or "none",
                   g["status"], g["reason"]] for g in q["groups"]],
                 (["SCHEDD", "OWNER"] if remote else []) + ["JOBS", "CPUS", "MEMORY", "DISK", "CLOUDS", "STATUS", "WHY"])
    extra = ""
    if q["unschedulable_jobs"]:
        extra = f"\n\n{q['unschedulable_jobs']} idle job(s) are unschedulable: no configured cloud can ever run them"
    return f"{q['idle_jobs']} idle job(s) in {len(q['groups'])} group(s)\n\n{body}{extra}{schedds}"


def _schedds(rows) -> str:
    """The remote schedds allowed to flock here: whether their queue could be read, and their demand."""
    if not rows:
        return ""
    body = table([[r["name"], r["state"], r["offered"], r["idle_jobs"], ",".join(r["users"]) or "-", r["detail"]]
                  for r in rows], ["SCHEDD", "STATE", "OFFERED", "COUNTED", "USERS", "DETAIL"])
    return f"\n\nremote schedds allowed to flock here (cloud_admin --allow-schedd):\n\n{body}"


def _cloud(c) -> str:
    head = _clouds([c])
    err = f"\nlast error: {c['last_error']}" if c["last_error"] else ""
    w = _workers(c["workers"])
    ev = _events(c["events"]) if c["events"] else "no events"
    cost = ""
    if c.get("cost_per_hour") is not None or any(v is not None for v in (c.get("budget") or {}).values()):
        cost = "\n" + _spend({"cost_per_hour": c.get("cost_per_hour") or 0.0, "spend_24h": c.get("spend_24h") or 0.0,
                              "budget": c["budget"]}).strip()
    return f"{head}\n{_sizes(c)}; priority {c['priority']}{_images(c)}{cost}{_warm(c)}{err}\n\n{w}\n\n{ev}"


def _warm(c) -> str:
    """The cloud's warm headroom as the scheduler last saw it, or why none is kept now."""
    h = c.get("headroom")
    if not h:
        return ""
    if h.get("off"):
        return f"\nheadroom: min_idle {_min_idle(c)}; none kept now: {h['off']}"
    return f"\n{h.get('status') or f'headroom: min_idle {_min_idle(c)}'}"


def _images(c) -> str:
    """'; images: default (appliance:latest), bio (lab/bio:1)' when jobs may choose one; the VMType."""
    images = c.get("images") or {}
    shown = f"; images: {', '.join(f'{n} ({ref})' for n, ref in images.items())}" if len(images) > 1 else ""
    return shown + (f"; vm_type {c['vm_type']}" if c.get("vm_type") else "")


def _sizes(c) -> str:
    """'worker size: ...' for a cloud with one unpriced size, else each shape with its price."""
    shapes = c.get("shapes") or [{"name": "default", "price": None, "gpus": 0, **c["worker"]}]

    def size(s) -> str:
        return (f"{s['cpus']} cpus, {s['memory']} MB, {s['disk']} MB disk" + (f", {s['gpus']} gpus" if s["gpus"] else "")
                + (f", {s['price']:g}/h" if s["price"] is not None else ""))
    def health(s) -> str:
        if s.get("health") == "backoff":
            return f" (backing off {s['backoff_seconds']}s: {s['last_error']})"
        return ""
    if len(shapes) == 1 and shapes[0]["price"] is None:
        return f"worker size: {size(shapes[0])}"
    return "shapes: " + "; ".join(f"{s['name']} {size(s)}{health(s)}" for s in shapes)


def _events(rows) -> str:
    if not rows:
        return "no events"
    return table([[time.strftime("%H:%M:%S", time.localtime(e["time"])), e["worker_id"] or e["cloud"] or "",
                   f"{e['from_state'] or ''} -> {e['to_state']}" if e["to_state"] else e["kind"], e["reason"]]
                  for e in rows], ["TIME", "WHO", "WHAT", "WHY"])


def _window(d) -> str:
    return f"the last {d['hours']} h (since {time.strftime('%Y-%m-%d %H:%M', time.localtime(d['since']))})"


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def _boots(d) -> str:
    """Per cloud: how the starts of the workers launched in the window ended, and how long joining took."""
    rows = d["clouds"]
    interrupted = any(c["interrupted"] for c in rows)
    body = table([[c["cloud"], c["launched"], c["joined"], c["failed"], *([c["interrupted"]] if interrupted else []),
                   c["cancelled"], c["starting"], _ratio(c["success"]),
                   *(duration(c["boot_seconds"][k]) for k in ("mean", "p50", "p90", "max")),
                   _commonest(c["failure_reasons"])] for c in rows],
                 ["CLOUD", "LAUNCHED", "JOINED", "FAILED", *(["INTERRUPTED"] if interrupted else []), "CANCELLED",
                  "STARTING", "SUCCESS", "BOOT MEAN", "P50", "P90", "MAX", "COMMONEST FAILURE"])
    return (f"workers launched in {_window(d)}; boot time: from the launch to the worker in the pool; "
            f"success: joined / (joined + failed)\n\n{body}")


def _commonest(reasons) -> str:
    if not reasons:
        return "-"
    r = reasons[0]
    text = r["reason"] if len(r["reason"]) <= 60 else r["reason"][:57] + "..."
    return f"{r['count']}x {text}"


def _boot_failures(d) -> str:
    rows = d["failures"]
    if not rows:
        return f"no boot failures in {_window(d)}"
    body = table([[time.strftime("%m-%d %H:%M:%S", time.localtime(f["time"])), f["worker_id"], f["cloud"],
                   duration(f["after_seconds"]), f["reason"]] for f in rows],
                 ["TIME", "WORKER", "CLOUD", "AFTER", "WHY"])
    return f"{len(rows)} boot failure(s) in {_window(d)}\n\n{body}"


def _job_times(d) -> str:
    body = table([[c["cloud"], c["jobs"], c["workers"], *(duration(c["job_seconds"][k]) for k in
                                                          ("mean", "p50", "p90", "max")), f"{c['hours']:g}"]
                  for c in d["clouds"]], ["CLOUD", "JOBS", "WORKERS", "MEAN", "P50", "P90", "MAX", "HOURS"])
    return (f"jobs that completed on the workers in {_window(d)} (the schedd's history; each job's last "
            f"run)\n\n{body}")


def entry() -> None:
    sys.exit(run(main, None))


if __name__ == "__main__":
    entry()
