using InterpMesh.Gateway.Security;
using InterpMesh.Gateway.Telemetry;
using InterpMesh.Jobs;

namespace InterpMesh.Gateway.Hosting;

/// <summary>
/// Stamps this gateway in the job store every few seconds and keeps <see cref="ReplicaShare"/> at
/// the number of gateways stamped recently; withdraws when the host stops, so the others' shares
/// grow at their next stamp. A gateway that dies drops out after <see cref="FreshWithin"/>; until
/// then the others enforce a smaller share than they could (limits err on the strict side).
/// </summary>
public sealed class GatewayPresence : BackgroundService
{
    /// <summary>How often a gateway stamps itself.</summary>
    public static readonly TimeSpan Every = TimeSpan.FromSeconds(5);

    /// <summary>A gateway not stamped for this long is no longer counted.</summary>
    public static readonly TimeSpan FreshWithin = TimeSpan.FromSeconds(20);

    private readonly IGatewayRegistry registry;
    private readonly ReplicaShare share;
    private readonly ILogger<GatewayPresence> logger;

    public GatewayPresence(IGatewayRegistry registry, ReplicaShare share, GatewayMetrics metrics, ILogger<GatewayPresence> logger)
    {
        this.registry = registry;
        this.share = share;
        this.logger = logger;
        metrics.ObserveReplicas(() => share.Replicas);
    }

    /// <summary>This gateway's id in the store: machine, process and a random part.</summary>
    public string GatewayId { get; } = $"{Environment.MachineName}/{Environment.ProcessId}/{Guid.NewGuid().ToString("N")[..6]}";

    /// <summary>Stamps now and updates the share (also called once at start, before the first call is served).</summary>
    public async Task StampAsync(CancellationToken cancellationToken)
    {
        int count = await registry.HeartbeatGatewayAsync(GatewayId, FreshWithin, cancellationToken);
        if (count != share.Replicas && logger.IsEnabled(LogLevel.Information))
            logger.LogInformation("{Count} gateways share the job store: this one enforces 1/{Count} of each key's rate limit", count, count);
        share.Update(count);
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                await StampAsync(stoppingToken);
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                break;
            }
            catch (Exception e) when (e is JobStoreException or System.Data.Common.DbException or TimeoutException or IOException)
            {
                // The store is away: keep the last count (the jobs API reports the outage itself).
                logger.LogWarning(e, "Could not stamp this gateway in the job store; keeping the last replica count ({Count})", share.Replicas);
            }
            try
            {
                await Task.Delay(Every, stoppingToken);
            }
            catch (OperationCanceledException)
            {
                break;
            }
        }
    }

    public override async Task StopAsync(CancellationToken cancellationToken)
    {
        await base.StopAsync(cancellationToken);
        try
        {
            await registry.LeaveGatewayAsync(GatewayId, cancellationToken);
        }
        catch (Exception e) when (e is JobStoreException or System.Data.Common.DbException or TimeoutException or IOException or OperationCanceledException or ObjectDisposedException)
        {
            logger.LogWarning(e, "Could not withdraw this gateway from the job store; the others stop counting it within {Seconds} s", FreshWithin.TotalSeconds);
        }
    }
}
