-- Jobs, their events and the round-robin state per key (the PostgreSQL schema in SQLite's types).
-- Times are Unix milliseconds (UTC).
CREATE TABLE jobs (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    owner            TEXT NOT NULL,
    plugin           TEXT NOT NULL,
    model            TEXT NOT NULL,
    parameters_json  TEXT NOT NULL,
    timeout_seconds  INTEGER NOT NULL,
    trace_parent     TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    created_ms       INTEGER NOT NULL,
    started_ms       INTEGER NULL,
    finished_ms      INTEGER NULL,
    progress         REAL NOT NULL DEFAULT 0,
    message          TEXT NOT NULL DEFAULT '',
    error            TEXT NOT NULL DEFAULT '',
    error_code       TEXT NOT NULL DEFAULT '',
    result_json      TEXT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    worker_id        TEXT NULL,
    lease_token      TEXT NULL,
    lease_expires_ms INTEGER NULL,
    lease_ms         INTEGER NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    cancelled_by     TEXT NULL,
    event_seq        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_owner_state ON jobs (owner, state, seq);
CREATE INDEX jobs_state_lease ON jobs (state, lease_expires_ms);
CREATE INDEX jobs_finished ON jobs (finished_ms) WHERE finished_ms IS NOT NULL;

CREATE TABLE job_events (
    job_id   TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    time_ms  INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    state    TEXT NOT NULL,
    progress REAL NOT NULL,
    message  TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE job_owners (
    owner     TEXT PRIMARY KEY,
    last_take INTEGER NOT NULL DEFAULT 0
);
