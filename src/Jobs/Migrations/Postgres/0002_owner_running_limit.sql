-- A key's own running-job limit (NULL: JobStoreOptions.MaxRunningPerOwner), set by an operator
-- through IJobStore.SetRunningLimitAsync and read by every worker's take.
ALTER TABLE job_owners ADD COLUMN max_running integer NULL CHECK (max_running IS NULL OR max_running > 0);
