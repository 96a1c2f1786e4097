using System.Text.Json;
using System.Threading.Channels;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.Gateway.Artifacts;
using InterpMesh.Gateway.Configuration;
using InterpMesh.Gateway.Plugins;
using InterpMesh.Gateway.Routing;
using InterpMesh.Gateway.Security;
using InterpMesh.Gateway.Telemetry;
using InterpMesh.Plugins;
using Microsoft.Extensions.Options;

namespace InterpMesh.Gateway.Jobs;

/// <summary>
/// Runs analyses as jobs: a bounded queue, <c>MaxConcurrentJobs</c> at a time, each with a time
/// limit. A plugin that throws fails its job; one that ignores cancellation past its limit is
/// abandoned (its job fails) while the gateway carries on. Records are persisted at every state
/// change; jobs that were queued or running when the gateway stopped come back INTERRUPTED.
/// </summary>
public sealed class JobManager : BackgroundService
{
    /// <summary>How long a plugin may take to stop after cancellation before it is abandoned.</summary>
    public static readonly TimeSpan StopGrace = TimeSpan.FromSeconds(5);

    /// <summary>The wait a full job queue asks for (<c>grpc-retry-pushback-ms</c>) before a submission is retried.</summary>
    public static readonly TimeSpan QueueFullPushback = TimeSpan.FromSeconds(10);

    private readonly GatewayOptions options;
    private readonly IPluginCatalog catalog;
    private readonly ModelRouter router;
    private readonly ArtifactStore artifacts;
    private readonly GatewayMetrics metrics;
    private readonly ILoggerFactory loggers;
    private readonly ILogger<JobManager> logger;
    private readonly JobStore store;
    private readonly Dictionary<string, JobRecord> jobs = new(StringComparer.Ordinal);
    private readonly Lock gate = new();
    private readonly Channel<JobRecord> queue;
    private int running;

    public JobManager(IOptions<GatewayOptions> options, IPluginCatalog catalog, ModelRouter router, ArtifactStore artifacts, GatewayMetrics metrics, ILoggerFactory loggers)
    {
        this.options = options.Value;
        this.catalog = catalog;
        this.router = router;
        this.artifacts = artifacts;
        this.metrics = metrics;
        this.loggers = loggers;
        logger = loggers.CreateLogger<JobManager>();
        store = new JobStore(this.options.JobsPath, logger);
        queue = Channel.CreateBounded<JobRecord>(this.options.MaxQueuedJobs);
        foreach (var job in store.LoadAll())
        {
            if (!JobRecord.IsFinal(job.State))
            {
                job.Error = $"the gateway stopped while the job was {(job.State == JobState.Running ? "running" : "queued")}; submit it again";
                job.State = JobState.Interrupted;
                job.ErrorCode = "UNAVAILABLE";
                job.Finished = Timestamp.FromDateTime(DateTime.UtcNow);
                store.Save(job);
            }
            jobs[job.Id] = new JobRecord(job);
        }
        Prune();
        metrics.ObserveJobs(() => queue.Reader.Count, () => Volatile.Read(ref running));
    }

    /// <summary>Validates and queues a job; errors name what to fix.</summary>
    public JobRecord Submit(AnalysisRequest request, Caller caller)
    {
        var entry = catalog.Find(request.Plugin)
            ?? throw new RpcException(new Status(StatusCode.NotFound, $"no plugin '{request.Plugin}'; this gateway has {string.Join(", ", catalog.All.Where(p => p.Loaded).Select(p => p.Id))}"));
        if (!entry.Loaded)
            throw new RpcException(new Status(StatusCode.FailedPrecondition, $"plugin '{entry.Id}' failed to load: {entry.Error}"));
        var pool = router.Resolve(request.Model);
        JsonElement parameters;
        try
        {
            using var doc = JsonDocument.Parse(string.IsNullOrWhiteSpace(request.ParametersJson) ? "{}" : request.ParametersJson);
            parameters = doc.RootElement.Clone();
        }
        catch (JsonException e)
        {
            throw new RpcException(new Status(StatusCode.InvalidArgument, $"parameters_json is not valid JSON: {e.Message}"));
        }
        if (parameters.ValueKind != JsonValueKind.Object)
            throw new RpcException(new Status(StatusCode.InvalidArgument, "parameters_json must be a JSON object"));
        var errors = ParameterValidator.Validate(entry.Manifest!.ParameterSchema, parameters);
        if (errors.Count > 0)
            throw new RpcException(new Status(StatusCode.InvalidArgument, $"invalid parameters for '{entry.Id}': {string.Join("; ", errors)}"));
        if (request.TimeoutSeconds < 0 || request.TimeoutSeconds > options.MaxJobTimeoutSeconds)
            throw new RpcException(new Status(StatusCode.InvalidArgument, $"timeout_seconds must be between 0 (default {options.DefaultJobTimeoutSeconds}) and {options.MaxJobTimeoutSeconds}"));

        var job = new Job
        {
            Id = "job-" + Guid.NewGuid().ToString("N")[..16],
            Plugin = entry.Id,
            Model = pool.Model,
            State = JobState.Queued,
            Created = Timestamp.FromDateTime(DateTime.UtcNow),
            Owner = caller.Name,
            ParametersJson = parameters.GetRawText(),
            Message = "queued",
        };
        var record = new JobRecord(job) { Trace = System.Diagnostics.Activity.Current?.Context ?? default };
        lock (gate)
        {
            int active = jobs.Values.Count(j => j.Owner == caller.Name && !JobRecord.IsFinal(j.State));
            // The key's own quota frees only when one of its jobs ends (minutes, or never without a
            // cancel): a transparent retry would hold the submit and most likely fail again, so the
            // client is told not to retry and the message says what frees a slot.
            if (active >= options.RateLimit.MaxJobsPerKey)
                throw new RpcException(new Status(StatusCode.ResourceExhausted, $"key '{caller.Name}' already has {active} jobs queued or running (limit {options.RateLimit.MaxJobsPerKey}); wait for one to finish or cancel one"),
                    Contracts.RetryPushback.Never());
            // The shared queue drains as anyone's jobs start: worth retrying after a while.
            if (!queue.Writer.TryWrite(record))
                throw new RpcException(new Status(StatusCode.ResourceExhausted, $"the job queue is full ({options.MaxQueuedJobs} waiting); retry later"), Contracts.RetryPushback.After(QueueFullPushback));
            jobs[job.Id] = record;
            record.Timeout = TimeSpan.FromSeconds(request.TimeoutSeconds > 0 ? request.TimeoutSeconds : options.DefaultJobTimeoutSeconds);
        }
        store.Save(record.Snapshot());
        return record;
    }

    public JobRecord Get(string id)
    {
        lock (gate)
        {
            return jobs.TryGetValue(id, out var r) ? r
                : throw new RpcException(new Status(StatusCode.NotFound, $"no job '{id}' (ListJobs shows the jobs this gateway knows)"));
        }
    }

    public IReadOnlyList<JobRecord> List(string plugin, int limit)
    {
        lock (gate)
        {
            return [.. jobs.Values.Where(j => plugin.Length == 0 || j.Snapshot(false).Plugin == plugin)
                .OrderByDescending(j => j.Snapshot(false).Created.ToDateTime()).Take(limit > 0 ? limit : 100)];
        }
    }

    /// <summary>Cancels a job; only its owner or an admin may.</summary>
    public JobRecord Cancel(string id, Caller caller)
    {
        var record = Get(id);
        if (record.Owner != caller.Name && !caller.Has(Role.Admin))
            throw new RpcException(new Status(StatusCode.PermissionDenied, $"job '{id}' belongs to '{record.Owner}'; only its owner or an admin can cancel it"));
        record.CancelledBy ??= caller.Name;
        record.Cancel.Cancel();
        if (record.State == JobState.Queued)
            Finish(record, JobState.Cancelled, $"cancelled by {caller.Name} before it started", "CANCELLED");
        return record;
    }

    protected override Task ExecuteAsync(CancellationToken stoppingToken) =>
        Task.WhenAll(Enumerable.Range(0, options.MaxConcurrentJobs).Select(_ => Task.Run(() => WorkAsync(stoppingToken), CancellationToken.None)));

    private async Task WorkAsync(CancellationToken stopping)
    {
        try
        {
            await foreach (var record in queue.Reader.ReadAllAsync(stopping))
            {
                if (record.State != JobState.Queued)
                    continue;
                Interlocked.Increment(ref running);
                try
                {
                    await RunAsync(record, stopping);
                }
                finally
                {
                    Interlocked.Decrement(ref running);
                }
            }
        }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested)
        {
        }
    }

    private async Task RunAsync(JobRecord record, CancellationToken stopping)
    {
        var job = record.Snapshot(false);
        var entry = catalog.Find(job.Plugin);
        if (entry?.Plugin is not { } plugin)
        {
            Finish(record, JobState.Failed, $"plugin '{job.Plugin}' is no longer loaded", "UNAVAILABLE");
            return;
        }
        record.Update(j =>
        {
            j.State = JobState.Running;
            j.Started = Timestamp.FromDateTime(DateTime.UtcNow);
            j.Message = "running";
        });
        store.Save(record.Snapshot());

        // One trace per analysis: the run joins the submitting call's trace, and the plugin's model
        // calls (made inside this span) carry it on to the model services.
        using var activity = Telemetry.GatewayTracing.Source.StartActivity("interpmesh.job", System.Diagnostics.ActivityKind.Internal, record.Trace);
        activity?.SetTag("interpmesh.plugin", job.Plugin);
        activity?.SetTag("interpmesh.job_id", job.Id);
        using var timeout = new CancellationTokenSource(record.Timeout);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(record.Cancel.Token, timeout.Token, stopping);
        var log = loggers.CreateLogger($"InterpMesh.Plugins.{job.Plugin}");
        using var scope = log.BeginScope(new Dictionary<string, object> { ["JobId"] = job.Id });
        var context = new AnalysisContext(record, new RoutedModelClient(router.Resolve(job.Model), TimeSpan.FromSeconds(options.CallTimeoutSeconds)), artifacts, log, metrics.PluginMeter, linked.Token);
        using var parameters = JsonDocument.Parse(job.ParametersJson);
        var run = Task.Run(() => plugin.RunAsync(parameters.RootElement.Clone(), context), CancellationToken.None);

        // Wait for the run, or for cancellation plus a grace period (a plugin may ignore its token).
        var stopped = Task.Delay(Timeout.Infinite, linked.Token).ContinueWith(_ => Task.Delay(StopGrace), TaskScheduler.Default).Unwrap();
        await Task.WhenAny(run, stopped);

        string Stopper() => record.Cancel.IsCancellationRequested ? $"cancelled by {record.CancelledBy ?? "a client"}"
            : timeout.IsCancellationRequested ? $"exceeded its time limit of {record.Timeout.TotalSeconds:0} s"
            : "the gateway stopped before the job finished; submit it again";
        JobState StopState() => record.Cancel.IsCancellationRequested ? JobState.Cancelled
            : timeout.IsCancellationRequested ? JobState.Failed : JobState.Interrupted;

        string StopCode() => record.Cancel.IsCancellationRequested ? "CANCELLED" : timeout.IsCancellationRequested ? "DEADLINE_EXCEEDED" : "UNAVAILABLE";
        if (!run.IsCompleted)
        {
            Finish(record, StopState(), $"{Stopper()}; the plugin did not stop within {StopGrace.TotalSeconds:0} s of being cancelled and was abandoned", StopCode());
            logger.LogError("Plugin {Plugin} ignored cancellation of job {Job}; abandoned", job.Plugin, job.Id);
        }
        else if (run.IsCompletedSuccessfully && !record.Cancel.IsCancellationRequested)
        {
            var result = ResultMapping.ToProto(run.Result);
            record.Update(j =>
            {
                j.State = JobState.Succeeded;
                j.Progress = 1;
                j.Message = "done";
                j.Result = result;
                j.Finished = Timestamp.FromDateTime(DateTime.UtcNow);
            });
        }
        else if (linked.IsCancellationRequested)
        {
            Finish(record, StopState(), Stopper(), StopCode());
        }
        else
        {
            var error = run.Exception?.InnerException ?? run.Exception;
            switch (error)
            {
                case InvalidParametersException invalid:
                    Finish(record, JobState.Failed, invalid.Message, "INVALID_ARGUMENT");
                    break;
                case RpcException rpc:
                    Finish(record, JobState.Failed, $"a model call failed: {rpc.Status.Detail}", rpc.StatusCode switch
                    {
                        StatusCode.InvalidArgument or StatusCode.NotFound or StatusCode.OutOfRange => "INVALID_ARGUMENT",
                        StatusCode.Unavailable => "UNAVAILABLE",
                        StatusCode.ResourceExhausted => "RESOURCE_EXHAUSTED",
                        _ => "INTERNAL",
                    });
                    break;
                case OutOfMemoryException:
                    // The runtime refused an allocation (the heap limit: GCHeapHardLimit, or 75% of a
                    // container's memory limit). The plugin's memory is garbage once its task has ended.
                    Finish(record, JobState.Failed, $"the plugin ran out of memory (the gateway's managed heap limit is {GC.GetGCMemoryInfo().TotalAvailableMemoryBytes >> 20} MiB); give it less data or the gateway more memory", "RESOURCE_EXHAUSTED");
                    logger.LogWarning("Job {Job} of plugin {Plugin} ran out of memory", job.Id, job.Plugin);
                    GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
                    break;
                default:
                    Finish(record, JobState.Failed, $"the plugin failed: {error?.GetType().Name}: {error?.Message}", "INTERNAL");
                    logger.LogWarning(error, "Job {Job} of plugin {Plugin} failed", job.Id, job.Plugin);
                    break;
            }
        }
        metrics.PluginRuns.Add(1, new KeyValuePair<string, object?>("plugin", job.Plugin), new KeyValuePair<string, object?>("outcome", record.State.ToString().ToLowerInvariant()));
        store.Save(record.Snapshot());
        Prune();
    }

    /// <summary>
    /// Retention: finished jobs beyond <c>MaxRetainedJobs</c> (oldest first) or older than
    /// <c>JobRetentionHours</c> are deleted, so a long-running gateway's memory and disk stay bounded.
    /// Queued and running jobs are never touched; artifacts are kept.
    /// </summary>
    private void Prune()
    {
        List<string> expired;
        lock (gate)
        {
            var finished = jobs.Values.Select(r => (Record: r, Job: r.Snapshot(false))).Where(x => JobRecord.IsFinal(x.Job.State))
                .OrderByDescending(x => x.Job.Finished?.ToDateTime() ?? x.Job.Created.ToDateTime()).ToList();
            var cutoff = options.JobRetentionHours > 0 ? DateTime.UtcNow.AddHours(-options.JobRetentionHours) : DateTime.MinValue;
            expired = [.. finished.Where((x, i) => i >= options.MaxRetainedJobs || (x.Job.Finished?.ToDateTime() ?? x.Job.Created.ToDateTime()) < cutoff).Select(x => x.Job.Id)];
            foreach (var id in expired)
                jobs.Remove(id);
        }
        foreach (var id in expired)
            store.Delete(id);
    }

    private void Finish(JobRecord record, JobState state, string error, string code)
    {
        record.Update(j =>
        {
            j.State = state;
            j.Error = error;
            j.ErrorCode = code;
            j.Message = state.ToString().ToLowerInvariant();
            j.Finished = Timestamp.FromDateTime(DateTime.UtcNow);
        });
        store.Save(record.Snapshot());
    }

    public override async Task StopAsync(CancellationToken cancellationToken)
    {
        await base.StopAsync(cancellationToken);
        // Anything still queued will not run in this process.
        lock (gate)
        {
            foreach (var r in jobs.Values.Where(j => j.State is JobState.Queued or JobState.Running).ToList())
                Finish(r, JobState.Interrupted, "the gateway stopped before the job finished; submit it again", "UNAVAILABLE");
        }
    }
}
