namespace InterpMesh.Jobs;

/// <summary>
/// The worker's side: take the next job under a lease, keep the lease by heartbeats, publish
/// progress, complete. A lease that is not renewed in time expires: the job goes back to the queue
/// (its attempt count kept) or, after <see cref="JobStoreOptions.MaxAttempts"/> takes, fails.
/// </summary>
public interface IJobQueue
{
    /// <summary>
    /// Re-queues expired leases, then takes the next job fairly: the key served least recently
    /// first (round-robin over keys with queued jobs, not FIFO over everyone), skipping keys that
    /// already run their limit (<see cref="JobStoreOptions.MaxRunningPerOwner"/>, or their own from
    /// <see cref="IJobStore.SetRunningLimitAsync"/>); that key's oldest job.
    /// Null when nothing can be taken now.
    /// </summary>
    Task<JobLease?> TakeAsync(string workerId, TimeSpan leaseDuration, CancellationToken cancellationToken = default);

    /// <summary>Extends the lease by its duration from now, and says whether cancellation was requested or the lease is lost.</summary>
    Task<LeaseStatus> HeartbeatAsync(JobLease lease, CancellationToken cancellationToken = default);

    /// <summary>Records progress (a fraction 0–1 and a message) as an event; also extends the lease.</summary>
    Task<LeaseStatus> ReportProgressAsync(JobLease lease, double fraction, string message, CancellationToken cancellationToken = default);

    /// <summary>Appends a log line to the job's events.</summary>
    Task<LeaseStatus> AppendLogAsync(JobLease lease, string message, CancellationToken cancellationToken = default);

    /// <summary>
    /// Adds what the run used since the last report to the job and to its key's totals. Recorded
    /// even when the lease is lost (the resources were spent); the returned status says whether it is.
    /// </summary>
    Task<LeaseStatus> RecordUsageAsync(JobLease lease, JobUsage used, CancellationToken cancellationToken = default);

    /// <summary>Ends the run; false (and nothing written) if the lease was lost, so a run re-queued elsewhere is never completed twice.</summary>
    Task<bool> CompleteAsync(JobLease lease, JobOutcome outcome, CancellationToken cancellationToken = default);

    /// <summary>
    /// Hands a running job back to the queue (a worker shutting down): it is QUEUED again at once for
    /// any worker, its take not counted against <see cref="JobStoreOptions.MaxAttempts"/>; a job whose
    /// cancellation was requested ends CANCELLED instead. False (nothing written) if the lease was lost.
    /// </summary>
    Task<bool> ReleaseAsync(JobLease lease, string reason, CancellationToken cancellationToken = default);

    /// <summary>Re-queues (or fails, after the last attempt; or cancels, if requested) running jobs whose lease expired; returns how many. <see cref="TakeAsync"/> does this first.</summary>
    Task<int> RequeueExpiredAsync(CancellationToken cancellationToken = default);
}
