using System.Collections.Concurrent;

namespace InterpMesh.Gateway.Jobs;

/// <summary>
/// What one process's gateway side tells its own worker without waiting for the store: a job was
/// queued (wake an idle worker now rather than at its next poll), or a job running here was
/// cancelled (stop it now rather than at its next heartbeat). Other replicas learn both through
/// the store; this only shortens the wait.
/// </summary>
public sealed class LocalRuns
{
    private readonly ConcurrentDictionary<string, Run> runs = new(StringComparer.Ordinal);
    private readonly SemaphoreSlim queued = new(0, int.MaxValue);

    /// <summary>One run of this process: its cancellation and who asked for it.</summary>
    public sealed class Run
    {
        internal CancellationTokenSource Cancellation { get; } = new();

        public CancellationToken Token => Cancellation.Token;

        public string? CancelledBy { get; internal set; }
    }

    public void JobQueued()
    {
        if (queued.CurrentCount < 64)
            queued.Release();
    }

    /// <summary>Waits until a job is queued in this process or <paramref name="timeout"/> passes.</summary>
    public Task WaitForJobAsync(TimeSpan timeout, CancellationToken ct) => queued.WaitAsync(timeout, ct);

    public Run Start(string jobId)
    {
        var run = new Run();
        runs[jobId] = run;
        return run;
    }

    public void End(string jobId, Run run)
    {
        runs.TryRemove(new KeyValuePair<string, Run>(jobId, run));
        run.Cancellation.Dispose();
    }

    /// <summary>Stops the run of <paramref name="jobId"/> if it runs in this process.</summary>
    public void Cancel(string jobId, string by)
    {
        if (!runs.TryGetValue(jobId, out var run))
            return;
        run.CancelledBy ??= by;
        try
        {
            run.Cancellation.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // The run ended meanwhile.
        }
    }
}
