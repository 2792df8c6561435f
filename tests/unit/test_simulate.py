"""The simulator (appliance/simulate): the real decide() on simulated clouds and a simulated HTCondor.

No Docker, no HTCondor daemons; each run takes milliseconds.
"""
from __future__ import annotations

import json
from dataclasses import replace

import classad
import pytest

from appliance.config import loads
from appliance.simulate import cli
from appliance.simulate.clouds import OptionError, SimOptions, build_options
from appliance.simulate.engine import Simulation, simulate
from appliance.simulate.workload import Job, WorkloadError, jobs_from_history, parse_csv, parse_json, to_csv

ONE_SHAPE = """
scheduler: {idle_timeout: 60, interval: 1}
clouds:
  - name: dock
    type: docker
    max_workers: 10
    shapes:
      - {name: four, cpus: 4, memory: 8192, price: 0.2}
"""

TWO_CLOUDS = """
scheduler: {idle_timeout: 60}
clouds:
  - name: cheap
    type: docker
    max_workers: 10
    shapes:
      - {name: small, cpus: 1, memory: 2048, price: 0.05}
  - name: dear
    type: docker
    priority: 10
    max_workers: 10
    shapes:
      - {name: big, cpus: 4, memory: 8192, price: 0.4}
"""

TWO_SHAPES = """
scheduler: {idle_timeout: 60}
clouds:
  - name: dock
    type: docker
    max_workers: 10
    shapes:
      - {name: small, cpus: 1, memory: 2048, price: 0.05}
      - {name: big, cpus: 4, memory: 8192, price: 0.4}
"""


def jobs(n, cpus=1, memory=1024, duration=600.0, at=0.0, every=0.0):
    return [Job(at + i * every, cpus, memory, 0, duration) for i in range(n)]


def run(config, workload, seed=0, **options):
    cfg = loads(config)
    boot = options.pop("boot", ["10"])
    opts = build_options(cfg, seed, boot=boot, **options)
    return simulate(cfg, workload, opts)


# ------------------------------------------------------------------ by hand

def test_four_one_cpu_jobs_fill_one_four_cpu_worker_and_cost_its_price_times_its_life():
    r = run(ONE_SHAPE, jobs(4))
    # t=0 submit, the first cycle launches one worker; it joins at 10 s and takes all 4 jobs;
    # they end at 610 s; the worker is idle from the cycle at 610, drained at 670 (idle_timeout
    # 60), exits 2 s later (drain_exit): billed 672 s at 0.2 per hour
    assert r.workers == 1 and r.peak_workers == 1
    assert r.completed == 4 and r.requeued == 0
    assert r.makespan == pytest.approx(610.0)
    assert r.end == pytest.approx(672.0)
    assert r.cost == pytest.approx(0.2 * 672 / 3600)
    assert r.worker_hours == pytest.approx(672 / 3600)
    assert r.idle_fraction == pytest.approx(72 / 672)
    assert r.cpu_utilisation == pytest.approx(4 * 600 / (4 * 672))
    assert r.wait_mean == pytest.approx(10.0)
    assert r.by_shape == {"dock/four": {"price": 0.2, "workers": 1, "hours": round(672 / 3600, 3),
                                        "cost": round(0.2 * 672 / 3600, 4)}}


def test_five_jobs_need_a_second_worker_and_the_spend_curve_ends_at_the_cost():
    r = run(ONE_SHAPE, jobs(5))
    assert r.workers == 2 and r.completed == 5
    assert r.samples[-1].spend == pytest.approx(r.cost)
    assert max(s.running for s in r.samples) == 5
    assert r.samples[0].idle == 5


def test_a_job_no_shape_can_hold_never_runs_and_says_why():
    r = run(ONE_SHAPE, jobs(2) + [Job(0, 8, 1024, 0, 60)])
    assert r.completed == 2
    assert list(r.never_ran) == ["8cpu-1024MB-0KiB"]
    assert "unschedulable" in r.never_ran["8cpu-1024MB-0KiB"]


def test_jobs_wait_at_max_workers_and_run_when_room_frees():
    config = ONE_SHAPE.replace("max_workers: 10", "max_workers: 1")
    r = run(config, jobs(8))
    assert r.workers == 1 and r.completed == 8
    assert r.makespan == pytest.approx(10 + 600 + 600)


# ------------------------------------------------------------------ determinism

def test_the_same_seed_gives_the_same_run_and_another_seed_another():
    work = jobs(40, every=7.0) + jobs(20, cpus=4, memory=8000, duration=900, at=100, every=11.0)
    a = run(TWO_SHAPES, work, seed=7, boot=["60-120"], interruptions=["dock=0.5"])
    b = run(TWO_SHAPES, work, seed=7, boot=["60-120"], interruptions=["dock=0.5"])
    c = run(TWO_SHAPES, work, seed=8, boot=["60-120"], interruptions=["dock=0.5"])
    assert a.as_dict() == b.as_dict()
    assert a.samples == b.samples
    assert a.as_dict() != c.as_dict()


def test_skipping_quiet_cycles_changes_nothing():
    """The simulator jumps over cycles in which nothing changed and no timer expired;
    cycling on every tick of the daemon's grid instead gives the very same transitions."""
    work = jobs(30, every=3.0) + jobs(10, cpus=4, memory=8000, duration=900, at=50, every=20.0) + jobs(
        20, at=1500, every=1.0)
    cfg = loads(TWO_SHAPES)
    opts = build_options(cfg, 3, boot=["30-90"], interruptions=["dock=1"], capacity_errors=["dock/big=0.3"])
    fast, slow = Simulation(cfg, work, opts), Simulation(cfg, work, replace(opts, every_tick=True))
    fast.trace, slow.trace = [], []
    a, b = fast.run(), slow.run()
    assert fast.trace == slow.trace
    assert a.cost == pytest.approx(b.cost) and a.makespan == b.makespan
    assert a.cycles < b.cycles / 3


# ------------------------------------------------------------------ failures

def test_spot_interruptions_requeue_jobs_that_run_again_and_complete_once():
    cfg = loads(ONE_SHAPE)
    sim = Simulation(cfg, jobs(8, duration=3600), build_options(cfg, 1, boot=["10"], interruptions=["dock=2"]))
    sim.trace = []
    r = sim.run()
    assert r.interruptions > 0 and r.requeued > 0
    assert r.completed == 8
    assert r.workers > 2          # replacements were launched
    failed = [t for t in sim.trace if t[3] == "failed"]
    assert failed and all("Server.SpotInstanceTermination" in t[4] for t in failed)


def test_a_worker_interrupted_while_booting_never_joins_and_the_cloud_backs_off():
    cfg = loads(ONE_SHAPE)
    opts = replace(build_options(cfg, 1, boot=["100"], interruptions=["dock=3600"]), horizon=4 * 3600)
    sim = Simulation(cfg, jobs(2), opts)
    sim.trace = []
    r = sim.run()
    assert r.completed == 0 and max(s.running for s in r.samples) == 0
    assert all(t[2] == "booting" for t in sim.trace if t[3] == "failed")
    # each is a quick failure: the cloud backs off, and after five in a row its breaker opens
    assert r.workers == 5 and sim.health["dock"].breaker_open


def test_interruptions_without_a_cloud_apply_to_spot_clouds_only():
    spot = loads("""
pool: {condor_host: cm.example.org}
clouds:
  - {name: aws, type: ec2, region: us-east-1, ami: ami-0123456789abcdef0, market: spot,
     shapes: [{name: m6i.large, cpus: 2, memory: 8192, price: 0.096}]}
  - {name: dock, type: docker}
""")
    opts = build_options(spot, interruptions=["0.2"])
    assert opts.clouds["aws"].interruptions == 0.2 and opts.clouds["dock"].interruptions == 0
    with pytest.raises(OptionError, match="no cloud has market: spot"):
        build_options(loads(ONE_SHAPE), interruptions=["0.2"])


def test_a_refused_shape_sends_the_demand_elsewhere():
    r = run(TWO_CLOUDS, jobs(4, memory=1024), refuse=["cheap/small"])
    assert r.launch_failures >= 1
    assert r.completed == 4
    assert "cheap/small" not in r.by_shape
    assert r.by_shape["dear/big"]["workers"] >= 1


def test_capacity_errors_at_a_rate_delay_but_do_not_lose_jobs():
    r = run(ONE_SHAPE, jobs(40, every=5.0), capacity_errors=["0.5"], seed=2)
    assert r.launch_failures > 0
    assert r.completed == 40


def test_a_shape_sized_by_the_cloud_must_be_sized_for_the_simulator():
    cfg = loads("pool: {condor_host: cm.example.org}\nclouds:\n  - {name: aws, type: ec2, region: us-east-1, "
                "ami: ami-0123456789abcdef0, shapes: [{name: m5.large, price: 0.096}]}\n")
    with pytest.raises(OptionError, match="cloud 'aws': shape m5.large leaves its size to the cloud; give its cpus "
                                          "and memory in the file for the simulator"):
        build_options(cfg)


def test_a_refused_shape_sends_the_demand_to_the_next_shape_of_the_same_cloud():
    cfg = loads(TWO_SHAPES)
    opts = replace(build_options(cfg, boot=["10"], refuse=["dock/small"]), horizon=6 * 3600)
    r = simulate(cfg, jobs(4, memory=1024), opts)
    assert r.completed == 4
    assert r.by_shape.get("dock/big", {}).get("workers", 0) >= 1


@pytest.mark.parametrize("args, message", [
    (["--boot", "nowhere=10"], "--boot: no cloud 'nowhere'"),
    (["--boot", "10-5"], "--boot: expected 0 <= low <= high"),
    (["--refuse", "dock"], "--refuse: expected CLOUD/SHAPE"),
    (["--refuse", "dock/huge"], "cloud 'dock' has no shape 'huge'"),
    (["--capacity-errors", "1.5"], "--capacity-errors: expected a number from 0 to 1"),
    (["--interruptions", "dock=x"], "--interruptions: expected a number"),
])
def test_bad_simulator_options_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    work, config = _files(tmp_path)
    assert cli.main([str(work), str(config), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


# ------------------------------------------------------------------ workloads

def test_csv_with_units_counts_and_optional_columns():
    text = ("submit_time,request_cpus,request_memory,request_disk,duration,count\n"
            "100,1,2GB,10MB,600,3\n"
            "40,4,512,,60,1\n")
    got = parse_csv(text)
    assert got == [Job(0, 4, 512, 0, 60)] + [Job(60, 1, 2048, 10240, 600)] * 3


def test_json_list_or_jobs_object():
    rows = [{"submit_time": 5, "request_cpus": 2, "request_memory": 100, "duration": 9, "request_gpus": 1}]
    assert parse_json(json.dumps(rows)) == parse_json(json.dumps({"jobs": rows})) == [Job(0, 2, 100, 0, 9, 1)]


def test_to_csv_round_trips():
    work = [Job(0, 1, 2048, 1024, 600), Job(1.5, 4, 8192, 0, 1800.25, 1)]
    assert parse_csv(to_csv(work)) == work


@pytest.mark.parametrize("text, message", [
    ("submit_time,request_cpus,request_memory\n0,1,1\n", "header: missing column 'duration'"),
    ("submit_time,request_cpus,request_memory,duration,colour\n", "header: unknown column 'colour'"),
    ("submit_time,request_cpus,request_memory,duration\n0,1,1,60\n0,two,1,60\n",
     "row 3: request_cpus: expected a whole number >= 1, got 'two'"),
    ("submit_time,request_cpus,request_memory,duration\n0,1,1,0\n", "row 2: duration: expected a number of seconds > 0"),
    ("submit_time,request_cpus,request_memory,duration\n0,1,2XB,60\n", "row 2: request_memory: expected a number"),
    ("submit_time,request_cpus,request_memory,duration\n0,1,1\n", "row 2: fewer fields"),
    ("submit_time,request_cpus,request_memory,duration\n0,1,1,60,7\n", "row 2: more fields"),
    ("submit_time,request_cpus,request_memory,duration\n", "no jobs"),
    ("", "empty"),
])
def test_bad_csv_names_the_row_and_column(text, message):
    with pytest.raises(WorkloadError, match=message.replace("(", r"\(")):
        parse_csv(text, "w.csv")


@pytest.mark.parametrize("text, message", [
    ("{", "line 1, column 2: not valid JSON"),
    ('{"jobs": 3}', "expected a list of jobs"),
    ('[{"submit_time": 0, "request_cpus": 1, "request_memory": 1}]', "job 0: duration: is required"),
    ('[{"submit_time": 0, "request_cpus": 1, "request_memory": 1, "duration": 1, "cpus": 2}]',
     "job 0: unknown column 'cpus'"),
    ('[7]', "job 0: expected an object"),
    ('[{"submit_time": 0, "request_cpus": true, "request_memory": 1, "duration": 1}]', "job 0: request_cpus"),
])
def test_bad_json_names_the_job_and_key(text, message):
    with pytest.raises(WorkloadError, match=message):
        parse_json(text, "w.json")


def _files(tmp_path, workload="submit_time,request_cpus,request_memory,duration\n0,1,1024,60\n", config=ONE_SHAPE):
    w = tmp_path / "w.csv"
    w.write_text(workload)
    c = tmp_path / "appliance.yaml"
    c.write_text(config)
    return w, c


@pytest.mark.parametrize("workload_name, workload, config, message", [
    ("w.txt", "x", ONE_SHAPE, "unknown workload file type '.txt'"),
    ("w.csv", "submit_time,request_cpus\n", ONE_SHAPE, "missing column 'request_memory'"),
    ("w.csv", "submit_time,request_cpus,request_memory,duration\n0,1,1,-5\n", ONE_SHAPE, "row 2: duration"),
    ("w.csv", None, "clouds: [{name: x, type: docker, wrokers: 1}]", "configuration: "),
    ("w.csv", None, "scheduler: {idle_timeout: -1}", "scheduler.idle_timeout"),
    ("missing.csv", "-", ONE_SHAPE, "cannot read"),
])
def test_bad_input_is_one_line_naming_it_and_exit_2(tmp_path, capsys, workload_name, workload, config, message):
    w, c = _files(tmp_path, config=config)
    if workload_name != "w.csv":
        w = tmp_path / workload_name
        if workload_name != "missing.csv":
            w.write_text(workload)
    elif workload is not None:
        w.write_text(workload)
    assert cli.main([str(w), str(c)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.startswith("appliance-simulate: error: ") and err.count("\n") == 1


def test_the_command_prints_the_numbers_and_json(tmp_path, capsys):
    w, c = _files(tmp_path, workload="submit_time,request_cpus,request_memory,duration,count\n0,1,1024,600,4\n")
    assert cli.main([str(w), str(c), "--boot", "10"]) == 0
    out = capsys.readouterr().out
    for word in ("makespan", "cost", "worker-hours", "idle fraction", "jobs completed    4 of 4", "jobs requeued"):
        assert word in out
    assert cli.main([str(w), str(c), "--boot", "10", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["completed"] == 4 and data["cost"] == pytest.approx(0.2 * 672 / 3600, abs=1e-4)


def test_the_plot_is_drawn_or_its_absence_said_in_one_line(tmp_path, capsys):
    w, c = _files(tmp_path)
    png = tmp_path / "run.png"
    assert cli.main([str(w), str(c), "--plot", str(png)]) == 0
    captured = capsys.readouterr()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not png.exists() and "matplotlib is not installed" in captured.err
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ from the schedd's history

def ad(**attrs):
    a = classad.ClassAd()
    for k, v in attrs.items():
        a[k] = classad.ExprTree(v) if isinstance(v, str) else v
    return a


def test_history_ads_become_a_workload_of_completed_jobs():
    ads = [
        # ran once: duration from its start to its completion
        ad(JobStatus=4, JobUniverse=5, QDate=1000, JobStartDate=1010, JobCurrentStartDate=1010,
           CompletionDate=1610, RequestCpus=1, RequestMemory=2048, RequestDisk=10240),
        # ran twice: only the last run counts
        ad(JobStatus=4, JobUniverse=5, QDate=1100, JobStartDate=1120, JobCurrentStartDate=1500,
           CompletionDate=1800, RequestCpus=4, RequestMemory=8192, RequestDisk=0, RequestGPUs=1),
        # no dates, only the wall clock: split over its starts
        ad(JobStatus=4, JobUniverse=5, QDate=1200, RemoteWallClockTime=900.0, NumJobStarts=3,
           RequestCpus=2, RequestMemory="1000 + 24", RequestDisk=0),
        ad(JobStatus=3, JobUniverse=5, QDate=1300, RequestCpus=1, RequestMemory=1),      # removed
        ad(JobStatus=4, JobUniverse=7, QDate=1300, CompletionDate=1400, JobStartDate=1310),  # scheduler universe
        ad(JobStatus=4, JobUniverse=5, QDate=1300, RequestCpus=1, RequestMemory=1),      # no run time
    ]
    got, skipped = jobs_from_history(ads)
    assert got == [Job(0, 1, 2048, 10240, 600), Job(100, 4, 8192, 0, 300, 1), Job(200, 2, 1024, 0, 300)]
    assert skipped == {"not completed": 1, "scheduler/local/grid universe": 1, "no run time": 1}


def test_history_export_needs_a_known_file_type(tmp_path, capsys):
    assert cli.main(["--from-history", str(tmp_path / "out.txt")]) == 2
    assert "name it .csv or .json" in capsys.readouterr().err


def test_options_default_to_each_cloud_types_boot_delay():
    cfg = loads(TWO_CLOUDS)
    opts = build_options(cfg)
    assert opts.clouds["cheap"].boot.lo == 2.0 and opts.clouds["cheap"].boot.hi == 3.0
    assert isinstance(SimOptions().model("x", "ec2").boot.lo, float)
