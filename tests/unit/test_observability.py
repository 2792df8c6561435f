"""docs/grafana/appliance.json and docs/prometheus/alerts.yml name only metrics the appliance
exports, and are what Grafana and Prometheus expect. (promtool checks the rules themselves:
tests/integration/test_prometheus.py.)"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from appliance.config import loads
from appliance.store import Store
from appliance.web.metrics import render

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "docs" / "grafana" / "appliance.json"
ALERTS = REPO / "docs" / "prometheus" / "alerts.yml"

# words of PromQL that are not metric names
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
            "group_right", "inf", "nan", "atan2", "start", "end"}
# a priced, budgeted configuration, so that every family has samples (costs, budgets)
CONFIG = """
budget: {max_per_hour: 5}
clouds:
  - name: aws
    type: docker
    budget: {max_per_day: 50}
    shapes:
      - {name: small, cpus: 1, price: 0.5}
  - {name: local, type: local}
"""


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions
    (followed by '('), keywords, label names (in {...}, by/without/on/ignoring lists), strings,
    durations or Grafana's $variables."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)          # strings
    e = re.sub(r"\{[^}]*\}", "", e)                                           # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                                          # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", "", e)                                        # $__rate_interval, $instance
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?!\w)", e):
        word = m.group(1)
        if word.lower() in KEYWORDS or re.match(r"\s*\(", e[m.end():]):
            continue
        names.add(word)
    return names


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> set[str]:
    """Every sample name /metrics serves, from a store with something in each family."""
    tmp = tmp_path_factory.mktemp("metrics")
    store = Store(str(tmp / "state.db"))
    store.put("heartbeat", {"time": time.time(), "interval": 1, "duration": 0.2,
                            "phases": {"observe_demand": 0.1, "decide": 0.1}})
    store.observe_cycle(0.2)
    store.add_worker("aws-aaaaaa", "aws", "launch", shape="small")
    families = list(text_string_to_metric_families(render(store, loads(CONFIG)).decode()))
    assert all(f.samples for f in families), [f.name for f in families if not f.samples]
    names = {s.name for f in families for s in f.samples}
    assert len(names) > 20 and "appliance_worker_launches_total" in names    # not vacuous
    return names


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs


def alert_rules() -> list[dict]:
    (group,) = yaml.safe_load(ALERTS.read_text())["groups"]
    return group["rules"]


def test_the_name_parser_finds_metrics_and_only_metrics():
    assert metric_names('sum by (cloud) (increase(appliance_worker_launches_total{instance=~"$instance"}'
                        '[$__rate_interval]))') == {"appliance_worker_launches_total"}
    assert metric_names('histogram_quantile(0.95, sum by (le) (rate(x_bucket[5m]))) > bool on(job) y '
                        'unless max_over_time(z{a="b c"}[1h] offset 5m)') == {"x_bucket", "y", "z"}
    assert metric_names("time() - appliance_scheduler_last_cycle_timestamp_seconds > 120") == {
        "appliance_scheduler_last_cycle_timestamp_seconds"}
    assert metric_names("label_values(appliance_scheduler_up, instance)") == {"appliance_scheduler_up", "instance"}


def test_the_dashboard_is_a_grafana_dashboard_on_a_prometheus_input():
    dash = json.loads(DASHBOARD.read_text())
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 30
    assert dash["title"] and dash["uid"]
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    assert dash["__inputs"][0]["pluginId"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    graphs = [p for p in dash["panels"] if p["type"] != "row"]
    assert len(graphs) >= 10
    for p in graphs:
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["targets"] and all(t["expr"].strip() and t["refId"] for t in p["targets"]), p["title"]
        assert set(p["gridPos"]) == {"x", "y", "w", "h"} and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24


def test_the_dashboard_reads_only_exported_metrics_and_covers_the_pool(exported):
    used = set()
    for expr in dashboard_exprs():
        names = metric_names(expr)
        names.discard("instance")                    # label_values(metric, LABEL)
        assert names, expr                           # every query reads some metric
        assert names <= exported, (expr, names - exported)
        used |= names
    for needed in ("appliance_idle_jobs", "appliance_workers", "appliance_scheduler_cycle_seconds_bucket",
                   "appliance_scheduler_last_cycle_phase_seconds", "appliance_worker_launches_total",
                   "appliance_worker_failures_total", "appliance_cost_per_hour", "appliance_spend_total",
                   "appliance_cloud_breaker_open", "appliance_cloud_backoff"):
        assert needed in used, needed


def test_the_alerts_read_only_exported_metrics_and_say_what_to_do(exported):
    rules = alert_rules()
    assert len(rules) >= 7
    anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", (REPO / "docs" / "operations.md").read_text(), re.M)}
    anchors |= set(re.findall(r'<a id="([^"]+)"', (REPO / "docs" / "operations.md").read_text()))
    for r in rules:
        names = metric_names(r["expr"])
        assert names and names <= exported | {"up"}, (r["alert"], names - exported)
        assert re.fullmatch(r"\d+[smh]", r["for"]), r["alert"]
        assert r["labels"]["severity"] in ("critical", "warning"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        link = re.search(r"docs/operations\.md#([\w-]+)", r["annotations"]["description"])
        assert link and link.group(1) in anchors, (r["alert"], link and link.group(1))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")
