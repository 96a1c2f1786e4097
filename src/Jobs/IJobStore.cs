namespace InterpMesh.Jobs;

/// <summary>
/// Job records and their events, shared by every gateway replica and worker: what the public API
/// (RunAnalysis, GetJob, ListJobs, WatchJob, CancelJob) reads and writes. Workers take and finish
/// jobs through <see cref="IJobQueue"/>, usually the same object.
/// </summary>
public interface IJobStore
{
    /// <summary>Stores a new QUEUED job (its first event says so); refuses bad input and exceeded <paramref name="limits"/>.</summary>
    Task<JobInfo> SubmitAsync(NewJob job, SubmitLimits? limits = null, CancellationToken cancellationToken = default);

    /// <summary>The job; NotFound if there is none, PermissionDenied if it is another key's and the caller is no admin.</summary>
    Task<JobInfo> GetAsync(string id, JobCaller caller, CancellationToken cancellationToken = default);

    /// <summary>Jobs newest first, a page at a time; a non-admin sees only its own.</summary>
    Task<JobPage> ListAsync(JobListQuery query, CancellationToken cancellationToken = default);

    /// <summary>The job's events with a sequence number above <paramref name="afterSequence"/>, oldest first, at most <paramref name="max"/>.</summary>
    Task<IReadOnlyList<JobEventRecord>> ReadEventsAsync(string id, JobCaller caller, long afterSequence, int max = JobStoreLimits.MaxEventsPerRead, CancellationToken cancellationToken = default);

    /// <summary>
    /// Cancels a job (its owner or an admin): a queued job ends CANCELLED at once; a running one is
    /// marked, its worker learns it at the next heartbeat and completes it as cancelled. A final job
    /// is returned unchanged.
    /// </summary>
    Task<JobInfo> CancelAsync(string id, JobCaller caller, CancellationToken cancellationToken = default);

    /// <summary>Deletes final jobs (and their events) that finished before <paramref name="finishedBefore"/> or are beyond the newest <paramref name="keepNewest"/> final ones; returns how many.</summary>
    Task<int> PruneAsync(DateTimeOffset finishedBefore, int keepNewest, CancellationToken cancellationToken = default);

    /// <summary>
    /// Sets how many jobs one key may run at once on all workers together, in place of
    /// <see cref="JobStoreOptions.MaxRunningPerOwner"/>; null returns the key to that default.
    /// Stored in the database, so every worker's take applies it.
    /// </summary>
    Task SetRunningLimitAsync(string owner, int? maxRunning, CancellationToken cancellationToken = default);

    /// <summary>Every key's totals (jobs submitted, model calls, tokens, model time), for per-key metrics.</summary>
    Task<IReadOnlyList<KeyUsage>> UsageAsync(CancellationToken cancellationToken = default);

    /// <summary>Queued and running jobs over all keys.</summary>
    Task<JobCounts> CountAsync(CancellationToken cancellationToken = default);
}
