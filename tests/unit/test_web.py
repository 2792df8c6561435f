"""The web app with Flask's test client against a temporary store: auth, CSRF, rate limit, API, metrics."""
import base64
import re
import time

import pytest
from markupsafe import escape
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
    app = create_app(db_path=db, config_path=str(cfg), state_dir=str(tmp_path), admin_password=PASSWORD,
                     web_run=str(tmp_path / "run"))
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
    assert "; Secure" in cookie                 # served over HTTPS only: the cookie never travels in clear


def test_patch_validation(env):
    c, _ = env
    assert c.patch("/api/clouds/nope", json={"max_workers": 1}, headers=BASIC).status_code == 404
    for body in ({}, [], {"max_workers": "1"}, {"max_workers": -1}, {"x": 1}, {"enabled": 1}):
        assert c.patch("/api/clouds/local", json=body, headers=BASIC).status_code == 400, body
    r = c.patch("/api/clouds/local", json={"max_workers": 7}, headers=BASIC)
    assert r.status_code == 200 and r.json["data"]["max_workers"] == 7
    assert c.get("/api/events?since=x", headers=BASIC).status_code == 400


def test_web_actions_record_an_optional_comment(env):
    c, store = env
    token = login(c)
    csrf = {"X-CSRF-Token": token}
    r = c.post("/clouds/local/disable", data={"csrf_token": token, "comment": "quota\nspent"},
               headers={"X-Requested-With": "fetch"})
    assert r.status_code == 200
    assert c.post("/api/clouds/local/enable", json={"comment": "quota raised"}, headers=csrf).status_code == 200
    assert c.post("/api/clouds/local/disable?comment=why%20not", headers=csrf).status_code == 200
    assert c.patch("/api/clouds/local", json={"max_workers": 3, "comment": "3 granted"}, headers=csrf).status_code == 200
    assert [e["reason"] for e in store.events()][-4:] == [
        'disabled by web page: "quota spent"', 'enabled by web API: "quota raised"', 'disabled by web API: "why not"',
        'max_workers set to 3 by web API: "3 granted"']
    for body in ({"comment": "only a comment"}, {"enabled": True, "comment": "x" * 201},
                 {"enabled": True, "comment": 5}, {"enabled": True, "comment": "bell\a"}):
        assert c.patch("/api/clouds/local", json=body, headers=csrf).status_code == 400, body
    assert store.events()[-1]["reason"] == 'max_workers set to 3 by web API: "3 granted"'


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
    assert samples[("appliance_worker_boot_failures_total", (("cloud", "local"),))] == 1
    assert samples[("appliance_worker_boot_failures_total", (("cloud", "burst"),))] == 0


def test_boot_failures_count_only_workers_that_never_joined(env):
    c, store = env
    for wid, path, reason in (
            ("local-1", (), "launch error: quota"),                                   # requested -> failed
            ("local-2", (State.BOOTING,), "did not join the pool within boot_timeout (600s)"),
            ("local-3", (State.BOOTING, State.IDLE), "vanished"),                     # it had joined
            ("local-4", (State.BOOTING,), "spot interruption: its spot instance i-4 is terminated"),
            ("local-5", (State.BOOTING,), "demand went away")):                       # cancelled, retired
        store.add_worker(wid, "local", "launch")
        for state in path:
            store.transition(wid, state, "step")
        store.transition(wid, State.RETIRED if wid == "local-5" else State.FAILED, reason)
    text = c.get("/metrics", headers=BASIC).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("appliance_worker_boot_failures_total", (("cloud", "local"),))] == 2
    assert samples[("appliance_worker_failures_total", (("cloud", "local"),))] == 4


def test_metrics_carry_the_heartbeats_time_for_a_staleness_alert(env):
    c, store = env
    store.put("heartbeat", {"time": 1_700_000_000.5, "interval": 1, "duration": 0.01})
    text = c.get("/metrics", headers=BASIC).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("appliance_scheduler_last_cycle_timestamp_seconds", ())] == 1_700_000_000.5
    assert samples[("appliance_scheduler_up", ())] == 0          # that old: not running
    store.put("heartbeat", None)
    assert "appliance_scheduler_last_cycle_timestamp_seconds" not in c.get("/metrics", headers=BASIC).text


def test_metrics_show_the_last_cycle_and_its_phases(env):
    c, store = env
    phases = {"observe_demand": 0.2, "observe_supply": 0.01, "decide": 0.005, "act": 0.0, "record": 0.02}
    store.put("heartbeat", {"time": time.time(), "interval": 1, "duration": 0.24, "phases": phases})
    text = c.get("/metrics", headers=BASIC).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("appliance_scheduler_last_cycle_seconds", ())] == 0.24
    assert {dict(k).get("phase"): v for (name, k), v in samples.items()
            if name == "appliance_scheduler_last_cycle_phase_seconds"} == phases


def test_no_password_in_pages(env):
    c, _ = env
    login(c)
    for path in ("/", "/parts", "/login", "/api/openapi.json"):
        assert PASSWORD not in c.get(path, headers=BASIC).text


# ------------------------------------------------------------------ a broken configuration is not healthy

BROKEN = "/etc/appliance/appliance.yaml: clouds[0].worker.cpus: expected a whole number >= 1, got 'two'"


def test_healthz_is_ok_with_a_valid_configuration(env):
    c, store = env
    store.put("config_error", None)          # what the scheduler writes once the file is valid
    r = c.get("/healthz")
    assert r.status_code == 200 and r.json["status"] == "ok" and r.json["scheduler"]["running"] is True


def test_healthz_is_503_while_the_scheduler_records_a_config_error(env):
    c, store = env
    store.put("config_error", BROKEN)
    r = c.get("/healthz")
    assert r.status_code == 503
    assert r.json["status"] == "error" and r.json["config_error"] == BROKEN
    assert r.json["error"] == f"configuration error: {BROKEN}"
    assert r.json["scheduler"]["config_error"] == BROKEN
    store.put("config_error", None)          # fixed: healthy again at once
    assert c.get("/healthz").status_code == 200


def test_healthz_is_503_when_the_file_is_broken_after_the_scheduler_started(env, tmp_path):
    c, _ = env
    (tmp_path / "appliance.yaml").write_text("clouds:\n  - {name: local, type: nope}\n")
    r = c.get("/healthz")
    assert r.status_code == 503 and "clouds[0].type: unknown cloud type 'nope'" in r.json["error"]


def test_healthz_is_503_when_the_page_could_not_be_set_up_as_asked(env, tmp_path):
    c, _ = env
    (tmp_path / "run").mkdir()
    problem = "the TLS key /etc/appliance/tls/tls.key not found; serving the self-signed certificate instead"
    (tmp_path / "run" / "problems").write_text(problem + "\n")
    r = c.get("/healthz")
    assert r.status_code == 503 and r.json["web_problems"] == [problem] and r.json["config_error"] is None
    login(c)
    assert "Web page set-up: " + problem in c.get("/").text


def test_the_dashboard_shows_the_recorded_config_error_prominently(env, tmp_path):
    c, store = env
    (tmp_path / "appliance.yaml").write_text("clouds:\n  - {name: local, type: local, worker: {cpus: two}}\n")
    store.put("config_error", BROKEN)
    login(c)
    for path in ("/", "/parts"):
        page = c.get(path).text
        assert 'id="config-error"' in page and "Configuration error" in page
        assert str(escape(BROKEN)) in page
        assert "no clouds configured" not in page and "appliance.yaml is invalid" in page
        assert "config error" in page                 # the scheduler pill in the top bar


def test_the_dashboard_shows_the_error_while_the_file_is_already_fixed(env):
    """The scheduler reads the file again every few seconds: until then its message stays up."""
    c, store = env
    store.put("config_error", BROKEN)
    login(c)
    page = c.get("/").text
    assert 'id="config-error"' in page and 'data-cloud="local"' in page


def test_the_api_clouds_listing_carries_the_config_error(env, tmp_path):
    c, store = env
    r = c.get("/api/clouds", headers=BASIC)
    assert r.status_code == 200 and r.json["config_error"] is None and len(r.json["data"]) == 2
    store.put("config_error", BROKEN)
    r = c.get("/api/clouds", headers=BASIC)
    assert r.status_code == 200 and r.json["config_error"] == BROKEN
    # the file itself is invalid: 503, with the error under the same key, never an empty list
    (tmp_path / "appliance.yaml").write_text("clouds: 7\n")
    for path in ("/api/clouds", "/api/clouds/local", "/metrics"):
        r = c.get(path, headers=BASIC)
        assert r.status_code == 503 and "data" not in r.json, path
        assert r.json["config_error"].endswith("clouds: expected a list of clouds, got 7"), r.json
        assert r.json["error"].startswith("the configuration is invalid: ")


def test_the_openapi_description_has_the_config_error_field(env):
    c, _ = env
    spec = c.get("/api/openapi.json").json
    ok = spec["paths"]["/api/clouds"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["properties"]["config_error"] == {"type": "string", "nullable": True}
    assert "config_error" in ok["required"]
    assert spec["components"]["schemas"]["Error"]["required"] == ["error"]


def test_the_page_shows_the_cost_and_a_shape_backing_off(env, tmp_path):
    from appliance.model import ShapeHealth
    c, store = env
    (tmp_path / "appliance.yaml").write_text(
        "budget: {max_per_hour: 2}\nclouds:\n  - name: aws\n    type: docker\n    shapes:\n"
        "      - {name: small, cpus: 1, price: 0.5}\n      - {name: big, cpus: 4, price: 1.5}\n")
    store.add_worker("aws-aaaaaa", "aws", "launch", now=time.time() - 3600, shape="small")
    store.save_shape_health({("aws", "big"): ShapeHealth("aws", "big", time.time() + 30, 1,
                                                         "capacity: InsufficientInstanceCapacity", time.time())})
    login(c)
    page = c.get("/").text
    assert re.search(r'data-spend title="max_per_hour 2.0 "><span class="num">0.50</span>', page), page
    assert re.search(r'<span class="num">0.50</span><span class="lbl">last 24 h</span>', page)
    assert re.search(r'title="capacity: InsufficientInstanceCapacity" data-shape-backoff>big (29|30)s</span>', page)
    metrics = {f.name: f for f in text_string_to_metric_families(c.get("/metrics", headers=BASIC).text)}
    assert [(s.labels, s.value) for s in metrics["appliance_cost_per_hour"].samples] == [
        ({"cloud": "aws", "shape": "big"}, 0.0), ({"cloud": "aws", "shape": "small"}, 0.5)]


def _worker(store, wid, cloud, *states):
    store.add_worker(wid, cloud, "launch")
    for state in states:
        store.transition(wid, state, state.value)


def test_the_page_shows_the_running_jobs_by_worker_and_by_cloud(env):
    c, store = env
    _worker(store, "local-aaaaaa", "local", State.BOOTING, State.IDLE, State.BUSY)
    _worker(store, "local-bbbbbb", "local", State.BOOTING, State.IDLE, State.BUSY, State.DRAINING)
    _worker(store, "burst-cccccc", "burst", State.BOOTING, State.IDLE, State.BUSY)
    _worker(store, "local-dddddd", "local", State.BOOTING, State.IDLE)
    _worker(store, "local-eeeeee", "local", State.BOOTING, State.IDLE, State.BUSY, State.DRAINING, State.RETIRED)
    # what the scheduler recorded from the collector; a worker ended since is not counted
    store.put("running", {"local-aaaaaa": 2, "local-bbbbbb": 1, "burst-cccccc": 3, "local-eeeeee": 4})
    login(c)
    for path in ("/", "/parts"):
        page = c.get(path).text
        assert re.search(r'data-running-jobs><span class="num">6</span><span class="lbl">running jobs</span>', page)
        assert "0 idle jobs · 6 running" in page
        jobs = dict(re.findall(r'<tr data-worker="([^"]+)">.*?<td class="n" data-jobs>([^<]*)</td>', page, re.S))
        assert jobs == {"local-aaaaaa": "2", "local-bbbbbb": "1", "burst-cccccc": "3", "local-dddddd": "·"}
        by_cloud = re.findall(r'<tr data-running-cloud="([^"]+)"><td>[^<]+</td><td class="n">(\d+)</td>'
                              r'<td class="n">(\d+)</td></tr>', page)
        assert by_cloud == [("burst", "1", "3"), ("local", "2", "3")]


def test_the_page_with_nothing_running_says_so_in_its_counts_only(env):
    c, store = env
    _worker(store, "local-dddddd", "local", State.BOOTING, State.IDLE)
    login(c)
    page = c.get("/").text
    assert re.search(r'data-running-jobs><span class="num">0</span>', page)
    assert "0 idle jobs · 0 running" in page and "data-running-cloud" not in page
    assert re.search(r'<td class="n" data-jobs>·</td>', page)


def test_the_api_history_answers_the_series_and_names_a_bad_since(env):
    from appliance import history
    c, store = env
    now = time.time()
    old, new = history.bucket_of(now) - 120, history.bucket_of(now)
    store.record_history(old, {"idle_jobs": 5, "running_jobs": 0, "state:booting": 2, "cloud:local": 2})
    store.record_history(new, {"idle_jobs": 0, "running_jobs": 3, "state:busy": 2, "cloud:local": 2,
                               "cloud:burst": 0})
    r = c.get("/api/history", headers=BASIC)
    assert r.status_code == 200 and set(r.json) == {"scheduler", "data"}
    data = r.json["data"]
    assert data["times"] == [old, new] and data["bucket_seconds"] == 60 and data["coalesce"] == "max"
    assert (data["idle_jobs"], data["running_jobs"]) == ([5, 0], [0, 3])
    assert data["workers_by_state"] == {"booting": [2, None], "busy": [None, 2]}
    assert data["workers_by_cloud"] == {"burst": [None, 0], "local": [2, 2]}
    assert data["spend_per_hour"] is None
    # since: from the bucket holding that time on
    assert c.get(f"/api/history?since={int(now)}", headers=BASIC).json["data"]["times"] == [new]
    assert c.get(f"/api/history?since={old + 59}", headers=BASIC).json["data"]["times"] == [old, new]
    for bad in ("yesterday", "-5", "1.5", str(2 ** 63)):
        r = c.get(f"/api/history?since={bad}", headers=BASIC)
        assert r.status_code == 400 and r.json["error"].startswith("since must be a whole number"), bad
    assert c.get("/api/history").status_code == 401
    spec = c.get("/api/openapi.json").json
    assert "/api/history" in spec["paths"] and "spend_per_hour" in spec["components"]["schemas"]["History"]["properties"]


def test_the_page_draws_the_pool_over_time_as_plain_svg(env):
    from appliance import history
    c, store = env
    login(c)
    page = c.get("/").text
    assert 'data-part="history"' in page and "No samples yet" in page
    assert page.count("<svg") == 3 and "<polyline" not in page        # empty charts, no spend chart (no price)
    now = time.time()
    for minutes_ago, idle, busy in ((3, 4, 0), (2, 1, 3), (1, 0, 3)):
        store.record_history(history.bucket_of(now - 60 * minutes_ago),
                             {"idle_jobs": idle, "running_jobs": busy, "state:busy": busy, "state:booting": 0,
                              "cloud:local": busy, "cloud:burst": 0})
    parts = c.get("/parts", headers={"X-Requested-With": "fetch"}).text
    assert "No samples yet" not in parts
    chart = re.search(r'<figure class="chart" data-chart="jobs">.*?</figure>', parts, re.S).group(0)
    lines = re.findall(r'<polyline class="ln (c-[a-z-]+)" data-series="([a-z ]+)" points="([0-9., ]+)"', chart)
    assert {(cls, name) for cls, name, _ in lines} == {("c-idle-jobs", "idle jobs"), ("c-running-jobs", "running jobs")}
    assert all(len(points.split()) == 6 for _, _, points in lines)      # three one-minute steps, one run each
    # the legend: each line's peak over the chart
    assert re.search(r"idle jobs <span[^>]*>peak</span> <b>4</b>", chart), chart
    assert re.search(r"running jobs <span[^>]*>peak</span> <b>3</b>", chart), chart
    assert ' style="' not in parts and "<script" not in parts          # nothing the page's CSP forbids
