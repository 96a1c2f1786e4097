-- Jobs, their events and the round-robin state per key. Times are Unix milliseconds (UTC) from
-- the writer's clock, the same in both stores.
CREATE TABLE jobs (
    seq              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               text NOT NULL UNIQUE,
    owner            text NOT NULL,
    plugin           text NOT NULL,
    model            text NOT NULL,
    parameters_json  text NOT NULL,
    timeout_seconds  integer NOT NULL,
    trace_parent     text NOT NULL,
    state            text NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    created_ms       bigint NOT NULL,
    started_ms       bigint NULL,
    finished_ms      bigint NULL,
    progress         double precision NOT NULL DEFAULT 0,
    message          text NOT NULL DEFAULT '',
    error            text NOT NULL DEFAULT '',
    error_code       text NOT NULL DEFAULT '',
    result_json      text NULL,
    attempts         integer NOT NULL DEFAULT 0,
    worker_id        text NULL,
    lease_token      text NULL,
    lease_expires_ms bigint NULL,
    lease_ms         bigint NULL,
    cancel_requested integer NOT NULL DEFAULT 0,
    cancelled_by     text NULL,
    event_seq        bigint NOT NULL DEFAULT 0
);
CREATE INDEX jobs_owner_state ON jobs (owner, state, seq);
CREATE INDEX jobs_state_lease ON jobs (state, lease_expires_ms);
CREATE INDEX jobs_finished ON jobs (finished_ms) WHERE finished_ms IS NOT NULL;

CREATE TABLE job_events (
    job_id   text NOT NULL,
    seq      bigint NOT NULL,
    time_ms  bigint NOT NULL,
    kind     text NOT NULL,
    state    text NOT NULL,
    progress double precision NOT NULL,
    message  text NOT NULL,
    PRIMARY KEY (job_id, seq)
);

-- One row per key that has submitted: the take counter value when it was last served (0 = never).
-- Take locks the row, so a key's running limit holds across workers.
CREATE TABLE job_owners (
    owner     text PRIMARY KEY,
    last_take bigint NOT NULL DEFAULT 0
);
