"""Bad input, fuzzed: the config loader and the CLIs never crash on it.

Whatever YAML or data reaches appliance.config, the answer is a Config or one
ConfigError whose paths name where each problem is. Whatever arguments reach
cloud_status / cloud_admin, the answer is an exit code with a message, and a
rejected command changes nothing in the state.
"""
from __future__ import annotations

import ast
import math
import re
import sqlite3
import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance import config as config_mod
from appliance.cli import cloud_admin, cloud_status
from appliance.cli.common import run
from appliance.config import CLOUD_TYPES, Config, ConfigError, loads, parse
from appliance.store import Store

FAST = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

KEYS = sorted({"pool", "scheduler", "clouds", "name", "type", "enabled", "priority", "max_workers", "worker",
               "cpus", "memory", "disk", "attributes", "image", "url", "network", "labels", "constraints",
               "region", "ami", "instance_type", "interval", "idle_timeout", "boot_timeout", "lost_timeout",
               "backoff_base", "on_shutdown", "condor_host", "security_groups", "tags", "market",
               "spot_max_price", "endpoint_url", "max_lifetime", "HasGPU", "shapes", "gpus", "price", "bogus"})

leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.sampled_from(list(CLOUD_TYPES) + ["local", "ami-0123456789abcdef0", "auto", "keep", ""]),
)
values = st.recursive(
    leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers()),
                                            inner, max_size=5)),
    max_leaves=25,
)
shape = st.dictionaries(st.sampled_from(["name", "cpus", "memory", "disk", "gpus", "attributes", "price", "bogus"]),
                        values | st.sampled_from(["small", "t3.medium", "a b", 0.05, 4]), max_size=5)
cloud = st.dictionaries(st.sampled_from(KEYS), values, max_size=6) | st.fixed_dictionaries(
    {"name": st.sampled_from(["local", "docker", "a", "Bad Name", ""]) | values,
     "type": st.sampled_from(list(CLOUD_TYPES)) | values},
    optional={"shapes": st.lists(shape, max_size=3) | values,
              **{k: values for k in ("worker", "max_workers", "priority", "enabled", "image", "region", "ami",
                                      "instance_type")}})
documents = st.one_of(
    values,
    st.fixed_dictionaries({}, optional={
        "pool": st.dictionaries(st.sampled_from(["name", "condor_host", "bogus"]), values, max_size=3) | values,
        "scheduler": st.dictionaries(st.sampled_from(KEYS), values, max_size=5) | values,
        "clouds": st.lists(cloud, max_size=3) | values,
    }),
)


def _walk(data, path: str) -> bool:
    """True if every part of a ConfigError path but the last exists in data."""
    if path == "(top level)":
        return True
    parts = re.findall(r"\[(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\]]*)\]|[^.\[\]]+", path)
    assert "".join(parts).replace(".", "") == path.replace(".", ""), (path, parts)
    node = data
    for part in parts[:-1]:
        if part.startswith("["):
            key = ast.literal_eval(part[1:-1])
            if isinstance(node, list) and isinstance(key, int) and key < len(node):
                node = node[key]
            elif isinstance(node, dict) and key in node:
                node = node[key]
            else:
                return False
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True


@FAST
@given(documents)
def test_any_data_gives_a_config_or_one_error_naming_each_key_path(data):
    try:
        cfg = parse(data)
    except ConfigError as err:
        assert (err.path, err.problem) == err.errors[0]
        lines = str(err).splitlines()
        if len(err.errors) == 1:
            assert lines == [f"<string>: {err.path}: {err.problem}"]
        else:
            assert lines[0] == f"<string>: {len(err.errors)} errors:"
            shown = err.errors[:config_mod.ERRORS_SHOWN]
            assert lines[1:len(shown) + 1] == [f"  {path}: {problem}" for path, problem in shown]
        assert len(set(err.errors)) == len(err.errors), err.errors      # none said twice
        for path, problem in err.errors:
            assert problem and _walk(data, path), (path, data)
        assert all(len(line) < 1000 for line in lines)
        assert len(lines) <= config_mod.ERRORS_SHOWN + 2
        return
    assert isinstance(cfg, Config)
    s = cfg.scheduler
    for v in (s.interval, s.idle_timeout, s.boot_timeout, s.lost_timeout, s.backoff_base):
        assert math.isfinite(v) and v >= 0


@FAST
@given(documents)
def test_any_yaml_document_loads_or_fails_cleanly(data):
    try:
        text = yaml.safe_dump(data)
    except yaml.YAMLError:
        return
    try:
        assert isinstance(loads(text), Config)
    except ConfigError as err:
        assert err.path and err.problem


@FAST
@given(st.text(max_size=200))
def test_any_text_loads_or_fails_cleanly(text):
    try:
        loads(text)
    except ConfigError as err:
        assert err.path and err.problem


@pytest.mark.parametrize("text, path", [
    ("scheduler: {interval: .nan}", "scheduler.interval"),
    ("scheduler: {idle_timeout: .inf}", "scheduler.idle_timeout"),
    ("scheduler: {backoff_base: 0.5}", "scheduler.backoff_base"),
    ("scheduler: {backoff_base: ten}", "scheduler.backoff_base"),
])
def test_values_that_would_break_the_loop_are_refused(text, path):
    with pytest.raises(ConfigError) as err:
        loads(text)
    assert err.value.path == path


def test_a_billion_laughs_file_is_refused_quickly():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(9))
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        loads("scheduler:\n  interval:\n" + "\n".join("    " + l for l in bomb.splitlines()))
    assert time.monotonic() - started < 2
    assert err.value.path == "scheduler.interval"


# ---------------------------------------------------------------- the CLIs

CLI_CONFIG = """
clouds:
  - {name: local, type: local, max_workers: 2}
  - {name: docker, type: docker, enabled: false}
"""
TOKENS = ["-e", "-d", "-k", "-v", "-c", "-n", "-a", "-m", "-q", "-e", "--now", "--json", "--all", "-x",
          "local", "docker", "nope", "-1", "0", "abc", "1e3", "99999999999", "²", "٣", " 3", "", " ",
          "local-000001", "--max-workers", "--enable=local", "-v3", "--limit", "-n0", "-o", "-b", "-z", "-g",
          "--hours", "-C", "--comment", "why"]
# what a shell can pass: no NUL, no lone surrogates (undecodable bytes: see the subprocess test below)
word = st.one_of(st.sampled_from(TOKENS),
                 st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=12))
# shaped like real commands (an action, its value, a cloud, a worker), with any part malformed
shaped = st.builds(
    lambda action, value, cloud, rest: [action, value] + cloud + rest,
    st.sampled_from(["-e", "-d", "-v", "-k", "-c", "-e", "-n", "-q", "-m"]), word,
    st.sampled_from([[], ["-c", "local"], ["-c", "docker"], ["-c", "nope"], ["-c", ""]]),
    st.lists(word, max_size=3))
argvs = st.one_of(st.lists(word, max_size=6), shaped)


def _state(db_path) -> tuple:
    db = sqlite3.connect(db_path)
    try:
        return (db.execute("SELECT name, enabled, max_workers FROM cloud_settings ORDER BY name").fetchall(),
                db.execute("SELECT worker_id, now FROM requests ORDER BY id").fetchall(),
                db.execute("SELECT count(*) FROM events").fetchone())
    finally:
        db.close()


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "appliance.yaml").write_text(CLI_CONFIG)
    mp = pytest.MonkeyPatch()
    mp.setenv("APPLIANCE_CONFIG", str(d / "appliance.yaml"))
    mp.setenv("APPLIANCE_DB", str(d / "appliance.db"))
    from appliance import condor
    mp.setattr(condor, "completed_jobs", lambda since: [])     # -g reads no real schedd here
    store = Store()
    store.add_worker("local-000001", "local", "test")
    yield store, str(d / "appliance.db")
    mp.undo()


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(argvs, st.sampled_from(["cloud_admin", "cloud_status"]))
def test_cli_bad_arguments_get_a_clear_error_and_change_nothing(cli_env, capsys, argv, prog):
    store, db = cli_env
    store.put("heartbeat", {"time": time.time(), "interval": 2, "duration": 0.01})
    before = _state(db)
    main = cloud_admin.main if prog == "cloud_admin" else cloud_status.main
    capsys.readouterr()
    try:
        code = run(main, argv)
    except SystemExit as exit_:       # argparse: usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    assert code in (0, 1, 2), (argv, code, out, err)
    if code != 0:
        assert err.strip(), (argv, code)               # a message saying what is wrong
        assert "Traceback" not in err
        if code == 1:
            assert len(err.strip().splitlines()) == 1, err
        assert _state(db) == before, argv                # and nothing changed
    else:
        assert out.strip()


def test_config_error_messages_are_bounded_for_huge_values():
    with pytest.raises(ConfigError) as err:
        parse({"scheduler": {"interval": "x" * 100000}})
    assert len(str(err.value)) < 300
    with pytest.raises(ConfigError) as err:
        parse({"scheduler": {"interval": [list(range(1000))] * 1000}})
    assert len(str(err.value)) < 300


def test_shown_values_never_expand_shared_structures():
    shared = ["x"] * 10
    for _ in range(12):
        shared = [shared] * 10        # 10**13 leaves if printed naively
    started = time.monotonic()
    assert len(config_mod._shown(shared)) <= 60
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("argv", [["-v", "²", "-c", "local", "-C", "x"], ["-v", "٣", "-c", "local", "-C", "x"],
                                  ["-e", "", "-C", "x"], ["-d", "", "-C", "x"], ["-v", "1", "-c", "", "-C", "x"]])
def test_cli_odd_values_found_by_fuzzing(cli_env, capsys, argv):
    store, db = cli_env
    store.put("heartbeat", {"time": time.time(), "interval": 2, "duration": 0.01})
    before = _state(db)
    assert run(cloud_admin.main, argv) == 1
    err = capsys.readouterr().err.strip()
    assert "no cloud named" in err or "whole number" in err, err
    assert "None" not in err, err
    assert _state(db) == before


def test_cli_undecodable_bytes_in_arguments(tmp_path):
    """A real process gets b'\\xff' as a surrogate escape; the error still prints."""
    import os
    import subprocess
    import sys
    (tmp_path / "a.yaml").write_text(CLI_CONFIG)
    env = dict(os.environ, APPLIANCE_CONFIG=str(tmp_path / "a.yaml"), APPLIANCE_DB=str(tmp_path / "db"),
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    for module, code in (("cloud_admin", 1), ("cloud_status", 2)):
        argv = [sys.executable, "-m", f"appliance.cli.{module}", *(["-C", "x", "-e"] if module == "cloud_admin" else ["-x"]), b"\xff"]
        proc = subprocess.run(argv, env=env, capture_output=True, timeout=30)
        assert proc.returncode == code, proc
        assert b"Traceback" not in proc.stderr and proc.stderr.strip(), proc
