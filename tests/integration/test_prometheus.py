"""docs/prometheus/alerts.yml with Debian's Prometheus: `promtool check rules` and
`promtool test rules` (tests/prometheus/alerts_test.yml: series that fire and do not fire
each alert), and a real `prometheus` scraping a running appliance over HTTPS, with the
admin's credentials, and evaluating the rules on what it scraped.

Prometheus comes from Debian trixie's `prometheus` package, in a small image built here
(FROM debian:trixie-slim, as the appliance), once: its tag is the Dockerfile's hash."""
from __future__ import annotations

import hashlib
import json
import subprocess
import time
import urllib.parse
import urllib.request
import uuid

import docker
import pytest

from . import ops_support
from .conftest import PREFIX, REPO

pytestmark = pytest.mark.timeout(300)

DOCKERFILE = """FROM debian:trixie-slim
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \\
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
"""
PROM_IMAGE = "appliance-prometheus-test:" + hashlib.sha256(DOCKERFILE.encode()).hexdigest()[:16]
RULES = REPO / "docs" / "prometheus" / "alerts.yml"
ALERTS = ["ApplianceMetricsDown", "ApplianceSchedulerHeartbeatStale", "ApplianceSchedulerNotRunning",
          "ApplianceCloudBreakerOpen", "ApplianceCloudBackingOff", "ApplianceJobsUnschedulable",
          "ApplianceWorkersFailingToBoot", "ApplianceBudgetReached"]
# the local cloud's one worker size has 1 cpu: a job asking for 8 is unschedulable at once
CONFIG = """
scheduler: {interval: 1}
clouds:
  - {name: local, type: local, max_workers: 1, worker: {cpus: 1, memory: 512}}
"""
BIG_JOB = ("executable = /bin/sleep\narguments = 60\nrequest_cpus = 8\nrequest_memory = 128\n"
           "request_disk = 10MB\nqueue 1")


@pytest.fixture(scope="session")
def prom_image(client) -> str:
    try:
        client.images.get(PROM_IMAGE)
    except docker.errors.ImageNotFound:
        subprocess.run(["docker", "build", "-q", "-t", PROM_IMAGE, "-"], input=DOCKERFILE.encode(),
                       check=True, stdout=subprocess.DEVNULL)
    return PROM_IMAGE


def promtool(prom_image: str, *args: str, mounts: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """promtool in the image, with the repository mounted read-only at /repo (its working
    directory), and mounts {host path: container path} read-only too."""
    volumes = [a for src, dst in {str(REPO): "/repo", **(mounts or {})}.items() for a in ("-v", f"{src}:{dst}:ro")]
    return subprocess.run(["docker", "run", "--rm", "--name", f"{PREFIX}-promtool-{uuid.uuid4().hex[:8]}",
                           *volumes, "-w", "/repo", "--entrypoint", "promtool", prom_image, *args],
                          capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules(prom_image):
    r = promtool(prom_image, "check", "rules", "docs/prometheus/alerts.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in r.stdout, r.stdout


def test_promtool_parses_every_query_of_the_grafana_dashboard(prom_image, tmp_path):
    """Each panel's PromQL (Grafana's variables given values) as a recording rule: promtool
    parses them all (tests/unit/test_observability.py checks the metric names)."""
    dash = json.loads((REPO / "docs" / "grafana" / "appliance.json").read_text())
    exprs = [t["expr"].replace("$__rate_interval", "5m").replace("$instance", ".*")
             for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 10
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)]}]}))
    rules.chmod(0o644)
    r = promtool(prom_image, "check", "rules", "/tmp/dashboard-rules.yml", mounts={str(rules): "/tmp/dashboard-rules.yml"})
    assert r.returncode == 0 and f"SUCCESS: {len(exprs)} rules found" in r.stdout, r.stdout + r.stderr


def test_promtool_unit_tests_fire_and_spare_each_alert(prom_image):
    tests = REPO / "tests" / "prometheus" / "alerts_test.yml"
    text = tests.read_text()
    for alert in ALERTS:        # each alert is tested, with an alert expected and with none
        assert f"alertname: {alert}\n        exp_alerts: []" in text, alert
        assert f"alertname: {alert}\n        exp_alerts:\n          - exp_labels" in text, alert
    r = promtool(prom_image, "test", "rules", "tests/prometheus/alerts_test.yml")
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_prometheus_scrapes_the_appliance_and_evaluates_the_alerts(client, image, prom_image, tmp_path):
    app = ops_support.start(client, image, tmp_path, "prom", config=CONFIG)
    prom = None
    try:
        app.submit(BIG_JOB)
        config = tmp_path / "prometheus.yml"
        config.write_text(json.dumps({      # JSON is YAML
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": ["/etc/prometheus-test/alerts.yml"],
            "scrape_configs": [{
                "job_name": "appliance", "scheme": "https",
                "basic_auth": {"username": "admin", "password": app.password},
                "tls_config": {"insecure_skip_verify": True},
                "static_configs": [{"targets": [f"{app.ip}:8080"]}]}]}))
        config.chmod(0o644)
        prom = client.containers.run(
            prom_image, name=f"{PREFIX}-prometheus-{uuid.uuid4().hex[:8]}", detach=True,
            entrypoint=["prometheus", "--config.file=/etc/prometheus-test/prometheus.yml",
                        "--storage.tsdb.path=/tmp/tsdb", "--web.listen-address=:9090"],
            volumes={str(config): {"bind": "/etc/prometheus-test/prometheus.yml", "mode": "ro"},
                     str(RULES): {"bind": "/etc/prometheus-test/alerts.yml", "mode": "ro"}})
        prom.reload()
        prom_ip = next(iter(prom.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
        api = f"http://{prom_ip}:9090/api/v1"
        target = f"{app.ip}:8080"

        def query(expr: str) -> list[dict]:
            return get(f"{api}/query?" + urllib.parse.urlencode({"query": expr}))

        # the scrape works (HTTPS, the admin's credentials) and reads the appliance's real state
        wait(lambda: [s["value"][1] for s in query('up{job="appliance"}')] == ["1"], "the scrape to be up", prom)
        wait(lambda: [s["value"][1] for s in query('appliance_idle_jobs{status="unschedulable"}')] == ["1"],
             "the unschedulable job in Prometheus", prom)
        (series,) = query("appliance_scheduler_up")
        assert series["metric"]["instance"] == target and series["value"][1] == "1"

        def rules() -> dict[str, dict]:
            (group,) = get(f"{api}/rules?type=alert")["groups"]
            assert group["name"] == "appliance"
            return {r["name"]: r for r in group["rules"]}

        # every rule evaluates on what was scraped, without error; the unschedulable job makes its
        # alert pending (its for: is 15 minutes), and nothing else is wrong with this appliance
        wait(lambda: rules()["ApplianceJobsUnschedulable"]["state"] == "pending", "the alert to be pending", prom)
        got = rules()
        assert sorted(got) == sorted(ALERTS)
        for name, r in got.items():
            assert r["health"] == "ok" and not r.get("lastError"), (name, r)
            assert r["state"] == ("pending" if name == "ApplianceJobsUnschedulable" else "inactive"), (name, r)
        (alert,) = got["ApplianceJobsUnschedulable"]["alerts"]
        assert alert["labels"] == {"alertname": "ApplianceJobsUnschedulable", "instance": target,
                                   "job": "appliance", "severity": "warning", "status": "unschedulable"}
        assert alert["annotations"]["summary"] == "1 idle job(s) no enabled cloud can run"
        assert f"on {target}" in alert["annotations"]["description"]
    finally:
        if prom is not None:
            prom.remove(force=True, v=True)
        ops_support.stop(app)


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"] if "result" in body["data"] else body["data"]


def wait(predicate, what: str, prom, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, ValueError, KeyError) as e:     # Prometheus still starting, or no data yet
            last = e
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what} ({last!r}):\n{prom.logs().decode()[-3000:]}")
