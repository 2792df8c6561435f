"""cloud_admin: enable or disable clouds, change their max_workers, drain and remove workers.

Changes are saved at once and applied by the scheduler on its next cycle;
they survive restarts of the appliance.
"""
from __future__ import annotations

import argparse
import sys

from .. import ops
from .common import BAD_INPUT, NOT_RUNNING, OK, Exit, emit_json, open_state, run

EXAMPLES = """\
examples:
  cloud_admin -e docker                 enable the docker cloud
  cloud_admin -d local                  disable local: no new launches (running workers stay)
  cloud_admin -v 5 -c docker            let docker run up to 5 workers
  cloud_admin -k -c docker -n docker-1a2b3c
                                        drain one worker (running jobs finish), then remove it
  cloud_admin -k -c docker -a           drain and remove all of docker's workers
  cloud_admin -k -c docker -a --now     remove them at once, without draining (kills jobs)

exit codes: 0 done, 1 unknown cloud/worker or bad number, 2 usage, 3 saved but the
scheduler is not running, 4 bad config or state
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloud_admin", description=__doc__, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    act = p.add_mutually_exclusive_group(required=True)
    act.add_argument("-e", "--enable", metavar="NAME", help="enable a cloud")
    act.add_argument("-d", "--disable", metavar="NAME", help="disable a cloud (stops new launches only)")
    act.add_argument("-k", "--kill", action="store_true", help="drain and remove workers (needs -c and -n or -a)")
    act.add_argument("-v", "--max-workers", metavar="N", help="set a cloud's max_workers (needs -c)")
    p.add_argument("-c", "--cloud", metavar="NAME", help="the cloud for -k and -v")
    p.add_argument("-n", "--worker", metavar="ID", help="with -k: one worker")
    p.add_argument("-a", "--all", action="store_true", help="with -k: all the cloud's workers")
    p.add_argument("--now", action="store_true", help="with -k: remove without draining (running jobs are killed)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if (args.kill or args.max_workers is not None) and args.cloud is None:
        p.error("-k and -v need -c NAME")
    if args.kill and bool(args.worker) == bool(args.all):
        p.error("-k needs exactly one of -n ID or -a")
    if (args.worker or args.all or args.now) and not args.kill:
        p.error("-n, -a and --now only go with -k")
    toggle = args.enable if args.enable is not None else args.disable
    if args.cloud is not None and toggle is not None:
        p.error("-e and -d take the cloud name directly: cloud_admin -e NAME")

    cfg, store = open_state()
    try:
        if toggle is not None:
            name = toggle
            cloud = ops.set_enabled(store, cfg, name, args.enable is not None, actor="cloud_admin")
            result = {"cloud": cloud}
            text = f"{name}: {'enabled' if cloud['enabled'] else 'disabled'}"
        elif args.max_workers is not None:
            cloud = ops.set_max_workers(store, cfg, args.cloud, args.max_workers, actor="cloud_admin")
            result = {"cloud": cloud}
            text = f"{args.cloud}: max_workers {cloud['max_workers']}"
        else:
            ids = ops.kill_workers(store, cfg, args.cloud, args.worker, args.all, args.now, actor="cloud_admin")
            result = {"cloud": args.cloud, "workers": ids, "drain": not args.now}
            how = "removal without draining" if args.now else "drain and removal"
            text = f"{args.cloud}: {how} requested for {len(ids)} worker(s)" + (f": {', '.join(ids)}" if ids else "")
    except ops.OpError as err:
        raise Exit(BAD_INPUT, str(err)) from None

    sched = ops.scheduler_status(store)
    if args.json:
        emit_json({**result, "scheduler": sched})
    else:
        print(text)
    if not sched["running"]:
        print(f"cloud_admin: saved, but the scheduler is {sched['message']}; it applies when the scheduler runs",
              file=sys.stderr)
        return NOT_RUNNING
    return OK


def entry() -> None:
    sys.exit(run(main, None))


if __name__ == "__main__":
    entry()
