using InterpMesh.Gateway.Configuration;
using InterpMesh.Gateway.Plugins;
using InterpMesh.Gateway.Telemetry;
using InterpMesh.Jobs;
using Microsoft.Extensions.Options;

namespace InterpMesh.Gateway.Jobs;

/// <summary>
/// What a gateway does with the job store besides answering calls: every few seconds it reads the
/// store's counts and per-key usage for the metrics (<c>interpmesh.jobs.*</c>, over every gateway
/// and worker), reads the plugin catalog (so its gauges are current on a gateway nobody calls), and
/// applies retention: finished jobs beyond <c>Gateway:MaxRetainedJobs</c> (oldest
/// first) or older than <c>Gateway:JobRetentionHours</c> are deleted with their events (workers,
/// which end jobs, do not know the gateway's retention; one indexed delete every few seconds is
/// what the worker in the gateway used to do after every job). Queued and running jobs are never
/// touched; artifacts are kept. Every replica does this; deleting twice is harmless.
/// </summary>
public sealed class JobHousekeeping : BackgroundService
{
    private static readonly TimeSpan CountEvery = TimeSpan.FromSeconds(5);

    private readonly GatewayOptions options;
    private readonly IJobStore store;
    private readonly IPluginCatalog catalog;
    private readonly ILogger<JobHousekeeping> logger;
    private JobCounts counts = new(0, 0);
    private IReadOnlyList<KeyUsage> usage = [];

    public JobHousekeeping(IOptions<GatewayOptions> options, IJobStore store, IPluginCatalog catalog, GatewayMetrics metrics, ILogger<JobHousekeeping> logger)
    {
        this.options = options.Value;
        this.store = store;
        this.catalog = catalog;
        this.logger = logger;
        metrics.ObserveJobs(() => Volatile.Read(ref counts).Queued, () => Volatile.Read(ref counts).Running);
        metrics.ObserveKeyUsage(() => Volatile.Read(ref usage));
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                Volatile.Write(ref counts, await store.CountAsync(stoppingToken));
                Volatile.Write(ref usage, await store.UsageAsync(stoppingToken));
                await catalog.AllAsync(stoppingToken);
                var cutoff = options.JobRetentionHours > 0 ? DateTimeOffset.UtcNow.AddHours(-options.JobRetentionHours) : DateTimeOffset.MinValue;
                await store.PruneAsync(cutoff, options.MaxRetainedJobs, stoppingToken);
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e)
            {
                logger.LogWarning("Job counts, the plugin catalog or retention could not be read (the job store did not answer): {Message}", e.Message);
            }
            try
            {
                await Task.Delay(CountEvery, stoppingToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }
}
