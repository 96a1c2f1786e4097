using System.Data.Common;
using System.Runtime.CompilerServices;
using System.Text.Json;
using Grpc.Core;
using InterpMesh.Gateway.Configuration;
using InterpMesh.Gateway.Plugins;
using InterpMesh.Gateway.Routing;
using InterpMesh.Gateway.Security;
using InterpMesh.Jobs;
using Microsoft.Extensions.Options;
using Wire = InterpMesh.Contracts.V1;

namespace InterpMesh.Gateway.Jobs;

/// <summary>
/// The public side of jobs, against the shared job store: submit (validated against the plugin
/// catalog, quotas checked in the store so they hold across replicas), get, list, watch, cancel,
/// with ownership (a key sees and cancels its own jobs, an admin all). No job state lives here: any
/// gateway replica answers for any job.
/// </summary>
public sealed class JobService
{
    /// <summary>The wait a full job queue asks for (<c>grpc-retry-pushback-ms</c>) before a submission is retried.</summary>
    public static readonly TimeSpan QueueFullPushback = TimeSpan.FromSeconds(10);

    private readonly GatewayOptions options;
    private readonly IPluginCatalog catalog;
    private readonly ModelRouter router;
    private readonly IJobStore store;
    private readonly LocalRuns local;

    public JobService(IOptions<GatewayOptions> options, IPluginCatalog catalog, ModelRouter router, IJobStore store, LocalRuns local)
    {
        this.options = options.Value;
        this.catalog = catalog;
        this.router = router;
        this.store = store;
        this.local = local;
    }

    private TimeSpan Poll => TimeSpan.FromMilliseconds(options.Jobs.PollMilliseconds);

    public static JobCaller ToJobCaller(Caller caller) => new(caller.Name, caller.Has(Wire.Role.Admin));

    /// <summary>Validates and queues a job; errors name what to fix.</summary>
    public Task<JobInfo> SubmitAsync(Wire.AnalysisRequest request, Caller caller, CancellationToken ct)
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

        // The run joins the submitting call's trace, wherever it runs.
        string traceParent = System.Diagnostics.Activity.Current is { IdFormat: System.Diagnostics.ActivityIdFormat.W3C } activity ? activity.Id ?? "" : "";
        var job = new NewJob(caller.Name, entry.Id, pool.Model, parameters.GetRawText(), request.TimeoutSeconds, traceParent);
        var limits = new SubmitLimits(MaxActivePerOwner: options.RateLimit.MaxJobsPerKey, MaxQueued: options.MaxQueuedJobs);
        return Guard(async () =>
        {
            var stored = await store.SubmitAsync(job, limits, ct);
            local.JobQueued();
            return stored;
        });
    }

    public Task<JobInfo> GetAsync(string id, Caller caller, CancellationToken ct) => Guard(() => store.GetAsync(id, ToJobCaller(caller), ct));

    /// <summary>A page of jobs, newest first: a non-admin's own only.</summary>
    public Task<JobPage> ListAsync(Wire.ListJobsRequest request, Caller caller, CancellationToken ct)
    {
        if (request.Limit < 0)
            throw new RpcException(new Status(StatusCode.InvalidArgument, $"limit must be 0 (default 100) or more, not {request.Limit}"));
        int size = request.PageSize != 0 ? request.PageSize : Math.Min(request.Limit > 0 ? request.Limit : 100, JobStoreLimits.MaxPageSize);
        return Guard(() => store.ListAsync(new JobListQuery(ToJobCaller(caller), size, request.PageToken, request.Plugin), ct));
    }

    /// <summary>
    /// Cancels a job (its owner or an admin). A queued job ends at once; a running one is marked in
    /// the store, and stopped at once if it runs in this process, else at its worker's next heartbeat.
    /// </summary>
    public Task<JobInfo> CancelAsync(string id, Caller caller, CancellationToken ct) => CancelAsync(id, ToJobCaller(caller), ct);

    internal Task<JobInfo> CancelAsync(string id, JobCaller caller, CancellationToken ct) => Guard(async () =>
    {
        var job = await store.CancelAsync(id, caller, ct);
        if (job.State == JobState.Running)
            local.Cancel(id, job.CancelledBy ?? caller.Name);
        return job;
    });

    /// <summary>
    /// The job's events as the wire's stream: a progress message with its state now, then every
    /// later event from the store (any replica's worker writes them), then the final record with its
    /// result. A job already final yields just its record.
    /// </summary>
    public async IAsyncEnumerable<Wire.JobEvent> WatchAsync(string id, Caller caller, [EnumeratorCancellation] CancellationToken ct)
    {
        var who = ToJobCaller(caller);
        var job = await Guard(() => store.GetAsync(id, who, ct));
        if (job.IsFinal)
        {
            yield return new Wire.JobEvent { Finished = JobMapping.ToWire(job) };
            yield break;
        }
        yield return new Wire.JobEvent { Progress = new Wire.Progress { JobId = job.Id, State = JobMapping.ToWire(job.State), Fraction = job.Progress, Message = job.Message } };
        var events = store.WatchAsync(id, who, job.LastEventSequence, Poll, ct).GetAsyncEnumerator(ct);
        try
        {
            while (await Guard(async () => await events.MoveNextAsync()))
            {
                var e = events.Current;
                if (e.Kind == JobEventKind.State && JobStates.IsFinal(e.State))
                {
                    yield return new Wire.JobEvent { Finished = JobMapping.ToWire(await Guard(() => store.GetAsync(id, who, ct))) };
                    yield break;
                }
                yield return new Wire.JobEvent { Progress = JobMapping.ToProgress(e) };
            }
        }
        finally
        {
            await events.DisposeAsync();
        }
    }

    /// <summary>Store refusals as gRPC statuses; an unreachable database as UNAVAILABLE (worth a retry).</summary>
    private static async Task<T> Guard<T>(Func<Task<T>> action)
    {
        try
        {
            return await action();
        }
        catch (JobStoreException e)
        {
            throw JobMapping.ToRpc(e, QueueFullPushback);
        }
        catch (DbException e)
        {
            throw new RpcException(new Status(StatusCode.Unavailable, $"the job store did not answer ({e.Message}); retry later"));
        }
    }
}
