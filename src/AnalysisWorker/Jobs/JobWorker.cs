using System.Diagnostics;
using System.Text.Json;
using Grpc.Core;
using InterpMesh.AnalysisWorker.Configuration;
using InterpMesh.AnalysisWorker.Hosting;
using InterpMesh.AnalysisWorker.Models;
using InterpMesh.AnalysisWorker.Plugins;
using InterpMesh.AnalysisWorker.Telemetry;
using InterpMesh.Jobs;
using InterpMesh.Plugins;
using InterpMesh.Routing;
using Microsoft.Extensions.Options;

namespace InterpMesh.AnalysisWorker.Jobs;

/// <summary>
/// The analysis worker: <c>Worker:MaxConcurrentJobs</c> loops, each taking the next job from the
/// shared queue under a lease (fair over keys, see <see cref="IJobQueue.TakeAsync"/>), keeping it with a
/// <see cref="LeaseKeeper"/>, running the plugin with its <see cref="AnalysisContext"/> and model
/// client, publishing progress to the store and completing the job there. Any gateway serves the
/// job's record and events meanwhile; an idle loop looks for work every <c>Worker:Jobs:PollMilliseconds</c>.
/// <para>
/// Stopping: a cancel request (through any gateway, seen at the lease's next heartbeat, every third
/// of <c>Worker:Jobs:LeaseSeconds</c>), the job's time limit, or a lost lease cancel the plugin's
/// token. A plugin that ignores it for <see cref="StopGrace"/> cannot be stopped: a .NET process
/// cannot kill one task. Its job ends (or, when the lease was lost, is left to the worker that has it
/// now); then, with <c>Worker:RecycleStuckPlugins</c> (the default), this worker stops taking jobs,
/// puts its other running jobs back in the queue and stops its process with a non-zero exit code
/// (<see cref="WorkerRecycler"/>) for its supervisor to start a clean one; without it (in-process
/// hosting), the task is abandoned and keeps its thread, CPU and memory until it returns by itself.
/// When the host stops, running jobs go back to the queue (<see cref="IJobQueue.ReleaseAsync"/>) for
/// another worker; a worker that dies instead loses its leases, and its jobs are re-queued when they
/// expire, up to <c>Worker:Jobs:MaxAttempts</c> takes.
/// </para>
/// </summary>
public sealed class JobWorker : BackgroundService
{
    /// <summary>How long a plugin may take to stop after cancellation before it is given up on.</summary>
    public static readonly TimeSpan StopGrace = TimeSpan.FromSeconds(5);

    /// <summary>The time limit of a job queued without one (by a gateway older than the worker host, which stored 0).</summary>
    public static readonly TimeSpan DefaultJobTimeout = TimeSpan.FromHours(1);

    private static readonly TimeSpan CountEvery = TimeSpan.FromSeconds(5);

    private readonly WorkerOptions options;
    private readonly IPluginCatalog catalog;
    private readonly ModelRouter router;
    private readonly PluginArtifacts artifacts;
    private readonly WorkerMetrics metrics;
    private readonly ILoggerFactory loggers;
    private readonly ILogger<JobWorker> logger;
    private readonly IJobQueue queue;
    private readonly IJobStore store;
    private readonly WorkerRecycler recycler;
    private long queued;
    private int running;

    public JobWorker(IOptions<WorkerOptions> options, IPluginCatalog catalog, ModelRouter router, PluginArtifacts artifacts, WorkerMetrics metrics,
        ILoggerFactory loggers, IJobQueue queue, IJobStore store, WorkerRecycler recycler, WorkerIdentity identity)
    {
        this.options = options.Value;
        this.catalog = catalog;
        this.router = router;
        this.artifacts = artifacts;
        this.metrics = metrics;
        this.loggers = loggers;
        this.queue = queue;
        this.store = store;
        this.recycler = recycler;
        logger = loggers.CreateLogger<JobWorker>();
        WorkerId = identity.Id;
        // Queued: over every worker (the store's count, refreshed every few seconds); running: this worker's.
        metrics.ObserveJobs(() => Volatile.Read(ref queued), () => Volatile.Read(ref running));
    }

    /// <summary>Recorded with each lease: the machine, process and this worker.</summary>
    public string WorkerId { get; }

    private TimeSpan Lease => TimeSpan.FromSeconds(options.Jobs.LeaseSeconds);

    private TimeSpan Poll => TimeSpan.FromMilliseconds(options.Jobs.PollMilliseconds);

    protected override Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var counting = Task.Run(() => CountAsync(stoppingToken), CancellationToken.None);
        return Task.WhenAll(Enumerable.Range(0, options.MaxConcurrentJobs).Select(_ => Task.Run(() => TakeLoopAsync(stoppingToken), CancellationToken.None))
            .Append(counting));
    }

    private async Task TakeLoopAsync(CancellationToken stopping)
    {
        // A worker being recycled takes nothing more, even before its host stops.
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(stopping, recycler.Recycling);
        var ct = linked.Token;
        while (!ct.IsCancellationRequested)
        {
            try
            {
                var lease = await queue.TakeAsync(WorkerId, Lease, ct);
                if (lease is null)
                {
                    await Task.Delay(Poll, ct);
                    continue;
                }
                Interlocked.Increment(ref running);
                try
                {
                    await RunAsync(lease, ct);
                }
                finally
                {
                    Interlocked.Decrement(ref running);
                }
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e)
            {
                // The store unreachable: keep trying, slowly; jobs wait in the queue meanwhile.
                logger.LogWarning("Worker {Worker} could not take or finish a job: {Message}", WorkerId, e.Message);
                try
                {
                    await Task.Delay(Poll * 4, ct);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }
        }
    }

    /// <summary>The store's queued count, for <c>interpmesh.jobs.queued</c> (what an autoscaler of workers reads).</summary>
    private async Task CountAsync(CancellationToken stopping)
    {
        while (!stopping.IsCancellationRequested)
        {
            try
            {
                Volatile.Write(ref queued, (await store.CountAsync(stopping)).Queued);
            }
            catch (OperationCanceledException) when (stopping.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e)
            {
                logger.LogWarning("Worker {Worker}: the job store's counts could not be read: {Message}", WorkerId, e.Message);
            }
            try
            {
                await Task.Delay(CountEvery, stopping);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    private async Task RunAsync(JobLease lease, CancellationToken stopping)
    {
        var job = lease.Job;
        await using var keeper = LeaseKeeper.Start(queue, lease);
        string outcome = await RunUnderLeaseAsync(lease, keeper, stopping);
        metrics.PluginRuns.Add(1, new KeyValuePair<string, object?>("plugin", job.Plugin), new KeyValuePair<string, object?>("outcome", outcome));
    }

    /// <summary>Runs the plugin and ends the job in the store; returns the outcome for the metric.</summary>
    private async Task<string> RunUnderLeaseAsync(JobLease lease, LeaseKeeper keeper, CancellationToken stopping)
    {
        var job = lease.Job;
        var entry = catalog.Find(job.Plugin);
        if (entry?.Plugin is not { } plugin)
            return await EndAsync(lease, JobOutcome.Failed($"plugin '{job.Plugin}' is not loaded on worker {WorkerId}", "UNAVAILABLE"));
        ReplicaPool pool;
        try
        {
            pool = router.Resolve(job.Model);
        }
        catch (RpcException e)
        {
            return await EndAsync(lease, JobOutcome.Failed($"model '{job.Model}' is not configured on worker {WorkerId} (Worker:Models): {e.Status.Detail}", "UNAVAILABLE"));
        }

        // One trace per analysis: the run joins the submitting call's trace (whichever replica took
        // it), and the plugin's model calls, made inside this span, carry it on to the model services.
        ActivityContext.TryParse(job.TraceParent, null, out var parent);
        using var activity = WorkerTracing.Source.StartActivity("interpmesh.job", ActivityKind.Internal, parent);
        activity?.SetTag("interpmesh.plugin", job.Plugin);
        activity?.SetTag("interpmesh.job_id", job.Id);
        var limit = job.TimeoutSeconds > 0 ? TimeSpan.FromSeconds(job.TimeoutSeconds) : DefaultJobTimeout;
        using var timeout = new CancellationTokenSource(limit);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(keeper.Stopping, timeout.Token, stopping, recycler.Recycling);
        var log = loggers.CreateLogger($"InterpMesh.Plugins.{job.Plugin}");
        using var scope = log.BeginScope(new Dictionary<string, object> { ["JobId"] = job.Id });
        await using var reporter = new JobReporter(queue, lease, logger);
        var model = new MeteredModelClient(new RoutedModelClient(pool, TimeSpan.FromSeconds(options.CallTimeoutSeconds)));
        var context = new AnalysisContext(job.Id, model, artifacts,
            new JobLogger(log, reporter), metrics.PluginMeter, reporter, linked.Token);
        using var parameters = JsonDocument.Parse(job.ParametersJson);
        var task = Task.Run(() => plugin.RunAsync(parameters.RootElement.Clone(), context), CancellationToken.None);

        // Wait for the run, or for cancellation plus a grace period (a plugin may ignore its token).
        var stopped = Task.Delay(Timeout.Infinite, linked.Token).ContinueWith(_ => Task.Delay(StopGrace), TaskScheduler.Default).Unwrap();
        await Task.WhenAny(task, stopped);
        await reporter.FlushAsync();
        await RecordUsageAsync(lease, model.Used);

        bool cancelled = keeper.Status == LeaseStatus.CancelRequested;
        if (keeper.Status == LeaseStatus.Lost)
        {
            // Another worker may hold the job now: this one writes nothing more.
            logger.LogWarning("Worker {Worker} lost its lease on job {Job} ({Error}); the run {State}", WorkerId, job.Id,
                keeper.LastError?.Message ?? "it expired or the job ended", task.IsCompleted ? "was dropped" : "is given up on");
            if (!task.IsCompleted)
                recycler.Recycle(job.Plugin, job.Id);
            return "lost";
        }
        if (!task.IsCompleted)
        {
            string abandoned = $"the plugin did not stop within {StopGrace.TotalSeconds:0} s of being cancelled and was abandoned";
            string ended;
            if (cancelled)
                ended = await EndAsync(lease, JobOutcome.Cancelled($"{await CancelledByAsync(job.Id)}; {abandoned}"));
            else if (timeout.IsCancellationRequested)
                ended = await EndAsync(lease, JobOutcome.Failed($"exceeded its time limit of {limit.TotalSeconds:0} s; {abandoned}", "DEADLINE_EXCEEDED"));
            else
                ended = await ReleaseAsync(lease);
            if (!recycler.Recycle(job.Plugin, job.Id))
                logger.LogError("Plugin {Plugin} ignored cancellation of job {Job} for {Grace} s; given up on (its task keeps its CPU until it returns; Worker:RecycleStuckPlugins is false)", job.Plugin, job.Id, StopGrace.TotalSeconds);
            return ended;
        }
        if (task.IsCompletedSuccessfully && !cancelled)
            return await EndAsync(lease, ResultMapping.Outcome(job.Plugin, task.Result, options.MaxResultBytes));
        if (linked.IsCancellationRequested)
        {
            if (cancelled)
                return await EndAsync(lease, JobOutcome.Cancelled(await CancelledByAsync(job.Id)));
            if (timeout.IsCancellationRequested)
                return await EndAsync(lease, JobOutcome.Failed($"exceeded its time limit of {limit.TotalSeconds:0} s", "DEADLINE_EXCEEDED"));
            return await ReleaseAsync(lease);
        }
        var error = task.Exception?.InnerException ?? task.Exception;
        switch (error)
        {
            case InvalidParametersException invalid:
                return await EndAsync(lease, JobOutcome.Failed(invalid.Message, "INVALID_ARGUMENT"));
            case RpcException rpc:
                return await EndAsync(lease, JobOutcome.Failed($"a model call failed: {rpc.Status.Detail}", rpc.StatusCode switch
                {
                    StatusCode.InvalidArgument or StatusCode.NotFound or StatusCode.OutOfRange => "INVALID_ARGUMENT",
                    StatusCode.Unavailable => "UNAVAILABLE",
                    StatusCode.ResourceExhausted => "RESOURCE_EXHAUSTED",
                    _ => "INTERNAL",
                }));
            case OutOfMemoryException:
                // The runtime refused an allocation (the heap limit: GCHeapHardLimit, or 75% of a
                // container's memory limit). The plugin's memory is garbage once its task has ended.
                logger.LogWarning("Job {Job} of plugin {Plugin} ran out of memory", job.Id, job.Plugin);
                GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
                return await EndAsync(lease, JobOutcome.Failed(
                    $"the plugin ran out of memory (the worker's managed heap limit is {GC.GetGCMemoryInfo().TotalAvailableMemoryBytes >> 20} MiB); give it less data or the worker more memory",
                    "RESOURCE_EXHAUSTED"));
            default:
                logger.LogWarning(error, "Job {Job} of plugin {Plugin} failed", job.Id, job.Plugin);
                return await EndAsync(lease, JobOutcome.Failed($"the plugin failed: {error?.GetType().Name}: {error?.Message}", "INTERNAL"));
        }
    }

    /// <summary>Adds the run's model use to the job and its key's totals (kept even if the lease was lost: it was spent).</summary>
    private async Task RecordUsageAsync(JobLease lease, JobUsage used)
    {
        if (used.ModelCalls == 0)
            return;
        try
        {
            await queue.RecordUsageAsync(lease, used, CancellationToken.None);
        }
        catch (Exception e) when (e is JobStoreException or System.Data.Common.DbException)
        {
            logger.LogWarning("Job {Job}: its usage was not recorded: {Message}", lease.Job.Id, e.Message);
        }
    }

    private async Task<string> CancelledByAsync(string id)
    {
        try
        {
            var job = await store.GetAsync(id, new JobCaller(WorkerId, IsAdmin: true));
            return $"cancelled by {job.CancelledBy ?? "a client"}";
        }
        catch (Exception e) when (e is JobStoreException or System.Data.Common.DbException)
        {
            return "cancelled by a client";
        }
    }

    private async Task<string> EndAsync(JobLease lease, JobOutcome outcome)
    {
        // Written even while the host stops: the run is over, its outcome must not be lost.
        if (!await queue.CompleteAsync(lease, outcome, CancellationToken.None))
        {
            logger.LogWarning("Worker {Worker} finished job {Job} after losing its lease; another worker's outcome stands", WorkerId, lease.Job.Id);
            return "lost";
        }
        return JobStates.ToStored(outcome.State);
    }

    private async Task<string> ReleaseAsync(JobLease lease)
    {
        await queue.ReleaseAsync(lease, $"worker {WorkerId} stopped before the job finished; it runs again on the next free worker", CancellationToken.None);
        string id = lease.Job.Id, worker = WorkerId;
        if (logger.IsEnabled(LogLevel.Information))
            logger.LogInformation("Worker {Worker} stopped: job {Job} went back to the queue", worker, id);
        return "released";
    }
}
