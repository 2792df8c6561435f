"""The dashboard: login, clouds (enable/disable, max_workers), the pool over time, workers, demand and
running jobs, events.

The server renders every part with Jinja; static/app.js fetches /parts every few
seconds and swaps in the parts that changed, and sends the forms with fetch, so
the page updates without a reload (and still works as plain forms without it).
"""
from __future__ import annotations

import logging
import time
from functools import wraps

from flask import Blueprint, flash, jsonify, redirect, render_template, request, session, url_for

from .. import federation, history, ops, reload
from ..cli.common import duration
from ..config import ConfigError
from . import auth, config, store, web_problems

log = logging.getLogger("appliance.web")

bp = Blueprint("ui", __name__, template_folder="templates", static_folder="static", static_url_path="/static")

EVENTS_SHOWN = 30
WEB_RELOAD_WAIT = 10.0      # seconds the page and the API wait for the scheduler's answer to a reload


@bp.app_template_filter("ago")
def _ago(seconds):
    return duration(seconds)


@bp.app_template_filter("clock")
def _clock(t):
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else "-"


@bp.app_context_processor
def _globals():
    return {"csrf_token": auth.csrf_token}


def _is_fetch() -> bool:
    return request.headers.get("X-Requested-With") == "fetch"


def page_auth(view):
    """A logged-in session; forms must also carry the session's CSRF token."""
    @wraps(view)
    def wrapper(*args, **kwargs):
        if session.get("user") != auth.USER:
            if _is_fetch() or request.method != "GET":
                return jsonify({"error": "not logged in"}), 401
            return redirect(url_for("ui.login"))
        if request.method not in auth.SAFE_METHODS and not auth.csrf_ok():
            log.warning("refused %s %s from %s: missing or wrong CSRF token", request.method, request.path,
                        auth.client())
            return jsonify({"error": "missing or wrong CSRF token: reload the page"}), 403
        return view(*args, **kwargs)
    return wrapper


def _done(message: str, status: int = 200):
    """Answer a form: JSON for the page's script, else back to the dashboard with a message."""
    if _is_fetch():
        return jsonify({"message" if status < 400 else "error": message}), status
    flash(message, "ok" if status < 400 else "error")
    return redirect(url_for("ui.dashboard"))


def view_model() -> dict:
    s = store()
    sched = ops.scheduler_status(s)
    try:
        cfg = config()
        clouds, cfg_error, pool = ops.clouds_status(s, cfg), None, cfg.pool.name
        spend = ops.spend_status(s, cfg) if cfg.priced or cfg.budgets else None
    except ConfigError as err:
        clouds, cfg_error, pool, spend = [], str(err), "appliance", None
    # the scheduler's verdict first: it is what it waits on (the file may be fixed a moment before it reads it)
    cfg_error = sched.get("config_error") or cfg_error
    workers = ops.workers_status(s, include_ended=True)
    live = [w for w in workers if w["state"] not in ("retired", "failed")]
    ended = [w for w in workers if w["state"] in ("retired", "failed")][-10:][::-1]
    queue = {**ops.queue_status(s), "schedds": federation.schedds_status(s)}
    running = ops.running_status(s)
    events = ops.events(s, limit=EVENTS_SHOWN)[::-1]
    totals = {k: sum(c[k] for c in clouds) for k in ("booting", "idle", "busy", "draining", "max_workers")}
    now = time.time()
    # the pool over time, drawn by the server as plain SVG: no script, no charting library
    charts = history.charts(ops.history_status(s, since=now - history.WINDOW), now)
    return {"sched": sched, "clouds": clouds, "config_error": cfg_error, "pool": pool, "workers": live,
            "ended": ended, "queue": queue, "events": events, "totals": totals, "now": now,
            "web_problems": web_problems(), "spend": spend, "running": running,
            "history": charts, "active_config": reload.active_summary(s)}


# ------------------------------------------------------------------ pages

@bp.get("/")
@page_auth
def dashboard():
    return render_template("dashboard.html", **view_model())


@bp.get("/parts")
@page_auth
def parts():
    return render_template("parts.html", **view_model())


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET":
        if session.get("user") == auth.USER:
            return redirect(url_for("ui.dashboard"))
        return render_template("login.html", error=None)
    if not auth.csrf_ok():
        return render_template("login.html", error="The form expired. Please try again."), 400
    s = store()
    who = auth.client()
    wait = auth.retry_after(s, who)
    if wait:
        log.warning("login refused from %s: rate-limited for %ds", who, wait)
        resp = render_template("login.html", error=f"Too many failed attempts. Try again in {wait} seconds.")
        return resp, 429, {"Retry-After": str(wait)}
    if not auth.check_password(request.form.get("username", ""), request.form.get("password", "")):
        auth.note_failure(s, who)
        return render_template("login.html", error="Wrong user name or password."), 401
    auth.clear_failures(s, who)
    session.clear()                    # a fresh session (and CSRF token) after login
    session["user"] = auth.USER
    session.permanent = True
    log.info("admin logged in from %s", who)
    return redirect(url_for("ui.dashboard"))


@bp.post("/logout")
@page_auth
def logout():
    session.clear()
    log.info("admin logged out from %s", auth.client())
    return redirect(url_for("ui.login"))


def broken(message: str):
    return render_template("broken.html", message=message)


# ------------------------------------------------------------------ forms

@bp.post("/clouds/<name>/enable")
@page_auth
def enable(name: str):
    return _write(lambda: ops.set_enabled(store(), config(), name, True, actor="web page",
                                                comment=_comment()),
                  f"{name}: enabled")


@bp.post("/clouds/<name>/disable")
@page_auth
def disable(name: str):
    return _write(lambda: ops.set_enabled(store(), config(), name, False, actor="web page",
                                                comment=_comment()),
                  f"{name}: disabled (running workers stay)")


@bp.post("/clouds/<name>/max_workers")
@page_auth
def max_workers(name: str):
    value = request.form.get("max_workers", "")
    return _write(lambda: ops.set_max_workers(store(), config(), name, value, actor="web page",
                                                    comment=_comment()),
                  lambda c: f"{name}: max_workers set to {c['max_workers']}")


@bp.post("/workers/<worker_id>/drain")
@page_auth
def drain(worker_id: str):
    cloud = request.form.get("cloud", "")
    return _write(lambda: ops.kill_workers(store(), config(), cloud, worker_id, False, False, actor="web page",
                                                   comment=_comment()),
                  f"{worker_id}: drain and removal requested")


def _comment() -> str | None:
    """The operator's optional reason (the page's "Why" box), recorded in the event."""
    return request.form.get("comment")


@bp.post("/config/reload")
@page_auth
def reload_config():
    """The page's "Reload configuration": as cloud_admin --reload, with a shorter wait (a
    request thread is held meanwhile); an invalid file is refused before anything is asked."""
    try:
        actor = ops.by("web page", ops.parse_comment(_comment()))
        _, result = reload.ask(store(), actor=actor, timeout=WEB_RELOAD_WAIT,
                               path=_config_path())
    except ConfigError as err:
        return _done(f"configuration error: {err}", 400)
    except ops.OpError as err:
        return _done(str(err), 400)
    if result is None:
        return _done("reload asked; the scheduler has not answered yet: it applies at its next cycle", 202)
    log.info("web page: %s", reload.answer_line(result))
    return _done(reload.answer_line(result), 200 if result["ok"] else 400)


def _config_path():
    from flask import current_app
    return current_app.config.get("CONFIG_PATH")


def _write(action, message):
    try:
        result = action()
    except ops.OpError as err:
        return _done(str(err), err.status)
    text = message(result) if callable(message) else message
    log.info("web page: %s", text)
    return _done(text)
