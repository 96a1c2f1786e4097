using System.Data.Common;
using System.Runtime.CompilerServices;
using System.Text.Json;
using Grpc.Core;
using InterpMesh.Gateway.Configuration;
using InterpMesh.Gateway.Plugins;
using InterpMesh.Gateway.Security;
using InterpMesh.Jobs;
using InterpMesh.Routing;
using Microsoft.Extensions.Options;
using Wire = InterpMesh.Contracts.V1;

namespace InterpMesh.Gateway.Jobs;

/// <summary>
/// The public side of jobs, against the shared job store: submit (validated against the plugin
/// catalog analysis workers publish, quotas checked in the store so they hold across replicas), get,
/// list, watch, cancel, with ownership (a key sees and cancels its own jobs, an admin all). No job
/// state lives here: any gateway replica answers for any job, and workers run them.
/// </summary>
public sealed class JobService
{
    /// <summary>The wait a full job queue asks for (<c>grpc-retry-pushback-ms</c>) before a submission is retried.</summary>
    public static readonly TimeSpan QueueFullPushback = TimeSpan.FromSeconds(10);

    private readonly GatewayOptions options;
    private readonly IPluginCatalog catalog;
    private readonly ModelRouter router;
    private readonly IJobStore store;

    public JobService(IOptions<GatewayOptions> options, IPluginCatalog catalog, ModelRouter router, IJobStore store)
    {
        this.options = options.Value;
        this.catalog = catalog;
        this.router = router;
        this.store = store;
    }

    private TimeSpan Poll => TimeSpan.FromMilliseconds(options.Jobs.PollMilliseconds);

    public static JobCaller ToJobCaller(Caller caller) => new(caller.Name, caller.Has(Wire.Role.Admin));

    /// <summary>Validates and queues a job; errors name what to fix.</summary>
    public async Task<JobInfo> SubmitAsync(Wire.AnalysisRequest request, Caller caller, CancellationToken ct)
    {
        var entry = await Guard(() => catalog.FindAsync(request.Plugin, ct));
        if (entry is null)
        {
            var served = (await Guard(() => catalog.AllAsync(ct))).Where(p => p.Loaded).Select(p => p.Id).ToList();
            throw new RpcException(new Status(StatusCode.FailedPrecondition,
                $"no analysis worker serves plugin '{request.Plugin}'; ListPlugins shows {(served.Count == 0 ? "none (no worker has published plugins in the last few minutes)" : string.Join(", ", served))}; start a worker with the plugin in Worker:PluginsPath"));
        }
        if (!entry.Loaded)
            throw new RpcException(new Status(StatusCode.FailedPrecondition, $"plugin '{entry.Id}' failed to load on analysis worker {entry.WorkerId}: {entry.Error}"));
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
        // The time limit is settled here, where Gateway:DefaultJobTimeoutSeconds is known: workers run what the job says.
        int timeout = request.TimeoutSeconds > 0 ? request.TimeoutSeconds : options.DefaultJobTimeoutSeconds;
        var job = new NewJob(caller.Name, entry.Id, pool.Model, parameters.GetRawText(), timeout, traceParent);
        var limits = new SubmitLimits(MaxActivePerOwner: options.RateLimit.MaxJobsPerKey, MaxQueued: options.MaxQueuedJobs);
        return await Guard(() => store.SubmitAsync(job, limits, ct));
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
    /// the store, and its worker stops it at its lease's next heartbeat (every third of <c>Worker:Jobs:LeaseSeconds</c>).
    /// </summary>
    public Task<JobInfo> CancelAsync(string id, Caller caller, CancellationToken ct) => CancelAsync(id, ToJobCaller(caller), ct);

    internal Task<JobInfo> CancelAsync(string id, JobCaller caller, CancellationToken ct) => Guard(() => store.CancelAsync(id, caller, ct));

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
    internal static async Task<T> Guard<T>(Func<Task<T>> action)
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
