"""bench/cost.py at a tiny size (it needs no Docker), and its lower bound checked by hand."""
from __future__ import annotations

import json

import pytest

from appliance.shapes import Shape
from appliance.simulate.workload import Job
from bench import cost


def test_the_bound_is_the_best_unit_prices_no_shape_undercuts():
    shapes = [Shape("cpu", 4, 8 * 1024, 1000, price=0.17), Shape("mem", 4, 32 * 1024, 1000, price=0.252)]
    # a 2 GB job and a 30 GB job for an hour share one "mem" worker: 0.252, and the bound is that
    # (memory alone at 0.252 / 32 per GiB-h)
    total, p, q = cost.unit_bound(shapes, [Job(0, 1, 2048, 0, 3600), Job(0, 1, 30 * 1024, 0, 3600)])
    assert (p, q) == (0.0, pytest.approx(0.252 / 32)) and total == pytest.approx(0.252)
    # a 4 cpu / 8 GB job and a 30 GB job: both shapes' constraints are tight at the best prices,
    # 4p + 8q = 0.17 and 4p + 32q = 0.252; the cheapest real pool (one of each) costs 0.422
    total, p, q = cost.unit_bound(shapes, [Job(0, 4, 8192, 0, 3600), Job(0, 1, 30 * 1024, 0, 3600)])
    assert q == pytest.approx(0.082 / 24) and p == pytest.approx((0.17 - 8 * 0.082 / 24) / 4)
    assert total == pytest.approx(5 * p + 38 * q) and total <= 0.422
    assert cost.one_shape(shapes, [Job(0, 4, 8192, 0, 60), Job(0, 1, 30 * 1024, 0, 60)]).name == "mem"


def test_a_tiny_run_writes_its_json(tmp_path):
    out = tmp_path / "cost.json"
    assert cost.main(["--jobs", "80", "--speed", "0", "--no-plots", "--seeds", "1", "--idle-timeouts", "60",
                      "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    run = data["runs"][0]
    assert run["shapes"]["completed"] == run["one"]["completed"] == 80
    assert run["shapes"]["cost"] < run["one"]["cost"]
    assert data["bound"]["cost"] <= data["ideal"] <= run["shapes"]["cost"]
    assert set(run["met"]) == set(cost.GOALS)
