"""Demand by schedd on the page, in the API and in cloud_status -q (Flask's test client, a temporary store)."""
from __future__ import annotations

import json
import time

import pytest

from appliance import federation
from appliance.cli import cloud_status

from .test_web import BASIC, env, login  # noqa: F401  (env is a fixture)

GROUPS = [
    {"key": "g1", "count": 7, "cpus": 1, "memory": 128, "disk": 1024, "requirements": "true", "target_clouds": None,
     "clouds": ["local"], "status": "launching", "reason": "2 new worker(s)", "schedd": "lab", "owner": "alice@lab"},
    {"key": "g2", "count": 2, "cpus": 1, "memory": 128, "disk": 1024, "requirements": "true", "target_clouds": None,
     "clouds": [], "status": "sent away", "reason": "offered to b by flocking: no worker is launched here for it",
     "schedd": "", "owner": ""},
]
SEEN = [{"name": "lab", "state": "flocking", "detail": "submit.lab: flocking here", "offered": 7, "idle_jobs": 7,
         "users": ["alice@lab"]}]


@pytest.fixture
def fed(tmp_path, monkeypatch):
    directory = tmp_path / "federation"
    directory.mkdir()
    (directory / "schedds.json").write_text(json.dumps({"allowed": {"lab": {"since": time.time(), "address": "cm:9618"}},
                                                        "revoked": {}}))
    monkeypatch.setattr(federation, "FED_DIR", str(directory))
    return directory


def test_the_page_shows_demand_by_schedd_and_the_remote_schedds(env, fed):  # noqa: F811
    c, store = env
    store.put("demand", GROUPS)
    store.put("schedds", SEEN)
    login(c)
    page = c.get("/").text
    assert "Schedd" in page and "alice@lab" in page and "sent away" in page
    assert "Remote schedds flocking here" in page and "submit.lab: flocking here" in page


def test_the_api_gives_groups_with_their_schedd_and_the_schedds(env, fed):  # noqa: F811
    c, store = env
    store.put("demand", GROUPS)
    store.put("schedds", SEEN)
    groups = c.get("/api/queue", headers=BASIC).json["data"]["groups"]
    assert [(g["schedd"], g["owner"]) for g in groups] == [("lab", "alice@lab"), ("", "")]
    (row,) = c.get("/api/schedds", headers=BASIC).json["data"]
    assert (row["name"], row["state"], row["offered"], row["address"]) == ("lab", "flocking", 7, "cm:9618")
    spec = c.get("/api/openapi.json").json
    assert "/api/schedds" in spec["paths"] and "sent away" in spec["components"]["schemas"]["JobGroup"][
        "properties"]["status"]["enum"]


def test_a_schedd_the_scheduler_has_not_seen_yet_is_unknown(env, fed):  # noqa: F811
    _, store = env
    (row,) = federation.schedds_status(store)
    assert row["state"] == "unknown" and row["detail"] == "the scheduler has not looked yet"


def test_cloud_status_q_shows_schedd_and_owner_columns_and_the_schedds():
    text = cloud_status._queue({"groups": GROUPS, "idle_jobs": 9, "unschedulable_jobs": 0, "schedds": SEEN})
    header = text.splitlines()[2].split()
    assert header[:3] == ["SCHEDD", "OWNER", "JOBS"]
    assert "lab     alice@lab" in text and "local   -" in text
    assert "remote schedds allowed to flock here" in text and "flocking" in text


def test_cloud_status_q_without_remote_demand_keeps_its_columns():
    local = [dict(GROUPS[1], status="waiting")]
    text = cloud_status._queue({"groups": local, "idle_jobs": 2, "unschedulable_jobs": 0, "schedds": []})
    assert text.splitlines()[2].split()[0] == "JOBS" and "remote schedds" not in text
