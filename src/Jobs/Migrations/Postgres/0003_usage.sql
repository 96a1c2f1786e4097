-- Usage accounting: what each job used (as its worker reports it) and running totals per key,
-- which outlive pruned jobs. Model time in milliseconds.
ALTER TABLE jobs
    ADD COLUMN model_calls bigint NOT NULL DEFAULT 0,
    ADD COLUMN tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN model_ms bigint NOT NULL DEFAULT 0;
ALTER TABLE job_owners
    ADD COLUMN jobs_submitted bigint NOT NULL DEFAULT 0,
    ADD COLUMN model_calls bigint NOT NULL DEFAULT 0,
    ADD COLUMN tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN model_ms bigint NOT NULL DEFAULT 0;
