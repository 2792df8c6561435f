"""cloud_admin: enable or disable clouds, change their max_workers, drain and remove workers,
reload the configuration.

Changes are saved at once and applied by the scheduler on its next cycle;
they survive restarts of the appliance. Every change needs --comment (-C): why,
recorded in its event (cloud_status -e) with who made it.
"""
from __future__ import annotations

import argparse
import sqlite3
import sys
import time

from .. import ops
from ..config import ConfigError, load
from ..store import Store
from .common import BAD_INPUT, BROKEN, NOT_RUNNING, OK, Exit, emit_json, open_state, run, table

EXAMPLES = """\
examples:
  cloud_admin -e docker -C "quota raised"
                                        enable the docker cloud, saying why (in its event)
  cloud_admin -d local -C "host maintenance"
                                        disable local: no new launches (running workers stay)
  cloud_admin -v 5 -c docker -C "5 more cores granted"
                                        let docker run up to 5 workers
  cloud_admin -o -c docker -n docker-1a2b3c -C "kernel update"
                                        retire one worker after its running jobs: it starts no new
                                        job, its running ones finish however long, then it is removed
  cloud_admin -o -c docker -a -C "..."  retire all of docker's workers so
  cloud_admin -k -c docker -n docker-1a2b3c -C "..."
                                        the same as -o: drain (running jobs finish), then remove
  cloud_admin -k -c docker -a --now -C "stuck"
                                        remove them at once, without draining (kills jobs)
  cloud_admin --add-user alice -C "new student"
                                        a lab user: her account, and a token and client settings
                                        to submit from her own machine (docs/remote-submission.md)
  cloud_admin --list-users              the lab users
  cloud_admin --remove-user alice -C "left the lab"
                                        her tokens stop working; her jobs and account are removed
  cloud_admin --allow-schedd lab -C "..."
                                        let the schedd "lab" flock jobs here: writes its token and the
                                        lines its admin adds (docs/federation.md)
  cloud_admin --list-schedds            the allowed remote schedds and what the scheduler sees of them
  cloud_admin --revoke-schedd lab -C "..."
                                        its token stops working; its ads are withdrawn
  cloud_admin --reload -C "new shapes"   reread appliance.yaml: clouds added, removed (their workers
                                        drain), changed; runtime -e/-d/-v settings are kept
  cloud_admin --reload --reset-overrides -C "..."
                                        the same, and the file's enabled/max_workers apply again

exit codes: 0 done, 1 unknown cloud/worker/user, bad number or user name, 2 usage, 3 saved but the
scheduler is not running, 4 bad config or state
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloud_admin", description=__doc__, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    act = p.add_mutually_exclusive_group(required=True)
    act.add_argument("-e", "--enable", metavar="NAME", help="enable a cloud")
    act.add_argument("-d", "--disable", metavar="NAME", help="disable a cloud (stops new launches only)")
    act.add_argument("-k", "--kill", action="store_true", help="drain and remove workers (needs -c and -n or -a); "
                                                               "with --now, remove them at once")
    act.add_argument("-o", "--retire", action="store_true", help="retire workers after their running jobs: no new "
                                                                 "job starts on them, the running ones finish however "
                                                                 "long they take, then they are removed (needs -c and "
                                                                 "-n or -a)")
    act.add_argument("-v", "--max-workers", metavar="N", help="set a cloud's max_workers (needs -c)")
    act.add_argument("--add-user", metavar="NAME", help="add a lab user (or give one another token): prints "
                                                       "her token and client settings")
    act.add_argument("--list-users", action="store_true", help="list the lab users")
    act.add_argument("--remove-user", metavar="NAME", help="remove a lab user: her tokens stop working, her jobs "
                                                          "are removed")
    act.add_argument("--allow-schedd", metavar="NAME", help="let a remote schedd flock jobs here: makes its token "
                                                           "and the lines its admin adds on their side")
    act.add_argument("--revoke-schedd", metavar="NAME", help="make a remote schedd's token useless and withdraw its ads")
    act.add_argument("--list-schedds", action="store_true", help="list the remote schedds allowed to flock here")
    act.add_argument("--reload", action="store_true", help="reread appliance.yaml without a restart (an invalid "
                                                           "file is refused and the running one stays)")
    p.add_argument("--reset-overrides", action="store_true", help="with --reload: drop the settings changed at "
                                                                  "runtime (-e, -d, -v) so the file's apply")
    p.add_argument("--address", metavar="HOST[:PORT]", help="with --allow-schedd: the address the remote schedd "
                                                           "flocks to (default: pool.condor_host, else this host)")
    p.add_argument("--read-token", metavar="FILE", help="with --allow-schedd: a READ token from the remote pool, "
                                                       "to read its schedd's queue when it does not allow anonymous "
                                                       "READ (an appliance gives one: see docs/federation.md)")
    p.add_argument("-C", "--comment", metavar="TEXT", help="why (required with every action but the listings): "
                                                            "recorded in the action's event, shown by cloud_status -e")
    p.add_argument("-c", "--cloud", metavar="NAME", help="the cloud for -k, -o and -v")
    p.add_argument("-n", "--worker", metavar="ID", help="with -k or -o: one worker")
    p.add_argument("-a", "--all", action="store_true", help="with -k or -o: all the cloud's workers")
    p.add_argument("--now", action="store_true", help="with -k: remove without draining (running jobs are killed)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if (args.kill or args.retire or args.max_workers is not None) and args.cloud is None:
        p.error("-k, -o and -v need -c NAME")
    if (args.kill or args.retire) and bool(args.worker) == bool(args.all):
        p.error(f"{'-k' if args.kill else '-o'} needs exactly one of -n ID or -a")
    if (args.worker or args.all) and not (args.kill or args.retire):
        p.error("-n and -a only go with -k or -o")
    if args.now and not args.kill:
        p.error("--now only goes with -k (-o always lets the running jobs finish)")
    listing = args.list_users or args.list_schedds
    if args.comment is None and not listing:
        p.error("say why with --comment TEXT (-C TEXT): it is recorded in the event, with who acted "
                "(cloud_status -e)")
    if args.comment is not None and listing:
        p.error("--comment goes with an action that changes something, not with a listing")
    if args.comment is not None and not args.comment.strip():
        p.error("--comment must say why: it is empty")
    toggle = args.enable if args.enable is not None else args.disable
    if args.cloud is not None and toggle is not None:
        p.error("-e and -d take the cloud name directly: cloud_admin -e NAME")

    if (args.address or args.read_token) and args.allow_schedd is None:
        p.error("--address and --read-token only go with --allow-schedd")
    if args.reset_overrides and not args.reload:
        p.error("--reset-overrides only goes with --reload")
    if args.reload:
        return reload_command(args)
    if args.add_user is not None or args.list_users or args.remove_user is not None:
        return users_command(args)
    if args.allow_schedd is not None or args.revoke_schedd is not None or args.list_schedds:
        return schedds_command(args)

    cfg, store = open_state()
    try:
        if toggle is not None:
            name = toggle
            cloud = ops.set_enabled(store, cfg, name, args.enable is not None, actor="cloud_admin",
                                    comment=args.comment)
            result = {"cloud": cloud}
            text = f"{name}: {'enabled' if cloud['enabled'] else 'disabled'}"
        elif args.max_workers is not None:
            cloud = ops.set_max_workers(store, cfg, args.cloud, args.max_workers, actor="cloud_admin",
                                        comment=args.comment)
            result = {"cloud": cloud}
            text = f"{args.cloud}: max_workers {cloud['max_workers']}"
        else:
            ids = ops.kill_workers(store, cfg, args.cloud, args.worker, args.all, args.now, actor="cloud_admin",
                                   comment=args.comment, retire=args.retire)
            result = {"cloud": args.cloud, "workers": ids, "drain": not args.now}
            how = ("removal without draining" if args.now else
                   "retirement after the running jobs" if args.retire else "drain and removal")
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


def reload_command(args) -> int:
    """--reload: the file is checked here first (an invalid one: the usual one-line error, exit 4,
    nothing asked), then the scheduler takes it at its next cycle; its answer is printed."""
    from .. import reload
    try:
        store = Store()
    except (sqlite3.Error, OSError) as err:
        raise Exit(BROKEN, f"cannot open the appliance state: {err}") from None
    sched = ops.scheduler_status(store)
    try:
        actor = ops.by("cloud_admin", ops.parse_comment(args.comment))
        _, result = reload.ask(store, args.reset_overrides, actor=actor,
                               timeout=reload.WAIT if sched["running"] else 0)
    except ConfigError as err:
        raise Exit(BROKEN, f"configuration error: {err}") from None
    except ops.OpError as err:
        raise Exit(BAD_INPUT, str(err)) from None
    if args.json:
        emit_json({"reload": result, "scheduler": sched})
    if result is None:
        print(f"cloud_admin: asked, but the scheduler did not answer (it is {sched['message']}); it reads the "
              f"file when it runs", file=sys.stderr)
        return NOT_RUNNING
    if not args.json and result["ok"]:
        print(reload.answer_line(result))
    if not result["ok"]:
        print(f"cloud_admin: {reload.answer_line(result)}", file=sys.stderr)
        return BROKEN
    return OK


def users_command(args) -> int:
    """--add-user, --list-users, --remove-user: accounts and tokens, done at once (the scheduler
    has no part in them)."""
    from .. import users
    if args.list_users:
        try:
            cfg, store = load(), None
        except ConfigError as err:
            raise Exit(BROKEN, f"configuration error: {err}") from None
    else:
        cfg, store = open_state()      # the change is recorded there, with its comment
        comment = _comment(args)
    lab = users.Users(cfg)
    try:
        if args.list_users:
            rows = lab.list()
            if args.json:
                emit_json({"users": rows})
            else:
                print(table([(r["user"], r["uid"], r["identity"], time.strftime("%Y-%m-%d %H:%M", time.localtime(r["added"])),
                              r["account"], r["key"]) for r in rows],
                            ("USER", "UID", "IDENTITY", "ADDED", "ACCOUNT", "TOKENS")) if rows else "no lab users")
            return OK
        if args.remove_user is not None:
            result = lab.remove(args.remove_user)
            store.event("users", f"user {result['user']} removed by {ops.by('cloud_admin', comment)}")
            if args.json:
                emit_json(result)
            else:
                print(f"{result['user']}: removed; tokens for {result['identity']} no longer work, "
                      f"{result['removed_jobs']} job(s) of theirs removed from the queue")
            if result["jobs_problem"]:
                print(f"cloud_admin: their jobs could not be removed: {result['jobs_problem']}", file=sys.stderr)
            return OK
        result = lab.add(args.add_user)
        store.event("users", f"user {result['user']} " + ("added" if result["created"] else "given another token")
                    + f" by {ops.by('cloud_admin', comment)}")
    except users.UserError as err:
        raise Exit(BAD_INPUT, str(err)) from None
    if args.json:
        emit_json(result)
    else:
        print(_user_text(result, cfg.pool.name))
    for problem in (result["client"]["warning"], result["daemons_problem"] and
                    f"the pool's daemons were not told of the new key ({result['daemons_problem']}): "
                    f"the token works once they restart"):
        if problem:
            print(f"cloud_admin: warning: {problem}", file=sys.stderr)
    return OK


def _user_text(r: dict, pool: str) -> str:
    """What --add-user prints: the token and the exact client settings, ready to paste."""
    client = r["client"]
    head = (f"{r['user']}: added (uid {r['uid']})" if r["created"] else
            f"{r['user']}: exists; here is another token (the earlier ones keep working)")
    return "\n".join([
        f"{head}. Jobs submitted with this token are owned by {r['user']} ({r['identity']}).",
        "",
        f"Token ({', '.join(r['authorizations'])}: read the pool, submit and manage their own jobs; valid until",
        f"`cloud_admin --remove-user {r['user']}`). It is a password: hand it over privately.",
        "",
        r["token"],
        "",
        f"On the submitting machine, save the token as {client['token_file']} (mode 0600), and",
        "add these lines to ~/.condor/user_config (or to the condor_config it uses):",
        "",
        *client["config"],
        "",
        "or, instead of the file, set them in the environment (the Python bindings too):",
        "",
        *[f"export {k}={v}" for k, v in client["env"].items()],
        "",
        f"Then: condor_submit -spool job.sub; condor_q; condor_transfer_data {r['user']}",
        "(docs/remote-submission.md in the appliance's repository).",
    ])


def schedds_command(args) -> int:
    """--allow-schedd, --revoke-schedd, --list-schedds: keys, tokens and condor settings, done at
    once; the scheduler sees the change on its next cycle."""
    from .. import federation
    cfg, store = open_state()
    try:
        who = "" if args.list_schedds else f" by {ops.by('cloud_admin', _comment(args))}"
        if args.list_schedds:
            rows = federation.schedds_status(store)
            if args.json:
                emit_json({"schedds": rows})
            else:
                print(table([(r["name"], time.strftime("%Y-%m-%d %H:%M", time.localtime(r["allowed_since"])),
                              r["address"], "yes" if r["read_token"] else "no", r["state"], r["offered"],
                              r["idle_jobs"], r["detail"]) for r in rows],
                            ("SCHEDD", "ALLOWED", "FLOCKS TO", "READ TOKEN", "STATE", "OFFERED", "COUNTED", "DETAIL"))
                      if rows else "no remote schedds are allowed to flock here")
            return OK
        if args.revoke_schedd is not None:
            result = federation.revoke_schedd(args.revoke_schedd, cfg.pool.name)
            store.event("federation", f"schedd {result['schedd']} revoked{who}: its token no longer works "
                                      f"({result['identity']})")
            text = (f"{result['schedd']}: revoked; its token ({result['identity']}) no longer works and its ads "
                    f"were withdrawn. Its jobs stay in its own queue.")
        else:
            address = args.address or federation.default_address(cfg.pool.condor_host)
            result = federation.allow_schedd(args.allow_schedd, cfg.pool.name, address, args.read_token)
        if args.allow_schedd is not None and result["read_token_only"]:
            store.event("federation", f"schedd {result['schedd']}: its queue is now read with the token its pool "
                                      f"gave{who}")
            text = (f"{result['schedd']}: its queue is now read with the read token given; its own token "
                    f"({result['identity']}) stays valid.")
        elif args.allow_schedd is not None:
            store.event("federation", f"schedd {result['schedd']} allowed to flock here ({result['identity']})"
                                      + (" with a new token; the earlier one no longer works" if result["again"] else "")
                                      + who)
            files = result["files"]
            text = "\n".join([
                f"{result['schedd']}: allowed to flock here as {result['identity']}"
                + (" (a new token: the earlier one no longer works)" if result["again"] else "") + ".",
                "For the schedd's admin (copy both; the token is a password, hand it over privately):",
                f"  {files['config']}   {result['config_lines']} settings for their condor config, "
                f"with how to install them",
                f"  {files['token']}   the token, for their /etc/condor/tokens.d/",
                f"It flocks to {result['address']}" + ("" if args.address else " (change with --address)") + "; "
                + ("its queue is read with the read token given." if result["read_token"] else
                   "its queue is read anonymously (READ), as HTCondor allows by default."),
            ])
    except federation.FederationError as err:
        raise Exit(BAD_INPUT, str(err)) from None
    if args.json:
        emit_json(result)
    else:
        print(text)
    for what in ("reconfig_error", "withdraw_error"):
        if result.get(what):
            print(f"cloud_admin: warning: the pool's daemons were not told ({result[what]}): it applies when they "
                  f"restart", file=sys.stderr)
    return OK


def _comment(args) -> str:
    """The --comment of an action that is not one of ops' (users, schedds), checked as theirs are."""
    try:
        return ops.parse_comment(args.comment)
    except ops.OpError as err:
        raise Exit(BAD_INPUT, str(err)) from None


def entry() -> None:
    sys.exit(run(main, None))


if __name__ == "__main__":
    entry()
