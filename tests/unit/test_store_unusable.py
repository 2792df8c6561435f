"""A state file that is not a usable appliance database is refused at open with a clear
error, and left exactly as it was: never reset, never "repaired", never half-migrated."""
import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from appliance.cli import cloud_status
from appliance.cli.common import run
from appliance.store import SCHEMA_VERSION, SchemaTooNew, Store, StoreError, StoreUnusable


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def siblings(path) -> list[str]:
    return sorted(p.name for p in Path(path).parent.iterdir())


def refused(path, *expect: str) -> StoreUnusable:
    """Open `path`, expect StoreUnusable saying `expect`, and check that nothing was written."""
    before = (digest(path), siblings(path))
    with pytest.raises(StoreUnusable) as err:
        Store(str(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}: "), msg
    for text in expect:
        assert text in msg, msg
    assert "left unchanged" in msg and "move it aside" in msg and "empty state" in msg, msg
    assert "orphans" in msg, msg
    assert "\n" not in msg and len(msg) < 1000, msg
    assert (digest(path), siblings(path)) == before      # no byte changed, no -wal/-shm/-journal left
    assert err.value.path == str(path) and err.value.problem in msg
    return err.value


def full_db(path, events: int = 3000) -> None:
    """A real appliance database of several pages, everything checkpointed into the main file."""
    s = Store(str(path))
    with s.tx() as db:
        for i in range(events):
            s._event(db, float(i), "worker", "a reason of some length " * 3, f"w{i % 50}", "local", "idle", "busy")
    s.put("demand", [{"count": 3}])
    s.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    s.close()
    for extra in ("-wal", "-shm"):
        assert not os.path.exists(f"{path}{extra}")


# ------------------------------------------------------------ not SQLite at all

@pytest.mark.parametrize("content", [os.urandom(8192), b"appliance state\n" * 100, b"SQLite format 3\x00" + b"\xff" * 200],
                         ids=["random", "text", "bad-header"])
def test_garbage_bytes_are_refused(tmp_path, content):
    path = tmp_path / "appliance.db"
    path.write_bytes(content)
    e = refused(path)
    assert "not an SQLite database" in e.problem or "damaged" in e.problem, e.problem


# ------------------------------------------------------------ damaged

@pytest.mark.parametrize("keep", [50, 4096, 0.5, -4096], ids=["header-cut", "first-page", "half", "last-page-missing"])
def test_a_truncated_database_is_refused(tmp_path, keep):
    path = tmp_path / "appliance.db"
    full_db(path)
    size = path.stat().st_size
    assert size > 5 * 4096
    cut = int(size * keep) if isinstance(keep, float) else keep if keep > 0 else size + keep
    with open(path, "r+b") as f:
        f.truncate(cut)
    e = refused(path, "damaged")
    assert "truncated" in e.problem or "SQLite's check" in e.problem, e.problem


def test_overwritten_pages_are_found_by_the_check(tmp_path):
    """Damage the first reads would not meet (a page in the middle of the events) is still found."""
    path = tmp_path / "appliance.db"
    full_db(path)
    s = Store(str(path))
    assert s.events(limit=1)                  # the file was fine
    s.close()
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(b"\x07" * 4096)
    refused(path, "damaged")


# ------------------------------------------------------------ another program's database

def foreign(path, script: str, version: int = 0, wal: bool = False) -> None:
    db = sqlite3.connect(path)
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
    db.executescript(script)
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    if wal:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def test_a_foreign_workers_table_is_refused_by_its_columns(tmp_path):
    path = tmp_path / "appliance.db"
    foreign(path, "CREATE TABLE workers (name TEXT, salary INTEGER); INSERT INTO workers VALUES ('ann', 3);"
                  "CREATE TABLE events (id INTEGER PRIMARY KEY, what TEXT)")
    e = refused(path, "table", "another program's database")
    assert "name, salary" in e.problem and "cloud, condor_name" in e.problem, e.problem
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"      # not switched to WAL
    assert [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["workers", "events"]
    db.close()


def test_a_database_with_none_of_our_tables_is_refused(tmp_path):
    path = tmp_path / "appliance.db"
    foreign(path, "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT); CREATE TABLE posts (id, body)", wal=True)
    refused(path, "none of the appliance's tables", "posts, users")


def test_a_versioned_file_missing_a_table_is_refused(tmp_path):
    path = tmp_path / "appliance.db"
    Store(str(path)).close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE transition_counts")
    db.commit()
    db.close()
    refused(path, "transition_counts", "missing")


def test_a_foreign_database_that_uses_user_version_too_is_refused(tmp_path):
    path = tmp_path / "appliance.db"
    foreign(path, "CREATE TABLE workers (id TEXT PRIMARY KEY, payload BLOB)", version=2)
    refused(path, "table workers has the columns id, payload")
    foreign(path2 := tmp_path / "negative.db", "CREATE TABLE t (x)", version=-5)
    refused(path2, "schema version is -5")


def test_a_column_changed_by_hand_is_refused(tmp_path):
    path = tmp_path / "appliance.db"
    Store(str(path)).close()
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE cloud_settings ADD COLUMN note TEXT")
    db.commit()
    db.close()
    refused(path, "cloud_settings", "note", "changed by hand")


# ------------------------------------------------------------ not a file

def test_a_directory_in_its_place_is_refused(tmp_path):
    path = tmp_path / "state" / "appliance.db"
    path.mkdir(parents=True)
    (path / "something").write_text("x")
    with pytest.raises(StoreUnusable, match="is a directory") as err:
        Store(str(path))
    assert "move it aside" in str(err.value)
    assert sorted(p.name for p in path.iterdir()) == ["something"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["appliance.db"]


def test_a_fifo_in_its_place_is_refused(tmp_path):
    path = tmp_path / "appliance.db"
    os.mkfifo(path)
    with pytest.raises(StoreUnusable, match="not a regular file"):
        Store(str(path))


# ------------------------------------------------------------ what is still accepted

def test_new_empty_and_extended_files_still_open(tmp_path):
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")                    # what _group_writable creates on a new install
    Store(str(empty)).close()
    path = tmp_path / "appliance.db"
    full_db(path, events=10)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE operator_notes (note TEXT)")     # an operator's own table is left alone
    db.execute("ANALYZE")                                      # SQLite's own tables (sqlite_stat1)
    db.commit()
    db.close()
    s = Store(str(path))
    assert s.get("demand")[0] == [{"count": 3}]
    s.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'operator_notes'").fetchone()[0] == 1
    db.close()


def test_the_store_errors_are_database_errors(tmp_path):
    """So callers that report database errors already (the CLIs) report these too."""
    assert issubclass(StoreUnusable, StoreError) and issubclass(SchemaTooNew, StoreError)
    assert issubclass(StoreError, sqlite3.DatabaseError)


def test_cloud_status_reports_an_unusable_file_and_exits_4(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "appliance.yaml"
    cfg.write_text("clouds: [{name: local, type: local}]\n")
    path = tmp_path / "appliance.db"
    path.write_bytes(os.urandom(4096))
    monkeypatch.setenv("APPLIANCE_CONFIG", str(cfg))
    monkeypatch.setenv("APPLIANCE_DB", str(path))
    assert run(cloud_status.main, []) == 4
    err = capsys.readouterr().err
    assert "cannot open the appliance state" in err and "not an SQLite database" in err and "move it aside" in err
    assert "Traceback" not in err

    db = sqlite3.connect(path2 := tmp_path / "newer.db")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    monkeypatch.setenv("APPLIANCE_DB", str(path2))
    assert run(cloud_status.main, []) == 4
    assert f"schema version {SCHEMA_VERSION + 1} is newer" in capsys.readouterr().err
