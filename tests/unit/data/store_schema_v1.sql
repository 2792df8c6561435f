-- The store schema of the releases before schema versions (PRAGMA user_version 0),
-- copied verbatim from appliance/store.py. Frozen: a fixture for the migration tests.
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    cloud TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    state_since REAL NOT NULL,
    resource_id TEXT NOT NULL DEFAULT '',
    condor_name TEXT NOT NULL DEFAULT '',
    last_seen REAL NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS workers_state ON workers(state);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    worker_id TEXT,
    cloud TEXT,
    from_state TEXT,
    to_state TEXT,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cloud_settings (
    name TEXT PRIMARY KEY,
    enabled INTEGER,
    max_workers INTEGER,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cloud_health (
    name TEXT PRIMARY KEY,
    backoff_until REAL NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    last_error_at REAL NOT NULL DEFAULT 0,
    breaker_open INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    worker_id TEXT NOT NULL,
    now INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL
);
