using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.Gateway.Jobs;
using InterpMesh.Gateway.Plugins;
using InterpMesh.Gateway.Security;

namespace InterpMesh.Gateway.Api;

/// <summary><c>interpmesh.v1.AnalysisService</c>: plugins and jobs.</summary>
public sealed class AnalysisEndpoint(IPluginCatalog catalog, JobManager jobs, RecordLimits limits) : AnalysisService.AnalysisServiceBase
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

    public override Task<ListPluginsResponse> ListPlugins(ListPluginsRequest request, ServerCallContext context)
    {
        var response = new ListPluginsResponse();
        response.Plugins.AddRange(catalog.All.Select(Describe));
        return Task.FromResult(response);
    }

    public override Task<PluginDescription> DescribePlugin(DescribePluginRequest request, ServerCallContext context) =>
        Task.FromResult(Describe(catalog.Find(request.Id)
            ?? throw new RpcException(new Status(StatusCode.NotFound, $"no plugin '{request.Id}'; ListPlugins shows {string.Join(", ", catalog.All.Select(p => p.Id))}"))));

    public override async Task RunAnalysis(AnalysisRequest request, IServerStreamWriter<JobEvent> responseStream, ServerCallContext context)
    {
        limits.Check(request);
        var record = jobs.Submit(request, CallerOf(context));
        try
        {
            await Stream(record, responseStream, context.CancellationToken);
        }
        catch (OperationCanceledException) when (context.CancellationToken.IsCancellationRequested)
        {
            // The interactive form ends with its caller.
            record.CancelledBy ??= $"{CallerOf(context).Name} (RunAnalysis call ended)";
            record.Cancel.Cancel();
            throw;
        }
    }

    public override Task<Job> SubmitJob(AnalysisRequest request, ServerCallContext context)
    {
        limits.Check(request);
        return Task.FromResult(jobs.Submit(request, CallerOf(context)).Snapshot());
    }

    public override Task<Job> GetJob(GetJobRequest request, ServerCallContext context) => Task.FromResult(jobs.Get(request.Id).Snapshot());

    public override Task WatchJob(WatchJobRequest request, IServerStreamWriter<JobEvent> responseStream, ServerCallContext context) =>
        Stream(jobs.Get(request.Id), responseStream, context.CancellationToken);

    public override Task<Job> CancelJob(CancelJobRequest request, ServerCallContext context) =>
        Task.FromResult(jobs.Cancel(request.Id, CallerOf(context)).Snapshot());

    public override Task<ListJobsResponse> ListJobs(ListJobsRequest request, ServerCallContext context)
    {
        var response = new ListJobsResponse();
        response.Jobs.AddRange(jobs.List(request.Plugin, request.Limit).Select(j => j.Snapshot(withResult: false)));
        return Task.FromResult(response);
    }

    private static async Task Stream(JobRecord record, IServerStreamWriter<JobEvent> responseStream, CancellationToken ct)
    {
        var events = record.Watch();
        try
        {
            await foreach (var e in events.ReadAllAsync(ct))
                await responseStream.WriteAsync(e, ct);
        }
        finally
        {
            record.Unwatch(events);
        }
    }
}
