using Grpc.Core;
using InterpMesh.Contracts.V1;

namespace InterpMesh.Client;

public sealed partial class MeshClient
{
    /// <summary>The plugins the gateway offers, as its analysis workers published them (and why any failed to load).</summary>
    public async Task<ListPluginsResponse> ListPluginsAsync(CancellationToken cancellationToken = default) =>
        await Analyses.ListPluginsAsync(new ListPluginsRequest(), cancellationToken: cancellationToken).ConfigureAwait(false);

    /// <summary>
    /// Submits an analysis and follows it to its end: <paramref name="progress"/> hears each progress
    /// event; returns the job's final record (its state says whether it succeeded).
    /// </summary>
    public async Task<Job> RunAnalysisAsync(AnalysisRequest request, IProgress<Progress>? progress = null, CancellationToken cancellationToken = default)
    {
        using var call = Analyses.RunAnalysis(request, cancellationToken: cancellationToken);
        return await FollowAsync(call.ResponseStream, progress, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Follows a job someone submitted, to its end, as <see cref="RunAnalysisAsync"/> does.</summary>
    public async Task<Job> WatchJobAsync(string id, IProgress<Progress>? progress = null, CancellationToken cancellationToken = default)
    {
        using var call = Analyses.WatchJob(new WatchJobRequest { Id = id }, cancellationToken: cancellationToken);
        return await FollowAsync(call.ResponseStream, progress, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>A job's record as it is now (with its result when finished).</summary>
    public async Task<Job> GetJobAsync(string id, CancellationToken cancellationToken = default) =>
        await Analyses.GetJobAsync(new GetJobRequest { Id = id }, cancellationToken: cancellationToken).ConfigureAwait(false);

    /// <summary>Asks for a job to stop; returns its record.</summary>
    public async Task<Job> CancelJobAsync(string id, CancellationToken cancellationToken = default) =>
        await Analyses.CancelJobAsync(new CancelJobRequest { Id = id }, cancellationToken: cancellationToken).ConfigureAwait(false);

    /// <summary>The jobs this key may see, optionally of one plugin.</summary>
    public async Task<ListJobsResponse> ListJobsAsync(string? plugin = null, CancellationToken cancellationToken = default) =>
        await Analyses.ListJobsAsync(new ListJobsRequest { Plugin = plugin ?? "" }, cancellationToken: cancellationToken).ConfigureAwait(false);

    private static async Task<Job> FollowAsync(IAsyncStreamReader<JobEvent> events, IProgress<Progress>? progress, CancellationToken cancellationToken)
    {
        Job? last = null;
        await foreach (var e in events.ReadAllAsync(cancellationToken).ConfigureAwait(false))
        {
            if (e.Progress is { } p)
                progress?.Report(p);
            last = e.Finished ?? last;
        }
        return last ?? throw new InvalidOperationException("the job stream ended without the job's final record; ask for it with GetJobAsync");
    }
}
