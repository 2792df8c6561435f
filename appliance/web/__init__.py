"""The admin web app (Flask, served by gunicorn on 8080).

    /            the dashboard (login required)       ui.py
    /api/...     the JSON API (same credentials)      api.py
    /metrics     Prometheus text (same credentials)   metrics.py
    /healthz     open: 200 {"status": "ok", ...}, or 503 {"status": "error", "error": ...}
                 while the configuration is invalid or the page's TLS/bind set-up failed
                 (Docker's HEALTHCHECK asks it)

gunicorn serves all of it over HTTPS only (gunicorn_conf.py; the certificate is set
up by appliance.bootstrap), so the session cookie is always `Secure`.

The page, the API and the metrics read and write through appliance.ops, the
same functions cloud_status and cloud_admin use.
"""
from __future__ import annotations

import logging
import os
from datetime import timedelta

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

from .. import ops
from ..bootstrap import WEB_RUN
from ..config import Config, ConfigError
from ..reload import active_config
from ..store import Store
from . import auth

log = logging.getLogger("appliance.web")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

_checked: set[str | None] = set()     # store files this process has read whole once (quick_check)


def store() -> Store:
    """This request's store connection, closed when the request ends. One per request, not
    one per thread: gunicorn starts its threads lazily, and connections kept per thread
    made the web workers' descriptors creep up for minutes (the soak saw it). Only the
    process's first open reads every page; later opens cost well under a millisecond."""
    if "store" not in g:
        path = _db_path()
        g.store = Store(path, check_pages=path not in _checked)
        _checked.add(path)
    return g.store


def _close_store(_exc: BaseException | None = None) -> None:
    s = g.pop("store", None)
    if s is not None:
        s.close()


def _db_path() -> str | None:
    from flask import current_app
    return current_app.config.get("DB_PATH")


def config() -> Config:
    """The configuration the scheduler runs (recorded by it; the file's until it has), loaded
    once per request; a bad file raises ConfigError."""
    if "cfg" not in g:
        from flask import current_app
        # with the sizes the scheduler read from the clouds for shapes that left theirs out
        g.cfg = active_config(store(), current_app.config.get("CONFIG_PATH")).with_shape_sizes(
            store().get("shape_sizes", {})[0])
    return g.cfg


def config_problem() -> str | None:
    """Why the configuration is invalid, or None: the scheduler's verdict (the store's
    config_error, written while it waits for a valid file), else this app's own reading of
    the active configuration (the file's, before the scheduler recorded one). A file edited
    into an invalid one later is not a problem until it is reloaded: the reload refuses it."""
    recorded, _ = store().get("config_error")
    if recorded:
        return str(recorded)
    try:
        config()
    except ConfigError as err:
        return str(err)
    return None


def web_problems() -> list[str]:
    """What bootstrap could not set up as asked for the page (TLS pair, bind address); it then
    serves the self-signed pair or 127.0.0.1 only, and says why in this file."""
    from flask import current_app
    try:
        with open(os.path.join(current_app.config["WEB_RUN"], "problems"), encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except OSError:
        return []


def create_app(db_path: str | None = None, config_path: str | None = None, state_dir: str | None = None,
               admin_password: str | None = None, web_run: str | None = None) -> Flask:
    app = Flask(__name__)
    state = state_dir or os.environ.get("APPLIANCE_STATE_DIR", "/var/lib/appliance")
    db_path = db_path or os.environ.get("APPLIANCE_DB")
    app.config.update(
        DB_PATH=db_path, CONFIG_PATH=config_path, STATE_DIR=state, ADMIN_PASSWORD=admin_password,
        WEB_RUN=web_run or WEB_RUN,
        SECRET_KEY=auth.session_key(os.path.dirname(db_path) if db_path else os.path.join(state, "state")),
        SESSION_COOKIE_NAME="appliance_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        # the page is served over HTTPS only (gunicorn_conf.py): the cookie never travels in clear
        SESSION_COOKIE_SECURE=True,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
        MAX_CONTENT_LENGTH=64 * 1024,
        JSON_SORT_KEYS=True,
    )
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from . import api, metrics, ui
    app.register_blueprint(ui.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(metrics.bp)

    @app.get("/healthz")
    def healthz():
        sched = ops.scheduler_status(store())
        cfg_error, web = config_problem(), web_problems()
        if cfg_error or web:
            error = "; ".join(([f"configuration error: {cfg_error}"] if cfg_error else []) + web)
            return jsonify({"status": "error", "error": error, "config_error": cfg_error, "web_problems": web,
                            "scheduler": sched}), 503
        return jsonify({"status": "ok", "scheduler": sched})

    app.teardown_appcontext(_close_store)

    @app.after_request
    def headers(resp):
        h = resp.headers
        h.setdefault("Content-Security-Policy", CSP)
        h["X-Frame-Options"] = "DENY"
        h["X-Content-Type-Options"] = "nosniff"
        h["Referrer-Policy"] = "no-referrer"
        h["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
        if request.path != "/healthz" and not request.path.startswith("/static/"):
            h["Cache-Control"] = "no-store"
        return resp

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        if _wants_json():
            return jsonify({"error": err.description or err.name}), err.code
        return err

    @app.errorhandler(ConfigError)
    def config_error(err: ConfigError):
        msg = f"the configuration is invalid: {err}"
        if _wants_json():
            return jsonify({"error": msg, "config_error": str(err)}), 503
        return ui.broken(msg), 503

    @app.errorhandler(Exception)
    def crash(err: Exception):
        log.exception("%s %s failed: %s", request.method, request.path, type(err).__name__)
        if _wants_json():
            return jsonify({"error": "internal error; see the appliance log"}), 500
        return "internal error; see the appliance log", 500

    return app


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.path == "/metrics" or request.headers.get(
        "X-Requested-With") == "fetch"
