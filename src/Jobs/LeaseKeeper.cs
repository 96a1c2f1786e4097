namespace InterpMesh.Jobs;

/// <summary>
/// Keeps a worker's lease while its job runs: heartbeats every third of the lease's duration, and
/// cancels <see cref="Stopping"/> when the job's cancellation is requested or the lease is lost, so
/// the run stops (and, when lost, does not complete). A heartbeat that fails (the database is
/// unreachable) is retried at the next beat; once a whole lease duration has passed without one,
/// the lease counts as lost, since another worker may by then have taken the job.
/// </summary>
public sealed class LeaseKeeper : IAsyncDisposable
{
    private readonly IJobQueue queue;
    private readonly JobLease lease;
    private readonly CancellationTokenSource stopping = new();
    private readonly CancellationTokenSource disposed = new();
    private readonly Task loop;
    private int status = (int)LeaseStatus.Held;

    private LeaseKeeper(IJobQueue queue, JobLease lease)
    {
        this.queue = queue;
        this.lease = lease;
        loop = Task.Run(BeatAsync);
    }

    /// <summary>Starts heartbeating <paramref name="lease"/> in the background.</summary>
    public static LeaseKeeper Start(IJobQueue queue, JobLease lease)
    {
        ArgumentNullException.ThrowIfNull(queue);
        ArgumentNullException.ThrowIfNull(lease);
        return new LeaseKeeper(queue, lease);
    }

    /// <summary>Cancelled when the run should stop: <see cref="Status"/> says whether it was cancelled or lost.</summary>
    public CancellationToken Stopping => stopping.Token;

    /// <summary><see cref="LeaseStatus.Held"/> until the job's cancellation is requested or the lease is lost.</summary>
    public LeaseStatus Status => (LeaseStatus)Volatile.Read(ref status);

    /// <summary>The last heartbeat's failure, if the most recent one failed.</summary>
    public Exception? LastError { get; private set; }

    private async Task BeatAsync()
    {
        var interval = lease.Duration / 3;
        var lastHeld = DateTimeOffset.UtcNow;
        try
        {
            while (true)
            {
                await Task.Delay(interval, disposed.Token);
                LeaseStatus beat;
                try
                {
                    beat = await queue.HeartbeatAsync(lease, disposed.Token);
                    LastError = null;
                    lastHeld = DateTimeOffset.UtcNow;
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    LastError = e;
                    if (DateTimeOffset.UtcNow - lastHeld < lease.Duration)
                        continue;
                    beat = LeaseStatus.Lost;
                }
                if (beat != LeaseStatus.Held)
                {
                    Volatile.Write(ref status, (int)beat);
                    await stopping.CancelAsync();
                    if (beat == LeaseStatus.Lost)
                        return;
                }
            }
        }
        catch (OperationCanceledException) when (disposed.IsCancellationRequested)
        {
        }
    }

    public async ValueTask DisposeAsync()
    {
        await disposed.CancelAsync();
        await loop;
        disposed.Dispose();
        stopping.Dispose();
    }
}
