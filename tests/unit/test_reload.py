"""Reloading appliance.yaml without a restart: the pure diff, the daemon on fakes (add,
remove with draining, resize, an invalid file, overrides kept or reset, SIGHUP), and
cloud_admin --reload / cloud_status against a real store."""
from __future__ import annotations

import json
import threading
import time

import pytest

from appliance import reload
from appliance.cli import cloud_admin, cloud_status
from appliance.cli.common import run
from appliance.config import loads
from appliance.daemon import Daemon, retiring_after_restart
from appliance.lifecycle import State
from appliance.store import Store

from .test_cli import cli_state
from .test_daemon import Clock, FakeCondor, FakeDriver, Rig, group

ONE = """
scheduler: {interval: 1, idle_timeout: 60, boot_timeout: 120, lost_timeout: 60}
clouds:
  - {name: local, type: local, max_workers: 3}
"""
TWO = ONE + "  - {name: extra, type: local, max_workers: 2, priority: 1}\n"
RESIZED = ONE.replace("max_workers: 3", "max_workers: 5")
BAD = ONE.replace("max_workers: 3", "max_workers: lots")


# ------------------------------------------------------------------ the diff (pure)

@pytest.mark.parametrize("old, new, added, removed, changed, sections", [
    (ONE, ONE, (), (), {}, ()),
    (ONE, TWO, ("extra",), (), {}, ()),
    (TWO, ONE, (), ("extra",), {}, ()),
    (ONE, RESIZED, (), (), {"local": ("max_workers 3 -> 5",)}, ()),
    (ONE, ONE.replace("max_workers: 3}", "max_workers: 3, enabled: false, priority: 2}"), (), (),
     {"local": ("enabled yes -> no", "priority 0 -> 2")}, ()),
    (ONE, ONE.replace("max_workers: 3}", "max_workers: 3, worker: {cpus: 2}}"), (), (), {"local": ("shapes",)}, ()),
    (ONE, ONE.replace("interval: 1", "interval: 2"), (), (), {}, ("scheduler",)),
    (ONE, "pool: {name: other}\n" + ONE, (), (), {}, ("pool",)),
    (TWO, RESIZED.replace("local, type: local", "renamed, type: local"), ("renamed",), ("local", "extra"), {}, ()),
])
def test_the_diff_says_what_a_new_file_adds_removes_and_changes(old, new, added, removed, changed, sections):
    d = reload.diff(loads(old), loads(new))
    assert (d.added, d.removed, dict(d.changed), d.sections, d.refusal) == (added, removed, changed, sections, "")
    assert d.empty == (not (added or removed or changed or sections))


def test_a_cloud_that_changes_type_is_refused():
    d = reload.diff(loads(ONE), loads(ONE.replace("type: local", "type: docker")))
    assert "cloud local (local -> docker) changed type" in d.refusal


def test_the_line_names_each_change_and_how_many_workers_drain():
    d = reload.diff(loads(TWO), loads(RESIZED + "  - {name: third, type: local}\n"))
    drains = reload.Drains({"extra": ("extra-1", "extra-2")}, {"extra": 2})
    assert reload.describe(d, drains) == ("clouds added: third; removed: extra (its 2 workers drain); "
                                          "changed: local (max_workers 3 -> 5)")
    assert reload.describe(reload.diff(loads(ONE), loads("pool: {name: other}\n" + ONE))) == \
        "pool changed: applies at the next restart"
    assert reload.removed_note("x", 1) == "reload: cloud x removed, its 1 worker drains"
    assert reload.removed_note("x", 0) == "reload: cloud x removed, no workers"


def test_pool_and_federation_keep_their_running_values():
    old, new = loads(ONE), loads("pool: {name: other}\n" + RESIZED)
    kept = reload.kept_for_restart(old, new)
    assert kept.pool == old.pool and kept.cloud("local").max_workers == 5


# ------------------------------------------------------------------ the daemon on fakes

class FileRig(Rig):
    """A daemon whose configuration comes from a file, as in the appliance (Rig's helpers)."""

    def __init__(self, tmp_path, text=ONE):  # noqa: PLW0231 - Rig's own set-up is the in-memory config
        self.path = tmp_path / "appliance.yaml"
        self.path.write_text(text)
        self.store = Store(str(tmp_path / "state.db"))
        cfg, raw = reload.load_file(str(self.path))
        reload.record_active(self.store, cfg, raw)
        self.cfg = cfg
        self.clock = Clock()
        self.condor = FakeCondor()
        self.made: dict[str, FakeDriver] = {}
        self.drivers = {c.name: self.make(c) for c in cfg.clouds}
        self.daemon = Daemon(cfg, self.store, self.condor, self.drivers, clock=self.clock, driver_factory=self.make)

    def make(self, cloud):
        self.made[cloud.name] = FakeDriver(cloud)
        return self.made[cloud.name]

    def reload(self, text=None, reset=False):
        if text is not None:
            self.path.write_text(text)
        reload.request(self.store, reset, actor="test")
        self.cycle()
        return reload.last_result(self.store)

    def max_workers(self):
        return {h.name: h.max_workers for h in self.store.cloud_health(self.daemon.cfg)}


@pytest.fixture
def frig(tmp_path):
    r = FileRig(tmp_path)
    yield r
    r.close()


def test_a_reload_adds_a_cloud_with_its_own_driver(frig):
    version = reload.active_record(frig.store)["version"]
    result = frig.reload(TWO)
    assert result["ok"] and result["added"] == ["extra"] and result["version"] != version
    assert set(frig.daemon.drivers) == {"local", "extra"} and frig.daemon.cfg.cloud_names == ("local", "extra")
    assert reload.active_record(frig.store)["version"] == result["version"] == reload.version_of(TWO)
    assert "reload: cloud extra added" in frig.reasons()
    # the new cloud launches: local is full, the job goes to extra
    frig.store.set_cloud("local", max_workers=0)
    frig.condor.groups = (group(1),)
    frig.cycle()
    assert frig.made["extra"].launched


def test_a_resize_applies_at_once(frig):
    result = frig.reload(RESIZED)
    assert result["changed"] == {"local": ["max_workers 3 -> 5"]} and frig.max_workers() == {"local": 5}
    assert "reload: cloud local changed: max_workers 3 -> 5" in frig.reasons()


def test_an_invalid_file_is_refused_and_the_running_configuration_stays(frig):
    before = reload.active_record(frig.store)
    result = frig.reload(BAD)
    assert result["ok"] is False and "clouds[0].max_workers" in result["error"] and "\n" not in result["error"]
    assert result["version"] == before["version"] and reload.active_record(frig.store) == before
    assert frig.max_workers() == {"local": 3}
    assert any(r.startswith("reload by test refused, the running configuration stays") for r in frig.reasons())
    assert "refused" in reload.answer_line(result)
    # the daemon goes on, and the next good file is taken
    assert frig.reload(RESIZED)["ok"] and frig.max_workers() == {"local": 5}


def test_runtime_overrides_are_kept_unless_a_reset_is_asked(frig):
    frig.store.set_cloud("local", max_workers=1, enabled=False, actor="cloud_admin")
    frig.reload(RESIZED)
    health = frig.store.cloud_health(frig.daemon.cfg)[0]
    assert (health.max_workers, health.enabled) == (1, False)
    result = frig.reload(reset=True)
    health = frig.store.cloud_health(frig.daemon.cfg)[0]
    assert result["reset_overrides"] and (health.max_workers, health.enabled) == (5, True)
    assert any(r.startswith("runtime settings cleared by reload") for r in frig.reasons())


def test_a_removed_clouds_busy_worker_drains_and_is_never_killed(tmp_path):
    r = FileRig(tmp_path, TWO)
    try:
        r.store.set_cloud("local", max_workers=0)
        r.condor.groups = (group(1),)
        r.cycle()
        (wid,) = [w.id for w in r.store.workers()]
        assert wid.startswith("extra-")
        r.condor.join(wid, claimed=1)
        r.condor.groups = ()
        r.cycle()
        r.store.set_cloud("extra", max_workers=1)       # an override of a cloud that goes: it goes too
        result = r.reload(ONE)
        assert result["removed"] == ["extra"] and result["draining"] == {"extra": 1}
        assert "reload: cloud extra removed, its 1 worker drains" in r.reasons()
        r.cycle()
        assert r.store.worker(wid).state is State.DRAINING and wid in r.condor.drained
        assert r.made["extra"].terminated == [] and "extra" in r.daemon.drivers
        r.cycle()      # still running its job: still observed through its driver, not touched
        assert r.store.worker(wid).state is State.DRAINING and r.made["extra"].terminated == []
        # its job finishes and the drained worker exits: retired, and the cloud is forgotten
        del r.condor.slots[wid]
        r.made["extra"].resources.pop(wid)
        r.cycle()
        assert r.store.worker(wid).state is State.RETIRED and "extra" not in r.daemon.drivers
        assert r.daemon.retiring == {}
        assert "reload: cloud extra removed: its last worker is gone" in r.reasons()
        assert "extra" not in {row["name"] for row in r.store.db.execute("SELECT name FROM cloud_settings")}
    finally:
        r.close()


def test_sighup_reloads_at_the_next_cycle(frig):
    frig.path.write_text(RESIZED)
    frig.daemon.reload_signal.set()
    assert frig.daemon.reload_wanted(0.0)
    frig.cycle()
    assert frig.max_workers() == {"local": 5} and not frig.daemon.reload_signal.is_set()
    assert reload.last_result(frig.store)["ok"]


def test_a_pending_request_wakes_the_wait_between_cycles(frig):
    assert not frig.daemon.reload_wanted(100.0)
    reload.request(frig.store)
    assert frig.daemon.reload_wanted(101.0)


def test_a_restart_drains_the_workers_of_a_cloud_the_file_no_longer_has(tmp_path):
    store = Store(str(tmp_path / "state.db"))
    try:
        previous = reload.record_active(store, loads(TWO, "f"), TWO)
        store.add_worker("extra-1", "extra", "launch", shape="default")
        store.transition("extra-1", State.BOOTING, "launched")
        store.transition("extra-1", State.BUSY, "joined")
        retiring = retiring_after_restart(store, previous, loads(ONE))
        assert list(retiring) == ["extra"] and store.pending_kills() == {"extra-1": False}
        assert retiring_after_restart(store, None, loads(ONE)) == {}
    finally:
        store.close()


# ------------------------------------------------------------------ cloud_admin --reload, cloud_status

@pytest.fixture
def env(tmp_path, monkeypatch):
    cfg, store = cli_state(tmp_path, monkeypatch, ONE)
    c, text = reload.load_file()
    reload.record_active(store, c, text)
    yield cfg, store
    store.close()


def admin(*argv):
    return run(cloud_admin.main, list(argv))


def answering(db: str, result: dict):
    """A stand-in scheduler: answers the next request with `result`."""
    def answer():
        s = Store(db)
        try:
            for _ in range(200):
                req = reload.pending(s, 0)
                if req:
                    s.put(reload.RESULT, {**result, "id": req["id"]})
                    return
                time.sleep(0.01)
        finally:
            s.close()
    t = threading.Thread(target=answer)
    t.start()
    return t


def test_cli_reload_prints_the_schedulers_answer(env, capsys):
    cfg, store = env
    t = answering(store.path, {"ok": True, "source": str(cfg), "version": "3f2a9c1b7d0e", "message":
                               "clouds added: extra", "reset_overrides": False})
    assert admin("--reload", "-C", "new cloud extra") == 0
    t.join()
    assert capsys.readouterr().out.strip() == f"reloaded {cfg} version 3f2a9c1b7d0e: clouds added: extra"
    req = reload.pending(store, 0)
    # the operator's reason travels with the request, into the scheduler's event
    assert req["actor"] == 'cloud_admin: "new cloud extra"' and req["reset_overrides"] is False


def test_cli_reload_needs_a_comment(env, capsys):
    with pytest.raises(SystemExit) as e:
        cloud_admin.main(["--reload"])
    assert e.value.code == 2 and "--comment" in capsys.readouterr().err


def test_cli_reload_reset_overrides_and_json(env, capsys):
    cfg, store = env
    t = answering(store.path, {"ok": True, "source": str(cfg), "version": "v", "message": "no change",
                               "reset_overrides": True})
    assert admin("--reload", "--reset-overrides", "--json", "-C", "test") == 0
    t.join()
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"reload", "scheduler"} and out["reload"]["reset_overrides"] is True
    assert reload.pending(store, 0)["reset_overrides"] is True


def test_cli_reload_refused_by_the_scheduler_exits_4(env, capsys):
    _, store = env
    t = answering(store.path, {"ok": False, "error": "cloud x: cannot set up its driver", "version": "v"})
    assert admin("--reload", "-C", "test") == 4
    t.join()
    err = capsys.readouterr().err
    assert err.strip() == ("cloud_admin: reload refused, the running configuration stays (version v): "
                           "cloud x: cannot set up its driver")


def test_cli_reload_of_an_invalid_file_is_one_line_and_asks_nothing(env, capsys):
    cfg, store = env
    cfg.write_text(BAD)
    assert admin("--reload", "-C", "test") == 4
    err = capsys.readouterr().err.strip()
    assert f": configuration error: {cfg}: clouds[0].max_workers" in err and "\n" not in err
    assert reload.pending(store, 0) is None


def test_cli_reload_without_a_running_scheduler_exits_3(env, capsys):
    _, store = env
    store.put("heartbeat", {"time": time.time() - 3600, "interval": 2})
    assert admin("--reload", "-C", "test") == 3
    assert "did not answer" in capsys.readouterr().err and reload.pending(store, 0) is not None


def test_reset_overrides_only_goes_with_reload(env, capsys):
    with pytest.raises(SystemExit) as e:
        cloud_admin.main(["--reset-overrides", "-e", "local", "-C", "x"])
    assert e.value.code == 2 and "--reset-overrides only goes with --reload" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cloud_admin.main(["--reload", "-e", "local"])
    assert e.value.code == 2


def test_cli_and_status_show_the_active_configuration_not_the_edited_file(env, capsys):
    cfg, store = env
    cfg.write_text(TWO)          # edited, not reloaded
    assert run(cloud_status.main, []) == 0
    out = capsys.readouterr().out
    assert "extra" not in out
    assert out.strip().splitlines()[-1].startswith(f"configuration: {cfg} version {reload.version_of(ONE)}, loaded ")
    assert run(cloud_status.main, ["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"scheduler", "data", "config"} and [c["name"] for c in data["data"]] == ["local"]
    assert data["config"]["version"] == reload.version_of(ONE) and data["config"]["source"] == str(cfg)
    assert admin("-e", "extra", "-C", "x") == 1          # not a cloud until the file is reloaded


# ------------------------------------------------------------------ the page and the API

@pytest.fixture
def web(tmp_path, monkeypatch):
    from appliance.web import ui

    from .test_web import BASIC, login
    monkeypatch.setattr(ui, "WEB_RELOAD_WAIT", 5.0)
    cfg = tmp_path / "appliance.yaml"
    cfg.write_text(ONE)
    db = str(tmp_path / "state" / "appliance.db")
    store = Store(db)
    store.put("heartbeat", {"time": time.time(), "interval": 2, "duration": 0.01})
    c, text = reload.load_file(str(cfg))
    reload.record_active(store, c, text)
    from appliance.web import create_app
    app = create_app(db_path=db, config_path=str(cfg), state_dir=str(tmp_path), admin_password="unit-test-pw",
                     web_run=str(tmp_path / "run"))
    yield app.test_client(), store, cfg, BASIC, login
    store.close()


def test_api_reload_asks_and_returns_the_answer(web):
    c, store, cfg, basic, _ = web
    t = answering(store.path, {"ok": True, "source": str(cfg), "version": "v2", "message": "no change"})
    r = c.post("/api/reload", json={"reset_overrides": True}, headers=basic)
    t.join()
    assert r.status_code == 200 and r.json["data"]["version"] == "v2"
    assert reload.pending(store, 0)["reset_overrides"] is True and reload.pending(store, 0)["actor"] == "web API"
    assert c.post("/api/reload", json={"reset_overrides": "yes"}, headers=basic).status_code == 400
    assert c.post("/api/reload", json={"other": 1}, headers=basic).status_code == 400
    assert c.post("/api/reload").status_code == 401
    assert "/api/reload" in c.get("/api/openapi.json").json["paths"]


def test_api_reload_of_an_invalid_file_is_400_and_asks_nothing(web):
    c, store, cfg, basic, _ = web
    cfg.write_text(BAD)
    r = c.post("/api/reload", headers=basic)
    assert r.status_code == 400 and "clouds[0].max_workers" in r.json["config_error"]
    assert reload.pending(store, 0) is None
    # the running configuration still serves the page and the API
    assert c.get("/api/clouds", headers=basic).status_code == 200
    assert c.get("/healthz").status_code == 200


def test_the_page_shows_the_active_version_and_its_reload_button_needs_csrf(web):
    c, store, cfg, _, login = web
    token = login(c)
    page = c.get("/").text
    assert reload.version_of(ONE) in page and "Reload configuration" in page
    fetch = {"X-Requested-With": "fetch"}
    assert c.post("/config/reload", headers=fetch).status_code == 403
    t = answering(store.path, {"ok": True, "source": str(cfg), "version": "v2", "message": "clouds added: x"})
    r = c.post("/config/reload", data={"csrf_token": token}, headers=fetch)
    t.join()
    assert r.status_code == 200 and r.json["message"] == f"reloaded {cfg} version v2: clouds added: x"
