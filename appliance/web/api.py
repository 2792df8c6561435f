"""The JSON API: the same data and the same operations as cloud_status and cloud_admin.

Every answer is {"scheduler": ..., "data": ...}, as `cloud_status --json` prints;
errors are {"error": "..."} with 400 (bad input), 401 (no or wrong credentials),
404 (unknown cloud or path), 429 (too many failed logins) or 503 (bad config, with
"config_error" too). The clouds listing also carries "config_error" at the top: null, or
the scheduler's message while it waits for a valid appliance.yaml, so an invalid file
never reads as an empty list of clouds.
"""
from __future__ import annotations

from functools import wraps

from flask import Blueprint, jsonify, request

from .. import federation, ops, reload
from ..config import ConfigError
from . import auth, config, store
from .openapi import spec

bp = Blueprint("api", __name__, url_prefix="/api")


def error(status: int, message: str, **headers):
    resp = jsonify({"error": message})
    resp.status_code = status
    resp.headers.update(headers)
    return resp


def api_auth(view):
    @wraps(view)
    def wrapper(*args, **kwargs):
        a = auth.authenticate(store())
        if not a.ok:
            extra = {"Retry-After": str(a.retry_after)} if a.status == 429 else {}
            return error(a.status, a.message, **extra)
        if a.via == "session" and request.method not in auth.SAFE_METHODS and not auth.csrf_ok():
            return error(403, "missing or wrong CSRF token (send the X-CSRF-Token header)")
        try:
            return view(*args, **kwargs)
        except ops.OpError as err:
            return error(err.status, str(err))
    return wrapper


def answer(data, status: int = 200):
    resp = jsonify({"scheduler": ops.scheduler_status(store()), "data": data})
    resp.status_code = status
    return resp


def _int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or not lo <= int(raw) <= hi:
        raise ops.OpError(f"{name} must be a whole number from {lo} to {hi}, got {raw!r}")
    return int(raw)


def _flag_arg(name: str) -> bool:
    raw = request.args.get(name, "false").lower()
    if raw not in ("1", "0", "true", "false", "yes", "no", ""):
        raise ops.OpError(f"{name} must be true or false, got {raw!r}")
    return raw in ("1", "true", "yes")


def _comment_arg() -> str | None:
    """An action's optional reason, recorded in its event: "comment" in a JSON body, or ?comment=."""
    body = request.get_json(silent=True)
    if isinstance(body, dict) and "comment" in body:
        return body["comment"]
    return request.args.get("comment")


@bp.get("/openapi.json")
def openapi():
    return jsonify(spec())


@bp.get("/clouds")
@api_auth
def clouds():
    s = store()
    sched = ops.scheduler_status(s)
    return jsonify({"scheduler": sched, "data": ops.clouds_status(s, config()), "config_error": sched["config_error"]})


@bp.get("/clouds/<name>")
@api_auth
def cloud(name: str):
    return answer(ops.cloud_status(store(), config(), name))


@bp.post("/clouds/<name>/enable")
@api_auth
def enable(name: str):
    return answer(ops.set_enabled(store(), config(), name, True, actor="web API", comment=_comment_arg()))


@bp.post("/clouds/<name>/disable")
@api_auth
def disable(name: str):
    return answer(ops.set_enabled(store(), config(), name, False, actor="web API", comment=_comment_arg()))


@bp.patch("/clouds/<name>")
@api_auth
def patch_cloud(name: str):
    cfg = config()
    ops.resolve_cloud(cfg, name)      # 404 before 400: the path is checked first
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not body:
        return error(400, 'the body must be a JSON object such as {"max_workers": 5} or {"enabled": false}')
    unknown = sorted(set(body) - {"max_workers", "enabled", "comment"})
    if unknown:
        return error(400, f"unknown field(s): {', '.join(map(str, unknown))} (known: enabled, max_workers, comment)")
    if not set(body) & {"max_workers", "enabled"}:
        return error(400, 'nothing to change: give "max_workers" or "enabled" (with "comment", why)')
    comment = ops.parse_comment(body.get("comment"))     # validate before changing anything
    if "enabled" in body and not isinstance(body["enabled"], bool):
        return error(400, f"enabled must be true or false, got {body['enabled']!r}")
    if "max_workers" in body:
        if not isinstance(body["max_workers"], int) or isinstance(body["max_workers"], bool):
            return error(400, f"max_workers must be a whole number from 0 to 100000, got {body['max_workers']!r}")
        ops.parse_count(body["max_workers"])      # validate before changing anything
    result = None
    if "max_workers" in body:
        result = ops.set_max_workers(store(), cfg, name, body["max_workers"], actor="web API", comment=comment)
    if "enabled" in body:
        result = ops.set_enabled(store(), cfg, name, body["enabled"], actor="web API", comment=comment)
    return answer(result)


@bp.post("/reload")
@api_auth
def reload_config():
    """Reread appliance.yaml, as cloud_admin --reload: an invalid file is refused here (400)
    and the running configuration stays; else the scheduler's answer (202: none yet)."""
    from .ui import WEB_RELOAD_WAIT, _config_path
    body = request.get_json(silent=True) if request.data else {}
    if not isinstance(body, dict) or set(body) - {"reset_overrides", "comment"}:
        return error(400, 'the body must be empty or a JSON object such as '
                          '{"reset_overrides": true, "comment": "why"}')
    reset = body.get("reset_overrides", False)
    if not isinstance(reset, bool):
        return error(400, f"reset_overrides must be true or false, got {reset!r}")
    try:
        actor = ops.by("web API", ops.parse_comment(body.get("comment", request.args.get("comment"))))
    except ops.OpError as err:
        return error(400, str(err))
    try:
        rid, result = reload.ask(store(), reset, actor=actor, timeout=WEB_RELOAD_WAIT, path=_config_path())
    except ConfigError as err:
        resp = jsonify({"error": f"configuration error: {err}", "config_error": str(err)})
        resp.status_code = 400
        return resp
    if result is None:
        return answer({"id": rid, "ok": None, "message": "asked; the scheduler has not answered yet"}, 202)
    if not result["ok"]:
        return error(400, reload.answer_line(result))
    return answer(result)


@bp.get("/workers")
@api_auth
def workers():
    return answer(ops.workers_status(store(), include_ended=_flag_arg("all")))


@bp.get("/queue")
@api_auth
def queue():
    return answer(ops.queue_status(store()))


@bp.get("/schedds")
@api_auth
def schedds():
    """The remote schedds allowed to flock here (cloud_admin --allow-schedd), and what the
    scheduler last saw of each; their demand is in /api/queue, by schedd."""
    return answer(federation.schedds_status(store()))


@bp.get("/events")
@api_auth
def events():
    since = _int_arg("since", 0, 0, 2 ** 62)
    limit = _int_arg("limit", 100, 1, 1000)
    return answer(ops.events(store(), since=since, limit=limit))


@bp.get("/history")
@api_auth
def history():
    """The pool over time, the page's charts' data: one-minute buckets of the last six hours."""
    return answer(ops.history_status(store(), since=_int_arg("since", 0, 0, 2 ** 62)))
