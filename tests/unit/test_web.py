"""The web app with Flask's test client against a temporary store: auth, CSRF, rate limit, API, metrics."""
import base64
import re
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance.lifecycle import State
from appliance.store import Store
from appliance.web import create_app

PASSWORD = "unit-test-pw"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}


@pytest.fixture
def env(tmp_path):
    cfg = tmp_path / "appliance.yaml"
    cfg.write_text("clouds:\n  - {name: local, type: local, max_workers: 2}\n  - {name: burst, type: local, enabled: false}\n")
    db = str(tmp_path / "state" / "appliance.db")
    store = Store(db)
    store.put("heartbeat", {"time": time.time(), "interval": 2, "duration": 0.01})
    app = create_app(db_path=db, config_path=str(cfg), state_dir=str(tmp_path), admin_password=PASSWORD)
    return app.test_client(), store


def login(c):
    token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").text).group(1)
    r = c.post("/login", data={"username": "admin", "password": PASSWORD, "csrf_token": token})
    assert r.status_code == 302
    return re.search(r'name="csrf-token" content="([^"]+)"', c.get("/").text).group(1)


def test_api_needs_credentials(env):
    c, _ = env
    assert c.get("/api/clouds").status_code == 401
    assert c.get("/metrics").status_code == 401
    assert c.get("/api/clouds", headers={"Authorization": "Basic " + base64.b64encode(b"admin:x").decode()}).json == {
        "error": "wrong credentials"}
    r = c.get("/api/clouds", headers=BASIC)
    assert r.status_code == 200 and [x["name"] for x in r.json["data"]] == ["local", "burst"]
    assert c.get("/").status_code == 302


def test_rate_limit_after_five_failures(env):
    c, _ = env
    bad = {"Authorization": "Basic " + base64.b64encode(b"admin:nope").decode()}
    assert [c.get("/api/clouds", headers=bad).status_code for _ in range(5)] == [401] * 5
    r = c.get("/api/clouds", headers=BASIC)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").text).group(1)
    r = c.post("/login", data={"username": "admin", "password": PASSWORD, "csrf_token": token})
    assert r.status_code == 429 and "Too many failed attempts" in r.text


def test_forms_need_the_csrf_token(env):
    c, store = env
    token = login(c)
    assert c.post("/clouds/local/disable").status_code == 403
    assert c.post("/api/clouds/local/disable").status_code == 403
    r = c.post("/clouds/local/disable", data={"csrf_token": token}, headers={"X-Requested-With": "fetch"})
    assert r.json == {"message": "local: disabled (running workers stay)"}
    assert c.post("/api/clouds/local/enable", headers={"X-CSRF-Token": token}).json["data"]["enabled"] is True
    events = [e["reason"] for e in store.events()]
    assert events[-2:] == ["disabled by web page", "enabled by web API"]
    assert c.post("/logout", data={"csrf_token": token}).status_code == 302
    assert c.get("/parts").status_code == 302


def test_headers_and_cookie(env):
    c, _ = env
    r = c.get("/login")
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert r.headers["X-Frame-Options"] == "DENY" and r.headers["X-Content-Type-Options"] == "nosniff"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_patch_validation(env):
    c, _ = env
    assert c.patch("/api/clouds/nope", json={"max_workers": 1}, headers=BASIC).status_code == 404
    for body in ({}, [], {"max_workers": "1"}, {"max_workers": -1}, {"x": 1}, {"enabled": 1}):
        assert c.patch("/api/clouds/local", json=body, headers=BASIC).status_code == 400, body
    r = c.patch("/api/clouds/local", json={"max_workers": 7}, headers=BASIC)
    assert r.status_code == 200 and r.json["data"]["max_workers"] == 7
    assert c.get("/api/events?since=x", headers=BASIC).status_code == 400


def test_metrics_count_from_the_store(env):
    c, store = env
    store.add_worker("local-1", "local", "launch")
    store.transition("local-1", State.BOOTING, "launched")
    store.transition("local-1", State.FAILED, "boot timeout")
    store.observe_cycle(0.02)
    store.observe_cycle(0.3)
    text = c.get("/metrics", headers=BASIC).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("appliance_worker_launches_total", (("cloud", "local"),))] == 1
    assert samples[("appliance_worker_failures_total", (("cloud", "local"),))] == 1
    assert samples[("appliance_worker_retirements_total", (("cloud", "local"),))] == 0
    assert samples[("appliance_scheduler_cycle_seconds_count", ())] == 2
    assert samples[("appliance_scheduler_cycle_seconds_bucket", (("le", "0.025"),))] == 1
    assert samples[("appliance_cloud_enabled", (("cloud", "burst"),))] == 0


def test_no_password_in_pages(env):
    c, _ = env
    login(c)
    for path in ("/", "/parts", "/login", "/api/openapi.json"):
        assert PASSWORD not in c.get(path, headers=BASIC).text
