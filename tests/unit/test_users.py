"""Lab users (appliance/users.py, cloud_admin --add-user/--list-users/--remove-user) and the
remote-access settings bootstrap generates from pool.condor_host. No Docker: accounts, keys
and HTCondor are a recording fake; the list on the state volume is real."""
from __future__ import annotations

import json

import pytest

from appliance import bootstrap, users
from appliance.cli import cloud_admin
from appliance.cli.common import run
from appliance.config import ConfigError, loads
from appliance.users import Registry, UserError, Users, check_name, client_settings, restore


class FakeSystem:
    """What users.System does to the machine, recorded."""

    def __init__(self, accounts=None):
        self.accounts = dict(accounts or {"root": 0, "condor": 100, "submit": 1000})
        self.lab = set()
        self.keys = set()
        self.tokens = []
        self.refreshed = 0
        self.jobs = {}
        self.calls = []

    def account_uid(self, name):
        return self.accounts.get(name)

    def lab_accounts(self):
        return {n: self.accounts[n] for n in self.lab}

    def taken_uids(self):
        return set(self.accounts.values())

    def add_account(self, name, uid):
        self.calls.append(("add_account", name, uid))
        self.accounts[name] = uid
        self.lab.add(name)

    def remove_account(self, name):
        self.calls.append(("remove_account", name))
        self.accounts.pop(name, None)
        self.lab.discard(name)

    def has_key(self, name):
        return name in self.keys

    def make_key(self, name):
        made = name not in self.keys
        self.keys.add(name)
        return made

    def drop_key(self, name):
        self.calls.append(("drop_key", name))
        self.keys.discard(name)

    def mint_token(self, name):
        assert name in self.keys, "a token is signed with the user's own key"
        self.tokens.append(name)
        return f"eyJ.token-{name}-{len(self.tokens)}.sig"

    def refresh_daemons(self):
        self.refreshed += 1
        return None

    def remove_jobs(self, name):
        self.calls.append(("remove_jobs", name))
        return self.jobs.pop(name, 0)


CFG = loads("pool: {name: lab, condor_host: 'cm.example.org:19618'}\n")


@pytest.fixture
def lab(tmp_path):
    system = FakeSystem()
    return Users(CFG, Registry(str(tmp_path)), system), system


# ------------------------------------------------------------------ names

@pytest.mark.parametrize("name", ["alice", "bob-2", "a", "x_y", "a" * 32, "slo", "workers"])
def test_good_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name, why", [
    ("", "a user name is required"),
    (None, "a user name is required"),
    ("a" * 33, "is 33 characters long: at most 32"),
    ("Alice", "'Alice' must start with a lower-case letter"),
    ("9lives", "must start with a lower-case letter"),
    ("-x", "must start with a lower-case letter"),
    ("al ice", "may hold only lower-case letters, digits, '-' and '_'; it has ' '"),
    ("a.b@c", "it has '.' '@'"),
    ("aliCe", "it has 'C'"),
    ("élodie", "must start with a lower-case letter (a-z)"),
    ("al\nice", "it has '\\n'"),
    ("slot1", "names starting with 'slot' are reserved for the workers' job accounts"),
    ("slotmachine", "reserved for the workers' job accounts"),
    ("worker-local-1", "names starting with 'worker-' are the workers' identities"),
    ("user-x", "would be confused with signing keys"),
    ("schedd-lab", "remote schedds' identities"),
    ("condor_pool", "HTCondor's own identities"),
    ("admin", "the identity the appliance commands its workers with"),
    ("root", "'root' is reserved: an account of the appliance itself"),
    ("condor", "reserved"), ("submit", "the appliance's own local submit account"), ("nobody", "reserved"),
])
def test_bad_names_say_what_is_wrong(name, why):
    with pytest.raises(UserError) as err:
        check_name(name)
    assert why in str(err.value)
    assert err.value.status == 400


# ------------------------------------------------------------------ adding, listing, removing

def test_add_makes_account_key_and_token_and_tells_the_daemons(lab):
    u, system = lab
    r = u.add("alice")
    assert r["created"] and r["user"] == "alice" and r["identity"] == "alice@lab" and r["uid"] == 100000
    assert r["authorizations"] == ["READ", "WRITE"] and r["token"] == "eyJ.token-alice-1.sig"
    assert system.accounts["alice"] == 100000 and "alice" in system.keys and system.refreshed == 1
    assert r["client"]["config"] == ["CONDOR_HOST = cm.example.org:19618", "SCHEDD_HOST = lab@cm.example.org",
                                     "SEC_CLIENT_AUTHENTICATION_METHODS = IDTOKENS"]
    assert r["client"]["env"] == {"_CONDOR_CONDOR_HOST": "cm.example.org:19618",
                                  "_CONDOR_SCHEDD_HOST": "lab@cm.example.org",
                                  "_CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS": "IDTOKENS"}
    assert r["client"]["token_file"] == "~/.condor/tokens.d/lab" and r["client"]["warning"] is None


def test_adding_again_gives_another_token_with_the_same_key(lab):
    u, system = lab
    first = u.add("alice")
    again = u.add("alice")
    assert not again["created"] and again["uid"] == first["uid"] and again["token"] != first["token"]
    assert system.refreshed == 1                # the key was not new: nothing for the daemons to learn
    assert [c for c in system.calls if c[0] == "add_account"] == [("add_account", "alice", 100000)]


def test_uids_skip_taken_ones_and_are_never_given_twice(lab):
    u, system = lab
    system.accounts["someone"] = 100001          # an id already used in the container
    assert u.add("alice")["uid"] == 100000
    assert u.add("bob")["uid"] == 100002
    u.remove("bob")
    assert u.add("carol")["uid"] == 100003      # bob's files, if any are left, never become carol's
    assert u.add("bob")["uid"] == 100004


def test_a_name_that_is_an_account_of_the_appliance_is_refused(lab):
    u, system = lab
    system.accounts["www-data"] = 33
    with pytest.raises(UserError, match="user name www-data is taken: an account of the appliance"):
        u.add("www-data")
    assert not u.registry.users()


def test_a_leftover_lab_account_is_replaced(lab):
    u, system = lab
    system.accounts["dave"] = 100050
    system.lab.add("dave")                        # a removal that could not finish
    assert u.add("dave")["uid"] == 100000
    assert ("remove_account", "dave") in system.calls


def test_remove_revokes_first_then_jobs_and_account(lab):
    u, system = lab
    u.add("alice")
    u.add("bob")
    system.jobs["alice"] = 3
    r = u.remove("alice")
    assert r == {"user": "alice", "identity": "alice@lab", "removed_jobs": 3, "jobs_problem": None}
    assert [c for c in system.calls if c[1] == "alice" and c[0] != "add_account"] == \
        [("drop_key", "alice"), ("remove_jobs", "alice"), ("remove_account", "alice")]
    assert [x.name for x in u.registry.users()] == ["bob"] and "bob" in system.keys
    with pytest.raises(UserError) as err:
        u.remove("alice")
    assert str(err.value) == "no user named alice (users: bob)" and err.value.status == 404


def test_the_schedd_learns_who_the_lab_users_are(lab):
    u, system = lab
    conf = u.registry.conf_path
    u.add("alice")
    u.add("bob")
    assert open(conf).read().splitlines()[-1] == "LAB_USERS = alice, bob"
    refreshed = system.refreshed
    u.remove("alice")
    assert system.refreshed == refreshed + 1
    # a removed user is also denied, so that a session she opened before is refused too
    assert open(conf).read().splitlines()[1:] == [
        "LAB_USERS = bob",
        "# removed lab users: their keys are deleted; this also refuses sessions they opened before",
        "DENY_READ = $(DENY_READ) alice@$(UID_DOMAIN)", "DENY_WRITE = $(DENY_WRITE) alice@$(UID_DOMAIN)"]
    u.add("alice")                 # a new alice, with a new key: not denied
    assert open(conf).read().splitlines()[1:] == ["LAB_USERS = alice, bob"]


def test_remove_goes_on_when_the_schedd_is_down(lab):
    u, system = lab
    u.add("alice")

    def down(name):
        raise OSError("cannot remove the jobs of alice: schedd down")
    system.remove_jobs = down
    r = u.remove("alice")
    assert r["removed_jobs"] == 0 and "schedd down" in r["jobs_problem"]
    assert "alice" not in system.accounts and "alice" not in system.keys


def test_list_reports_accounts_and_keys(lab):
    u, system = lab
    u.add("alice")
    u.add("bob")
    system.keys.discard("bob")
    system.accounts["alice"] = 5
    rows = {r["user"]: r for r in u.list()}
    assert rows["alice"]["account"] == "uid 5, expected 100000" and rows["alice"]["key"] == "ok"
    assert rows["bob"]["account"] == "ok" and rows["bob"]["key"].startswith("missing")


def test_the_list_is_a_file_on_the_state_volume(tmp_path):
    reg = Registry(str(tmp_path))
    reg.add("alice", set(), now=1000.0)
    data = json.loads((tmp_path / "users.json").read_text())
    assert data == {"next_uid": 100001, "revoked": [], "users": {"alice": {"added": 1000.0, "uid": 100000}}}
    assert oct((tmp_path / "users.json").stat().st_mode & 0o777) == "0o640"
    assert Registry(str(tmp_path)).get("alice").uid == 100000


def test_no_uid_left(tmp_path):
    reg = Registry(str(tmp_path))
    (tmp_path / "users.json").write_text(json.dumps({"next_uid": 199999, "users": {}}))
    reg.add("a", set())
    with pytest.raises(UserError, match="no uid left"):
        reg.add("b", set())


def test_client_settings_with_condor_host_auto_warn():
    s = client_settings(loads(""))
    assert "pool.condor_host is auto" in s["warning"] and s["config"][-1] == "SEC_CLIENT_AUTHENTICATION_METHODS = IDTOKENS"


# ------------------------------------------------------------------ at every start

def test_restore_recreates_accounts_with_their_uids(tmp_path):
    reg = Registry(str(tmp_path))
    reg.add("alice", set())
    reg.add("bob", set())
    reg.add("carol", set())
    system = FakeSystem({"root": 0, "bob": 100001, "carol": 4242})     # bob kept (a restart), carol's name taken
    system.keys |= {"alice", "bob"}
    system.accounts["ghost"] = 100077
    system.lab.add("ghost")                        # removed from the list while the container ran
    lines = []
    made = restore(reg, system, log=lambda *a, **k: lines.append(a[0]))
    assert made == ["alice"] and system.accounts["alice"] == 100000 and system.accounts["bob"] == 100001
    assert "ghost" not in system.accounts
    assert any("carol: the name belongs to another account (uid 4242)" in line for line in lines)
    assert any("carol: her signing key is missing" in line for line in lines)
    assert lines[-1] == "appliance: recreated the accounts of 1 lab user(s): alice"
    assert (tmp_path / "users.conf").read_text().splitlines()[-1] == "LAB_USERS = alice, bob, carol"


def test_restore_with_no_list_does_nothing(tmp_path):
    system = FakeSystem()
    assert restore(Registry(str(tmp_path)), system, log=lambda *a, **k: None) == [] and not system.calls


# ------------------------------------------------------------------ cloud_admin

@pytest.fixture
def admin_env(tmp_path, monkeypatch):
    cfg = tmp_path / "appliance.yaml"
    cfg.write_text("pool: {condor_host: 192.0.2.10:19618}\n")
    monkeypatch.setenv("APPLIANCE_CONFIG", str(cfg))
    monkeypatch.setenv("APPLIANCE_DB", str(tmp_path / "state" / "appliance.db"))
    monkeypatch.setattr(users, "STATE", str(tmp_path))
    system = FakeSystem()
    monkeypatch.setattr(users, "System", lambda pool: system)
    return system


def admin(*argv):
    return run(cloud_admin.main, list(argv))


def test_cli_add_user_prints_token_and_exact_settings(admin_env, capsys):
    assert admin("--add-user", "alice", "-C", "why") == 0
    out = capsys.readouterr().out
    assert out.startswith("alice: added (uid 100000). Jobs submitted with this token are owned by alice "
                          "(alice@appliance).")
    assert "\neyJ.token-alice-1.sig\n" in out
    assert ("\nCONDOR_HOST = 192.0.2.10:19618\nSCHEDD_HOST = appliance@192.0.2.10\n"
            "SEC_CLIENT_AUTHENTICATION_METHODS = IDTOKENS\n") in out
    assert "export _CONDOR_SCHEDD_HOST=appliance@192.0.2.10\n" in out
    assert "~/.condor/tokens.d/appliance (mode 0600)" in out


def test_cli_users_json_list_and_remove(admin_env, capsys):
    assert admin("--add-user", "alice", "--json", "-C", "why") == 0
    added = json.loads(capsys.readouterr().out)
    assert added["token"] == "eyJ.token-alice-1.sig" and added["uid"] == 100000
    assert admin("--list-users") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["USER", "UID", "IDENTITY", "ADDED", "ACCOUNT", "TOKENS"]
    assert table[1].split()[:3] == ["alice", "100000", "alice@appliance"]
    assert admin("--remove-user", "alice", "-C", "why") == 0
    assert capsys.readouterr().out.strip() == ("alice: removed; tokens for alice@appliance no longer work, "
                                               "0 job(s) of theirs removed from the queue")
    assert admin("--list-users", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"users": []}


def test_cli_bad_and_unknown_users_exit_1(admin_env, capsys):
    assert admin("--add-user", "slot3", "-C", "why") == 1
    assert "user name 'slot3' is reserved" in capsys.readouterr().err
    assert admin("--remove-user", "nobody-here", "-C", "why") == 1
    assert "no user named nobody-here (users: none)" in capsys.readouterr().err


def test_cli_user_flags_are_actions_of_their_own(admin_env, capsys):
    with pytest.raises(SystemExit) as e:
        cloud_admin.main(["--add-user", "alice", "-e", "local"])
    assert e.value.code == 2


# ------------------------------------------------------------------ pool.condor_host

@pytest.mark.parametrize("value, address", [
    ("auto", None), ("cm.example.org", ("cm.example.org", 9618)), ("192.0.2.7:19618", ("192.0.2.7", 19618)),
    ("cm:1", ("cm", 1)), ("cm.example.org:65535", ("cm.example.org", 65535)),
])
def test_condor_host_takes_an_optional_port(value, address):
    pool = loads(f"pool: {{condor_host: '{value}'}}\n").pool
    assert pool.condor_host == value and pool.public_address == address


@pytest.mark.parametrize("value, problem", [
    ("cm.example.org:0", "the port after ':' must be a number from 1 to 65535, got '0'"),
    ("cm.example.org:70000", "from 1 to 65535, got '70000'"),
    ("cm.example.org:http", "got 'http'"),
    ("cm.example.org:", "got ''"),
    ("cm:8080", "port 8080 is the web page's"),
    ("bad host", "must be 'auto' or a host name or IPv4 address, optionally with :port"),
    (":19618", "must be 'auto' or a host name"),
    ("[::1]:19618", "must be 'auto' or a host name"),
    ("a:b:19618", "must be 'auto' or a host name"),
])
def test_condor_host_errors(value, problem):
    with pytest.raises(ConfigError) as err:
        loads(f"pool: {{condor_host: '{value}'}}\n")
    assert err.value.path == "pool.condor_host" and problem in err.value.problem


# ------------------------------------------------------------------ what bootstrap generates

def lines_for(condor_host, resolve=lambda h: "203.0.113.5"):
    return bootstrap.remote_access(loads(f"pool: {{condor_host: '{condor_host}'}}\n"), "0123abcd", resolve=resolve)


def settings(lines):
    return dict(line.split(" = ", 1) for line in lines if line and not line.startswith("#"))


def test_remote_access_on_the_standard_port():
    s = settings(lines_for("lab.example.org"))
    assert s == {"SCHEDD_NAME": "appliance@lab.example.org", "TCP_FORWARDING_HOST": "203.0.113.5",
                 "PRIVATE_NETWORK_NAME": "appliance-0123abcd", "PRIVATE_NETWORK_INTERFACE": "127.0.0.1"}


def test_remote_access_on_another_port_listens_on_both():
    s = settings(lines_for("203.0.113.5:19618"))
    assert s["SHARED_PORT_PORT"] == "19618" and s["COLLECTOR_HOST"] == "$(CONDOR_HOST):19618"
    assert s["DAEMON_LIST"] == "$(DAEMON_LIST), SHARED_PORT_9618" and s["DC_DAEMON_LIST"] == "+ SHARED_PORT_9618"
    assert s["SHARED_PORT_9618_ARGS"] == "-p 9618 -local-name SHARED_PORT_9618"
    # its own address file: the daemons read the main one's to know what to advertise
    assert s["SHARED_PORT_9618.SHARED_PORT_DAEMON_AD_FILE"] == "$(LOCK)/shared_port_9618_ad"
    assert s["SCHEDD_NAME"] == "appliance@203.0.113.5"


def test_remote_access_when_the_name_does_not_resolve(capsys):
    s = settings(lines_for("nowhere.invalid:19618", resolve=lambda h: None))
    assert s == {"SCHEDD_NAME": "appliance@nowhere.invalid"}      # no forwarding to an address it cannot name
    assert "does not resolve to an IPv4 address inside the container" in capsys.readouterr().err


def test_no_remote_access_settings_with_auto():
    assert bootstrap.remote_access(loads(""), "0123abcd") == []


def test_the_certificate_names_condor_host_without_its_port():
    assert bootstrap._condor_host(loads("pool: {condor_host: 'cm.example.org:19618'}\n")) == "cm.example.org"


def test_cli_user_changes_need_a_comment_and_record_it(admin_env, capsys):
    from appliance.store import Store
    with pytest.raises(SystemExit) as e:
        cloud_admin.main(["--add-user", "alice"])
    assert e.value.code == 2 and "--comment" in capsys.readouterr().err
    assert admin("--add-user", "alice", "-C", "new student") == 0
    assert admin("--remove-user", "alice", "--comment", "left the lab") == 0
    assert [e["reason"] for e in Store().events() if e["kind"] == "users"] == [
        'user alice added by cloud_admin: "new student"', 'user alice removed by cloud_admin: "left the lab"']
