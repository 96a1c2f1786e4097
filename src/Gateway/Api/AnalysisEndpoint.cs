using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.Gateway.Jobs;
using InterpMesh.Gateway.Plugins;
using InterpMesh.Gateway.Security;

namespace InterpMesh.Gateway.Api;

/// <summary>
/// <c>interpmesh.v1.AnalysisService</c>: plugins and jobs. A job's stream (RunAnalysis, WatchJob)
/// lasts as long as the job, which can be hours: when the gateway stops (SIGTERM in a rollout or a
/// scale-down) its streams end at once as UNAVAILABLE, rather than holding the stop for the whole
/// drain (<c>HostOptions.ShutdownTimeout</c>) and being cut off then; the job runs on in its
/// worker, and the client watches it through another gateway. A run whose gateway stops is not
/// cancelled: its caller did not go away.
/// </summary>
public sealed class AnalysisEndpoint(IPluginCatalog catalog, JobService jobs, RecordLimits limits, IHostApplicationLifetime lifetime) : AnalysisService.AnalysisServiceBase
{
    private static Caller CallerOf(ServerCallContext context) => Caller.Of(context) ?? new Caller(Caller.Anonymous, Role.Unspecified);

    private static PluginDescription Describe(PluginEntry e)
    {
        var d = new PluginDescription { Id = e.Id, Folder = e.Folder, Loaded = e.Loaded, Error = e.Error ?? "" };
        if (e.Manifest is { } m)
        {
            d.Version = m.Version;
            d.Description = m.Description;
            d.SdkVersion = m.SdkVersion;
            d.ParameterSchemaJson = m.ParameterSchema.ToJsonString();
            d.Produces.AddRange(m.Produces);
        }
        return d;
    }

    /// <summary>The plugins analysis workers published (a worker not seen for a few minutes drops out).</summary>
    public override async Task<ListPluginsResponse> ListPlugins(ListPluginsRequest request, ServerCallContext context)
    {
        var response = new ListPluginsResponse();
        response.Plugins.AddRange((await JobService.Guard(() => catalog.AllAsync(context.CancellationToken))).Select(Describe));
        return response;
    }

    public override async Task<PluginDescription> DescribePlugin(DescribePluginRequest request, ServerCallContext context)
    {
        var entry = await JobService.Guard(() => catalog.FindAsync(request.Id, context.CancellationToken));
        if (entry is not null)
            return Describe(entry);
        var all = await JobService.Guard(() => catalog.AllAsync(context.CancellationToken));
        throw new RpcException(new Status(StatusCode.NotFound,
            $"no plugin '{request.Id}'; ListPlugins shows {(all.Count == 0 ? "none: no analysis worker has published plugins in the last few minutes (start one with plugins in Worker:PluginsPath)" : string.Join(", ", all.Select(p => p.Id)))}"));
    }

    public override async Task RunAnalysis(AnalysisRequest request, IServerStreamWriter<JobEvent> responseStream, ServerCallContext context)
    {
        limits.Check(request);
        var caller = CallerOf(context);
        var job = await jobs.SubmitAsync(request, caller, context.CancellationToken);
        try
        {
            await Stream(job.Id, caller, responseStream, context.CancellationToken);
        }
        catch (OperationCanceledException) when (context.CancellationToken.IsCancellationRequested && !lifetime.ApplicationStopping.IsCancellationRequested)
        {
            // The interactive form ends with its caller.
            await jobs.CancelAsync(job.Id, caller, CancellationToken.None);
            throw;
        }
    }

    public override async Task<Job> SubmitJob(AnalysisRequest request, ServerCallContext context)
    {
        limits.Check(request);
        return JobMapping.ToWire(await jobs.SubmitAsync(request, CallerOf(context), context.CancellationToken));
    }

    public override async Task<Job> GetJob(GetJobRequest request, ServerCallContext context) =>
        JobMapping.ToWire(await jobs.GetAsync(request.Id, CallerOf(context), context.CancellationToken));

    public override Task WatchJob(WatchJobRequest request, IServerStreamWriter<JobEvent> responseStream, ServerCallContext context) =>
        Stream(request.Id, CallerOf(context), responseStream, context.CancellationToken);

    public override async Task<Job> CancelJob(CancelJobRequest request, ServerCallContext context) =>
        JobMapping.ToWire(await jobs.CancelAsync(request.Id, CallerOf(context), context.CancellationToken));

    public override async Task<ListJobsResponse> ListJobs(ListJobsRequest request, ServerCallContext context)
    {
        // A page stays within the list budget: each record is bounded at the edge, but 500 of the
        // largest would not fit the default 4 MiB message, so a smaller page is read until it fits
        // (its token then continues from the last job sent).
        while (true)
        {
            var page = await jobs.ListAsync(request, CallerOf(context), context.CancellationToken);
            var response = new ListJobsResponse { NextPageToken = page.NextPageToken };
            response.Jobs.AddRange(page.Jobs.Select(j => JobMapping.ToWire(j, withResult: false)));
            if (response.Jobs.Count <= 1 || response.CalculateSize() <= RecordLimits.PageBudgetBytes)
                return response;
            request = request.Clone();
            request.PageSize = response.Jobs.Count / 2;
        }
    }

    private async Task Stream(string id, Caller caller, IServerStreamWriter<JobEvent> responseStream, CancellationToken ct)
    {
        var stopping = lifetime.ApplicationStopping;
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(ct, stopping);
        try
        {
            await foreach (var e in jobs.WatchAsync(id, caller, linked.Token))
                await responseStream.WriteAsync(e, linked.Token);
        }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested && !ct.IsCancellationRequested)
        {
            throw new RpcException(new Status(StatusCode.Unavailable, $"this gateway is stopping; job {id} goes on: watch it through another gateway (WatchJob)"));
        }
    }
}
