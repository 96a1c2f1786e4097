-- A key's own running-job limit (NULL: JobStoreOptions.MaxRunningPerOwner).
ALTER TABLE job_owners ADD COLUMN max_running INTEGER NULL CHECK (max_running IS NULL OR max_running > 0);
