using InterpMesh.AnalysisWorker.Configuration;
using Microsoft.Extensions.Options;

namespace InterpMesh.AnalysisWorker.Hosting;

/// <summary>
/// Stops this worker's process when a plugin cannot be stopped (<c>Worker:RecycleStuckPlugins</c>):
/// its task keeps a thread, CPU and memory that only a new process gets back. Recycling cancels
/// <see cref="Recycling"/> (the take loops stop taking; running jobs are cancelled and, as on any
/// stop, released back to the queue for another worker), sets the process exit code to
/// <see cref="AnalysisWorkerApp.RecycleExitCode"/> and stops the application, so that its
/// supervisor (Kubernetes' restartPolicy Always, systemd's Restart=on-failure) starts a clean one.
/// </summary>
public sealed class WorkerRecycler(IOptions<WorkerOptions> options, IHostApplicationLifetime lifetime, ILogger<WorkerRecycler> logger) : IDisposable
{
    private readonly CancellationTokenSource recycling = new();
    private int requested;

    /// <summary>Cancelled once this worker is being recycled.</summary>
    public CancellationToken Recycling => recycling.Token;

    /// <summary>Whether a stuck plugin made this worker stop.</summary>
    public bool Requested => Volatile.Read(ref requested) != 0;

    /// <summary>Recycles the process for <paramref name="plugin"/>'s stuck run of <paramref name="jobId"/>; false when <c>Worker:RecycleStuckPlugins</c> is off.</summary>
    public bool Recycle(string plugin, string jobId)
    {
        if (!options.Value.RecycleStuckPlugins)
            return false;
        if (Interlocked.Exchange(ref requested, 1) != 0)
            return true;
        logger.LogError("Plugin {Plugin} ignored cancellation of job {Job} for {Grace} s and cannot be stopped inside this process: the worker takes no more jobs, puts its running jobs back in the queue and exits with code {Code} to be restarted clean (Worker:RecycleStuckPlugins)",
            plugin, jobId, Jobs.JobWorker.StopGrace.TotalSeconds, AnalysisWorkerApp.RecycleExitCode);
        Environment.ExitCode = AnalysisWorkerApp.RecycleExitCode;
        recycling.Cancel();
        lifetime.StopApplication();
        return true;
    }

    public void Dispose() => recycling.Dispose();
}

/// <summary>This worker's id in leases and in the published plugin catalog: machine, process and a random suffix.</summary>
public sealed class WorkerIdentity
{
    public string Id { get; } = $"{Environment.MachineName}/{Environment.ProcessId}/{Guid.NewGuid().ToString("N")[..6]}";
}
