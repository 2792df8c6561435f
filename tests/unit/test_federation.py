"""Federation's files, settings and queries (appliance/federation.py, condor.py's remote part).

No HTCondor daemons: condor_token_create and condor_reconfig are stand-in scripts on
PATH that record how they were called; constraints are evaluated with the real
ClassAd library against job ads.
"""
from __future__ import annotations

import json
import os
import stat

import classad
import pytest

from appliance import federation
from appliance.condor import groups_from_ads, job_group_key, remote_constraint
from appliance.config import ConfigError, FlockTarget, loads

# ------------------------------------------------------------------ config

def test_flock_to_is_parsed_into_targets():
    cfg = loads("federation:\n  flock_to:\n"
                "    - {name: b, collector: cm.example.org:9618, token_file: /etc/appliance/b.token}\n"
                "    - {name: c, collector: 192.0.2.7, token_file: /run/secrets/c}\n")
    assert cfg.federation.flock_to == (FlockTarget("b", "cm.example.org:9618", "/etc/appliance/b.token"),
                                       FlockTarget("c", "192.0.2.7", "/run/secrets/c"))


def test_no_federation_section_means_no_flocking():
    assert loads("pool: {name: x}\n").federation.flock_to == ()
    assert loads("federation: {}\n").federation.flock_to == ()


BAD = [
    ("federation: {flock: []}", "federation.flock: unknown key (known keys here: flock_to)"),
    ("federation: {flock_to: b}", "federation.flock_to: expected a list of pools"),
    ("federation: {flock_to: [b]}", "federation.flock_to[0]: expected a mapping with name, collector and token_file"),
    ("federation: {flock_to: [{name: b, token_file: /t}]}", "federation.flock_to[0].collector: is required"),
    ("federation: {flock_to: [{name: B!, collector: x, token_file: /t}]}", "federation.flock_to[0].name: must be"),
    ("federation: {flock_to: [{name: b, collector: 'x:99999', token_file: /t}]}",
     "federation.flock_to[0].collector: must be a host name or IP address"),
    ("federation: {flock_to: [{name: b, collector: x, token_file: t}]}",
     "federation.flock_to[0].token_file: must be an absolute path"),
    ("federation: {flock_to: [{name: b, collector: x, token_file: /t}, {name: b, collector: y, token_file: /t}]}",
     "federation.flock_to[1].name: duplicate pool name 'b'"),
    ("federation: {flock_to: [{name: b, collector: X, token_file: /t}, {name: c, collector: x, token_file: /t}]}",
     "federation.flock_to[1].collector: 'x' is already federation.flock_to's 'b'"),
    ("federation: {flock_to: [{name: b, collector: x, token_file: /t, extra: 1}]}",
     "federation.flock_to[0].extra: unknown key"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m.split(": ")[0] + ": " + m.split(": ")[1][:30] for _, m in BAD])
def test_bad_federation_config_names_the_key(text, message):
    with pytest.raises(ConfigError) as err:
        loads(text)
    assert str(err.value).startswith(f"<string>: {message}"), str(err.value)


# ------------------------------------------------------------------ the remote side's lines

def test_the_remote_side_changes_two_settings():
    text = federation.remote_lines("lab", "b-pool", "cm.example.org:9618", when=0)
    settings = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert settings == ["FLOCK_TO = $(FLOCK_TO), cm.example.org:9618", "MIN_FLOCK_LEVEL = 1"]
    assert federation.config_line_count(text) == 2
    assert "/etc/condor/tokens.d/b-pool" in text and "condor_reconfig" in text


def test_generated_condor_file_allows_and_denies_by_identity():
    text = federation.condor_file(["lab", "kinc"], ["old", "lab"])
    assert "ALLOW_ADVERTISE_SCHEDD = $(ALLOW_ADVERTISE_SCHEDD) schedd-kinc@$(UID_DOMAIN) schedd-lab@$(UID_DOMAIN)" in text
    # re-allowed "lab" is not denied; "old" is denied everything it could do before
    assert "DENY_READ = $(DENY_READ) schedd-old@$(UID_DOMAIN)\n" in text
    assert "DENY_ADVERTISE_SCHEDD = $(DENY_ADVERTISE_SCHEDD) schedd-old@$(UID_DOMAIN)\n" in text
    assert "ALLOW_WRITE" not in text and "ALLOW_DAEMON" not in text


def test_nothing_allowed_nothing_changes():
    text = federation.condor_file([], [])
    assert [line for line in text.splitlines() if not line.startswith("#")] == []


@pytest.mark.parametrize("name", ["", "Lab", "-lab", "lab_1", "a" * 32, "lab\n", None, "../x"])
def test_schedd_names_are_checked(name):
    with pytest.raises(federation.FederationError, match="1-31 lower-case"):
        federation.check_name(name)


# ------------------------------------------------------------------ allow and revoke

@pytest.fixture
def tools(tmp_path, monkeypatch):
    """condor_token_create, condor_reconfig, condor_advertise stand-ins that log their calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for tool, out in (("condor_token_create", "eyJhbGciOiJIUzI1NiIsImtpZCI6IngifQ.eyJzdWIiOiJ4In0.c2ln"),
                      ("condor_reconfig", "Sent \"Reconfig\""), ("condor_advertise", "Sent 1 of 1 ad"),
                      # the running collector's setting, once it has reconfigured
                      ("condor_config_val", "condor@b-pool schedd-lab@b-pool")):
        script = bin_dir / tool
        script.write_text(f"#!/bin/sh\necho \"{tool} $* key_dir=$_CONDOR_SEC_PASSWORD_DIRECTORY "
                          f"trust=$_CONDOR_TRUST_DOMAIN\" >> {calls}\necho '{out}'\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return calls


def test_allow_makes_a_key_a_limited_token_and_the_remote_files(tmp_path, tools):
    fed, keys = str(tmp_path / "fed"), str(tmp_path / "keys")
    result = federation.allow_schedd("lab", "b-pool", "cm:9618", fed_dir=fed, keys_dir=keys)
    key = os.path.join(keys, "schedd-lab")
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600 and len(open(key).read()) == 96
    call = tools.read_text()
    assert ("condor_token_create -identity schedd-lab@b-pool -key schedd-lab -authz ADVERTISE_SCHEDD -authz READ"
            in call) and f"key_dir={keys}" in call and "trust=b-pool" in call
    assert "condor_reconfig" in call and "condor_config_val -collector ALLOW_ADVERTISE_SCHEDD" in call
    token = result["files"]["token"]
    assert stat.S_IMODE(os.stat(token).st_mode) == 0o600 and open(token).read().count(".") == 2
    assert federation.config_line_count(open(result["files"]["config"]).read()) == result["config_lines"] == 2
    assert [a.name for a in federation.allowed_schedds(fed)] == ["lab"]
    assert "schedd-lab@$(UID_DOMAIN)" in open(federation.condor_include(fed)).read()
    assert not result["again"] and not result["read_token"]


def test_allow_again_makes_a_new_key(tmp_path, tools):
    fed, keys = str(tmp_path / "fed"), str(tmp_path / "keys")
    federation.allow_schedd("lab", "b-pool", "cm", fed_dir=fed, keys_dir=keys)
    first = open(os.path.join(keys, "schedd-lab")).read()
    assert federation.allow_schedd("lab", "b-pool", "cm", fed_dir=fed, keys_dir=keys)["again"]
    assert open(os.path.join(keys, "schedd-lab")).read() != first


def test_a_read_token_for_an_allowed_schedd_keeps_its_token(tmp_path, tools):
    fed, keys = str(tmp_path / "fed"), str(tmp_path / "keys")
    federation.allow_schedd("lab", "b-pool", "cm", fed_dir=fed, keys_dir=keys)
    key = open(os.path.join(keys, "schedd-lab")).read()
    given = tmp_path / "read"
    given.write_text("aaa.bbb.ccc\n")
    result = federation.allow_schedd("lab", "b-pool", "cm", str(given), fed_dir=fed, keys_dir=keys)
    assert result["read_token_only"] and open(os.path.join(keys, "schedd-lab")).read() == key
    path = federation.read_token_path("lab", fed)
    assert open(path).read() == "aaa.bbb.ccc\n" and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert federation.allowed_schedds(fed)[0].read_token


def test_a_read_token_must_look_like_one(tmp_path, tools):
    given = tmp_path / "read"
    given.write_text("not a token")
    with pytest.raises(federation.FederationError, match="does not hold an IDTOKEN"):
        federation.allow_schedd("lab", "b-pool", "cm", str(given), fed_dir=str(tmp_path / "f"),
                                keys_dir=str(tmp_path / "k"))


def test_revoke_deletes_the_key_denies_the_identity_and_withdraws_its_ads(tmp_path, tools):
    fed, keys = str(tmp_path / "fed"), str(tmp_path / "keys")
    result = federation.allow_schedd("lab", "b-pool", "cm", fed_dir=fed, keys_dir=keys)
    federation.revoke_schedd("lab", "b-pool", fed_dir=fed, keys_dir=keys)
    assert not os.path.exists(os.path.join(keys, "schedd-lab"))
    assert not os.path.exists(result["files"]["token"])        # nothing of it is left to hand out
    assert federation.allowed_schedds(fed) == []
    included = open(federation.condor_include(fed)).read()
    assert "DENY_READ = $(DENY_READ) schedd-lab@$(UID_DOMAIN)" in included and "ALLOW_ADVERTISE" not in included
    calls = tools.read_text()
    assert calls.count("condor_advertise INVALIDATE_") == 2
    assert json.load(open(federation.state_file(fed)))["revoked"].keys() == {"lab"}


def test_revoking_an_unknown_schedd_says_which_are_known(tmp_path, tools):
    fed, keys = str(tmp_path / "fed"), str(tmp_path / "keys")
    federation.allow_schedd("lab", "b-pool", "cm", fed_dir=fed, keys_dir=keys)
    with pytest.raises(federation.FederationError, match=r"no allowed schedd named nope \(allowed: lab\)"):
        federation.revoke_schedd("nope", "b-pool", fed_dir=fed, keys_dir=keys)


def test_allowed_schedds_survives_a_damaged_state_file(tmp_path):
    fed = tmp_path / "fed"
    fed.mkdir()
    (fed / "schedds.json").write_text("{not json")
    assert federation.allowed_schedds(str(fed)) == []


# ------------------------------------------------------------------ flocking out (bootstrap)

class _Cfg:
    def __init__(self, targets, pool="c-pool"):
        self.federation = type("F", (), {"flock_to": tuple(targets)})()
        self.pool = type("P", (), {"name": pool})()


def test_flock_to_installs_tokens_and_writes_the_settings(tmp_path, tools):
    token = tmp_path / "b.token"
    token.write_text("aaa.bbb.ccc\n")
    dirs = {"tokens_dir": str(tmp_path / "tokens.d"), "keys_dir": str(tmp_path / "keys"), "fed_dir": str(tmp_path / "f")}
    said = []
    cfg = _Cfg([FlockTarget("b", "b.example.org:9618", str(token)),
                FlockTarget("c", "c.example.org", str(tmp_path / "missing"))])
    lines = federation.condor_lines(cfg, log=said.append, **dirs)
    installed = os.path.join(dirs["tokens_dir"], "flock-b")
    assert open(installed).read() == "aaa.bbb.ccc\n" and stat.S_IMODE(os.stat(installed).st_mode) == 0o600
    settings = [line for line in lines if not line.startswith("#")]
    # the pool whose token cannot be read is left out, and the log says why
    assert settings == ["FLOCK_TO = b.example.org:9618", "FLOCK_BY_DEFAULT = False", "MIN_FLOCK_LEVEL = 1",
                        "SCHEDD_ATTRS = $(SCHEDD_ATTRS) FLOCK_BY_DEFAULT"]
    assert any("flock_to c: cannot use the token file" in s for s in said)
    assert "condor_token_create -identity reader-b@c-pool -key reader-b -authz READ" in tools.read_text()
    assert os.path.exists(os.path.join(dirs["fed_dir"], "flock-to", "b.read-token"))
    assert federation.flock_targets_in_use(cfg, dirs["tokens_dir"]) == (cfg.federation.flock_to[0],)


def test_a_pool_removed_from_flock_to_loses_its_token_and_reader_key(tmp_path, tools):
    token = tmp_path / "b.token"
    token.write_text("aaa.bbb.ccc\n")
    dirs = {"tokens_dir": str(tmp_path / "tokens.d"), "keys_dir": str(tmp_path / "keys"), "fed_dir": str(tmp_path / "f")}
    federation.condor_lines(_Cfg([FlockTarget("b", "b", str(token))]), log=lambda m: None, **dirs)
    assert federation.condor_lines(_Cfg([]), log=lambda m: None, **dirs) == []
    assert os.listdir(dirs["tokens_dir"]) == [] and os.listdir(dirs["keys_dir"]) == []


def test_no_configuration_no_lines(tmp_path):
    assert federation.condor_lines(None, tokens_dir=str(tmp_path), keys_dir=str(tmp_path), fed_dir=str(tmp_path),
                                   log=lambda m: None) == []


# ------------------------------------------------------------------ reading a remote schedd's queue

def job(**attrs) -> classad.ClassAd:
    ad = classad.ClassAd({"JobStatus": 1, "JobUniverse": 5, "RequestCpus": 1, "RequestMemory": 128,
                          "RequestDisk": 1024, "Requirements": classad.ExprTree("true")})
    for k, v in attrs.items():
        ad[k] = v
    return ad


def matches(constraint: str, ad: classad.ClassAd) -> bool:
    return classad.ExprTree(constraint).eval(ad) is True


CONSTRAINTS = [
    # (what, users, tags, flock_by_default, job attributes, counted)
    ("a flocking user's idle job", ["alice@lab"], ["b:9618"], True, {"User": "alice@lab"}, True),
    ("another user's job (not flocking here)", ["alice@lab"], ["b:9618"], True, {"User": "bob@lab"}, False),
    ("a running job", ["alice@lab"], ["b:9618"], True, {"User": "alice@lab", "JobStatus": 2}, False),
    ("an accounting group's submitter", ["group_phys.alice@lab"], ["b:9618"], True,
     {"User": "alice@lab", "AccountingGroup": "group_phys.alice"}, True),
    ("flock-by-default off: a job that does not ask to flock", ["alice@c"], ["b:9618"], False,
     {"User": "alice@c"}, False),
    ("flock-by-default off: a job whose FlockTo names us", ["alice@c"], ["b:9618"], False,
     {"User": "alice@c", "FlockTo": "default, B:9618"}, True),
    ("flock-by-default off: a job sent elsewhere", ["alice@c"], ["b:9618"], False,
     {"User": "alice@c", "FlockTo": "default, x:9618"}, False),
]


@pytest.mark.parametrize("what,users,tags,by_default,attrs,counted", CONSTRAINTS, ids=[c[0] for c in CONSTRAINTS])
def test_remote_constraint_selects_the_jobs_offered_to_us(what, users, tags, by_default, attrs, counted):
    assert matches(remote_constraint(users, tags, by_default), job(**attrs)) is counted


def test_a_job_and_its_group_by_row_have_the_same_key():
    # send_away finds a group's jobs by recomputing the key of each job
    row = job(JobCount=3)
    (g,) = groups_from_ads([row])
    assert job_group_key(job()) == g.key


def test_flock_to_splits_a_group():
    (a,), (b,) = groups_from_ads([job(JobCount=1)]), groups_from_ads([job(JobCount=1, FlockTo="default, b")])
    assert a.key != b.key and b.flock_to == ("default", "b") and a.flock_to is None
