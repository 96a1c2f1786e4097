-- Usage accounting: per job and running totals per key (SQLite adds one column per statement).
ALTER TABLE jobs ADD COLUMN model_calls INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN model_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE job_owners ADD COLUMN jobs_submitted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE job_owners ADD COLUMN model_calls INTEGER NOT NULL DEFAULT 0;
ALTER TABLE job_owners ADD COLUMN tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE job_owners ADD COLUMN model_ms INTEGER NOT NULL DEFAULT 0;
