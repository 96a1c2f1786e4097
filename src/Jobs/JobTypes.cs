namespace InterpMesh.Jobs;

/// <summary>Where a job is in its life. Queued and running jobs are active; the other three are final.</summary>
public enum JobState
{
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// <summary>What a job event says: a state change (taken, re-queued, finished), progress, or a log line.</summary>
public enum JobEventKind
{
    State,
    Progress,
    Log,
}

/// <summary>A job to submit: who asks, which plugin on which model, with which parameters.</summary>
/// <param name="Owner">The API key's name that submits the job; it alone (and admins) may read or cancel it.</param>
/// <param name="ParametersJson">The plugin's parameters, a JSON object.</param>
/// <param name="TimeoutSeconds">The run's time limit for the worker; 0 means the worker's default.</param>
/// <param name="TraceParent">W3C traceparent of the submitting call, so the run joins its trace ("" for none).</param>
public sealed record NewJob(string Owner, string Plugin, string Model, string ParametersJson, int TimeoutSeconds = 0, string TraceParent = "");

/// <summary>A job's stored record.</summary>
public sealed record JobInfo
{
    public required string Id { get; init; }
    public required string Owner { get; init; }
    public required string Plugin { get; init; }
    public required string Model { get; init; }
    public required string ParametersJson { get; init; }
    public int TimeoutSeconds { get; init; }
    public string TraceParent { get; init; } = "";
    public JobState State { get; init; }
    public DateTimeOffset Created { get; init; }
    public DateTimeOffset? Started { get; init; }
    public DateTimeOffset? Finished { get; init; }
    public double Progress { get; init; }
    public string Message { get; init; } = "";
    public string Error { get; init; } = "";
    /// <summary>A gRPC status name for a failed or cancelled job (INVALID_ARGUMENT, CANCELLED, …), else "".</summary>
    public string ErrorCode { get; init; } = "";
    /// <summary>The plugin's result as the worker serialised it (opaque to the store), null until success.</summary>
    public string? ResultJson { get; init; }
    /// <summary>How many times a worker has taken the job (1 on its first run); a take handed back by <see cref="IJobQueue.ReleaseAsync"/> is not counted.</summary>
    public int Attempts { get; init; }
    /// <summary>The worker that holds the lease, or last held it (null until first taken).</summary>
    public string? WorkerId { get; init; }
    public DateTimeOffset? LeaseExpires { get; init; }
    public bool CancelRequested { get; init; }
    public string? CancelledBy { get; init; }
    /// <summary>What the run used so far, as its workers reported it (<see cref="IJobQueue.RecordUsageAsync"/>).</summary>
    public JobUsage Usage { get; init; } = JobUsage.None;

    /// <summary>The sequence number of the job's last event (its events are numbered 1, 2, … per job).</summary>
    public long LastEventSequence { get; init; }

    public bool IsFinal => JobStates.IsFinal(State);
}

public static class JobStates
{
    public static bool IsFinal(JobState state) => state is JobState.Succeeded or JobState.Failed or JobState.Cancelled;

    /// <summary>The name stored in the database ("queued", "running", …).</summary>
    public static string ToStored(JobState state) => state switch
    {
        JobState.Queued => "queued",
        JobState.Running => "running",
        JobState.Succeeded => "succeeded",
        JobState.Failed => "failed",
        JobState.Cancelled => "cancelled",
        _ => throw new ArgumentOutOfRangeException(nameof(state), state, "not a job state"),
    };

    public static JobState FromStored(string stored) => stored switch
    {
        "queued" => JobState.Queued,
        "running" => JobState.Running,
        "succeeded" => JobState.Succeeded,
        "failed" => JobState.Failed,
        "cancelled" => JobState.Cancelled,
        _ => throw new InvalidDataException($"the job store holds an unknown job state '{stored}'; was the database written by a newer InterpMesh?"),
    };
}

/// <summary>One event of a job, numbered from 1 per job; WatchJob reads those after the last it sent.</summary>
public sealed record JobEventRecord(string JobId, long Sequence, DateTimeOffset Time, JobEventKind Kind, JobState State, double Progress, string Message);

/// <summary>Who is asking: a key's name and whether it holds the admin role (admins see and cancel every job).</summary>
public sealed record JobCaller(string Name, bool IsAdmin)
{
    public bool MayAccess(string owner) => IsAdmin || string.Equals(owner, Name, StringComparison.Ordinal);
}

/// <summary>A ListJobs request: the caller (a non-admin sees only its own jobs), optional filters and a page.</summary>
/// <param name="PageSize">1 to <see cref="JobStoreLimits.MaxPageSize"/>; 0 means <see cref="JobStoreLimits.DefaultPageSize"/>.</param>
/// <param name="PageToken">"" for the first page, else the previous page's <see cref="JobPage.NextPageToken"/>.</param>
/// <param name="Owner">An admin may list one key's jobs ("" for all); a non-admin may name only itself.</param>
public sealed record JobListQuery(JobCaller Caller, int PageSize = 0, string PageToken = "", string Plugin = "", string Owner = "");

/// <summary>One page of jobs, newest first; <see cref="NextPageToken"/> is "" on the last page.</summary>
public sealed record JobPage(IReadOnlyList<JobInfo> Jobs, string NextPageToken);

/// <summary>A worker's hold on a running job: it must heartbeat before <see cref="Expires"/> or lose it.</summary>
/// <param name="Token">Identifies this take of the job; a re-queued and re-taken job has a new one.</param>
public sealed record JobLease(JobInfo Job, string WorkerId, string Token, DateTimeOffset Expires, TimeSpan Duration);

/// <summary>What a heartbeat or a progress report learns about the lease.</summary>
public enum LeaseStatus
{
    /// <summary>The lease is held and was extended.</summary>
    Held,
    /// <summary>The lease is held and extended, but the job's cancellation was requested: stop and complete it as cancelled.</summary>
    CancelRequested,
    /// <summary>The lease is gone (it expired and the job was re-queued, or the job ended): stop without completing.</summary>
    Lost,
}

/// <summary>How a run ended, as its worker reports it.</summary>
public sealed record JobOutcome
{
    private JobOutcome(JobState state, string? resultJson, string error, string errorCode)
    {
        State = state;
        ResultJson = resultJson;
        Error = error;
        ErrorCode = errorCode;
    }

    public JobState State { get; }
    public string? ResultJson { get; }
    public string Error { get; }
    public string ErrorCode { get; }

    public static JobOutcome Succeeded(string resultJson) =>
        new(JobState.Succeeded, resultJson ?? throw new ArgumentNullException(nameof(resultJson), "a succeeded job needs its result"), "", "");

    public static JobOutcome Failed(string error, string errorCode) =>
        new(JobState.Failed, null, RequireText(error, nameof(error)), RequireText(errorCode, nameof(errorCode)));

    public static JobOutcome Cancelled(string error) => new(JobState.Cancelled, null, RequireText(error, nameof(error)), "CANCELLED");

    private static string RequireText(string value, string name) =>
        string.IsNullOrWhiteSpace(value) ? throw new ArgumentException($"{name} must say what happened", name) : value;
}

/// <summary>Resources a run used: model calls, tokens through the model, and time the model spent on them.</summary>
public sealed record JobUsage(long ModelCalls, long Tokens, TimeSpan ModelTime)
{
    public static readonly JobUsage None = new(0, 0, TimeSpan.Zero);
}

/// <summary>One key's totals over all its jobs, kept when jobs are pruned: what metrics export per key.</summary>
public sealed record KeyUsage(string Owner, long JobsSubmitted, JobUsage Usage);

/// <summary>Counts for metrics and autoscaling (queue depth).</summary>
public sealed record JobCounts(long Queued, long Running);

/// <summary>Submission quotas, checked atomically with the insert so they hold across every gateway replica.</summary>
/// <param name="MaxActivePerOwner">Queued plus running jobs one key may have; 0 for no limit.</param>
/// <param name="MaxQueued">Queued jobs over all keys; 0 for no limit.</param>
public sealed record SubmitLimits(int MaxActivePerOwner = 0, int MaxQueued = 0);

public static class JobStoreLimits
{
    public const int DefaultPageSize = 50;
    public const int MaxPageSize = 500;
    public const int MaxEventsPerRead = 1000;
}
