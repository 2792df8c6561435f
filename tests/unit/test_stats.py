"""Boot and job statistics per cloud (appliance/stats.py): pure functions, table-tested."""
import pytest

from appliance import stats
from appliance.stats import Boot, JobRun


@pytest.mark.parametrize("values,p,expected", [
    ([], 50, None), ([7.0], 50, 7.0), ([7.0], 90, 7.0), ([1, 2, 3, 4], 50, 2), ([1, 2, 3, 4], 90, 4),
    ([5, 1, 4, 2, 3], 50, 3), (list(range(1, 11)), 90, 9), (list(range(1, 11)), 100, 10), ([3, 1], 0, 1),
])
def test_percentile_is_the_nearest_rank(values, p, expected):
    assert stats.percentile(values, p) == expected


@pytest.mark.parametrize("boot,outcome,seconds", [
    (Boot("w", "c", 100.0), "starting", None),
    (Boot("w", "c", 100.0, 130.5, "idle", "joined the pool as w@h"), "joined", 30.5),
    (Boot("w", "c", 100.0, 190.0, "busy", "joined the pool as w@h"), "joined", 90.0),
    (Boot("w", "c", 100.0, 400.0, "failed", "did not join the pool within boot_timeout (300s)"), "failed", None),
    (Boot("w", "c", 100.0, 101.0, "failed", "launch failed: quota exceeded"), "failed", None),
    (Boot("w", "c", 100.0, 150.0, "failed", "spot interruption: the instance was taken back"), "interrupted", None),
    (Boot("w", "c", 100.0, 120.0, "retired", "cancelled: the demand went away"), "cancelled", None),
])
def test_how_each_start_ended(boot, outcome, seconds):
    assert boot.outcome == outcome and boot.boot_seconds == seconds


def test_boot_stats_per_cloud():
    boots = [
        Boot("a1", "aws", 0.0, 60.0, "idle"), Boot("a2", "aws", 0.0, 120.0, "busy"),
        Boot("a3", "aws", 0.0, 30.0, "idle"), Boot("a4", "aws", 0.0, 300.0, "failed", "boot timeout"),
        Boot("a5", "aws", 0.0, 310.0, "failed", "boot timeout"), Boot("a6", "aws", 0.0, 5.0, "failed", "quota"),
        Boot("a7", "aws", 0.0, 9.0, "retired", "cancelled"), Boot("a8", "aws", 0.0),
        Boot("a9", "aws", 0.0, 50.0, "failed", "spot interruption: gone"),
        Boot("x1", "gone-cloud", 0.0, 10.0, "idle"),
    ]
    got = {c["cloud"]: c for c in stats.boot_stats(boots, ["local", "aws"])}
    assert list(got) == ["local", "aws", "gone-cloud"]      # configured first, in order, then the rest
    assert got["local"] == {"cloud": "local", "launched": 0, "joined": 0, "failed": 0, "interrupted": 0,
                            "cancelled": 0, "starting": 0, "success": None,
                            "boot_seconds": {"mean": None, "p50": None, "p90": None, "max": None},
                            "failure_reasons": []}
    aws = got["aws"]
    assert (aws["launched"], aws["joined"], aws["failed"], aws["interrupted"], aws["cancelled"], aws["starting"]) == \
        (9, 3, 3, 1, 1, 1)
    assert aws["success"] == 0.5
    assert aws["boot_seconds"] == {"mean": 70.0, "p50": 60.0, "p90": 120.0, "max": 120.0}
    assert aws["failure_reasons"] == [{"reason": "boot timeout", "count": 2}, {"reason": "quota", "count": 1}]
    assert got["gone-cloud"]["success"] == 1.0


def test_boot_failures_are_listed_oldest_first_with_why():
    boots = [Boot("a2", "aws", 100.0, 400.0, "failed", "boot timeout"), Boot("a1", "aws", 0.0, 2.5, "failed", "quota"),
             Boot("a3", "aws", 0.0, 60.0, "idle"), Boot("a4", "aws", 0.0)]
    assert stats.boot_failures(boots) == [
        {"time": 2.5, "worker_id": "a1", "cloud": "aws", "launched_at": 0.0, "after_seconds": 2.5, "reason": "quota"},
        {"time": 400.0, "worker_id": "a2", "cloud": "aws", "launched_at": 100.0, "after_seconds": 300.0,
         "reason": "boot timeout"}]


def test_job_times_per_cloud():
    runs = [JobRun("docker", "d1", 10.0), JobRun("docker", "d1", 20.0), JobRun("docker", "d2", 30.0),
            JobRun("docker", "d2", 3600.0), JobRun("old", "o1", 5.0)]
    got = stats.job_times(runs, ["local", "docker"])
    assert got == [
        {"cloud": "local", "jobs": 0, "workers": 0, "hours": 0.0,
         "job_seconds": {"mean": None, "p50": None, "p90": None, "max": None}},
        {"cloud": "docker", "jobs": 4, "workers": 2, "hours": 1.02,
         "job_seconds": {"mean": 915.0, "p50": 20.0, "p90": 3600.0, "max": 3600.0}},
        {"cloud": "old", "jobs": 1, "workers": 1, "hours": 0.0,
         "job_seconds": {"mean": 5.0, "p50": 5.0, "p90": 5.0, "max": 5.0}}]
