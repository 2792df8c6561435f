"""The admin web app (Flask, served by gunicorn on 8080)."""
from __future__ import annotations

from flask import Flask, jsonify

from .. import ops
from ..store import Store


def create_app(db_path: str | None = None) -> Flask:
    app = Flask(__name__)
    app.config["DB_PATH"] = db_path

    @app.get("/healthz")
    def healthz():
        store = Store(app.config["DB_PATH"])
        try:
            sched = ops.scheduler_status(store)
        finally:
            store.close()
        return jsonify({"status": "ok", "scheduler": sched})

    return app
