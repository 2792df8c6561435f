"""The admin web app (Flask, served by gunicorn on 8080).

    /            the dashboard (login required)       ui.py
    /api/...     the JSON API (same credentials)      api.py
    /metrics     Prometheus text (same credentials)   metrics.py
    /healthz     open: is the web app up, is the scheduler running

The page, the API and the metrics read and write through appliance.ops, the
same functions cloud_status and cloud_admin use.
"""
from __future__ import annotations

import logging
import os
import threading
from datetime import timedelta

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

from .. import ops
from ..config import Config, ConfigError, load
from ..store import Store
from . import auth

log = logging.getLogger("appliance.web")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

_local = threading.local()


def store() -> Store:
    """This thread's store connection (sqlite3 connections stay in their thread)."""
    path = _db_path()
    cached = getattr(_local, "stores", {})
    if path not in cached:
        cached[path] = Store(path)
        _local.stores = cached
    return cached[path]


def _db_path() -> str | None:
    from flask import current_app
    return current_app.config.get("DB_PATH")


def config() -> Config:
    """The configuration, loaded once per request; a bad file raises ConfigError."""
    if "cfg" not in g:
        from flask import current_app
        g.cfg = load(current_app.config.get("CONFIG_PATH"))
    return g.cfg


def create_app(db_path: str | None = None, config_path: str | None = None, state_dir: str | None = None,
               admin_password: str | None = None) -> Flask:
    app = Flask(__name__)
    state = state_dir or os.environ.get("APPLIANCE_STATE_DIR", "/var/lib/appliance")
    db_path = db_path or os.environ.get("APPLIANCE_DB")
    app.config.update(
        DB_PATH=db_path, CONFIG_PATH=config_path, STATE_DIR=state, ADMIN_PASSWORD=admin_password,
        SECRET_KEY=auth.session_key(os.path.dirname(db_path) if db_path else os.path.join(state, "state")),
        SESSION_COOKIE_NAME="appliance_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        # plain HTTP on 8080 by default; behind a TLS proxy set APPLIANCE_WEB_SECURE_COOKIE=1
        SESSION_COOKIE_SECURE=os.environ.get("APPLIANCE_WEB_SECURE_COOKIE") == "1",
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
        return jsonify({"status": "ok", "scheduler": ops.scheduler_status(store())})

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
            return jsonify({"error": msg}), 503
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
