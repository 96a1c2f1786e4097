using System.Text.Json.Nodes;
using InterpMesh.AnalysisWorker.Hosting;
using InterpMesh.Jobs;

namespace InterpMesh.AnalysisWorker.Plugins;

/// <summary>
/// Publishes this worker's plugin catalog to the job store (<see cref="IPluginRegistry"/>) so that
/// gateways, which load no plugin code, can list plugins and validate submissions: at start, after
/// a hot reload, and every <see cref="Every"/> as a heartbeat (gateways drop workers not seen for
/// <see cref="FreshWithin"/>). A stopping worker leaves its entries: during a restart or a rolling
/// update gateways keep accepting jobs for its plugins, which wait in the queue for the next worker.
/// </summary>
public sealed class PluginPublisher(IPluginCatalog catalog, IPluginRegistry registry, WorkerIdentity identity, ILogger<PluginPublisher> logger) : BackgroundService
{
    /// <summary>How often a worker publishes again.</summary>
    public static readonly TimeSpan Every = TimeSpan.FromSeconds(60);

    /// <summary>How recently a worker must have published for gateways to list its plugins: three heartbeats.</summary>
    public static readonly TimeSpan FreshWithin = Every * 3;

    private readonly SemaphoreSlim changed = new(0, 1);

    /// <summary>The catalog as the store keeps it: each folder with its manifest as JSON when it loaded.</summary>
    public static IReadOnlyList<PublishedPlugin> Entries(IEnumerable<PluginEntry> entries) =>
        [.. entries.Select(e => new PublishedPlugin(e.Id, e.Folder, e.Loaded, e.Error, e.Loaded && e.Manifest is { } m ? ManifestJson(m) : null))];

    private static string ManifestJson(InterpMesh.Plugins.PluginManifest m) => new JsonObject
    {
        ["version"] = m.Version,
        ["description"] = m.Description,
        ["sdkVersion"] = m.SdkVersion,
        ["parameterSchema"] = m.ParameterSchema.DeepClone(),
        ["produces"] = new JsonArray([.. m.Produces.Select(p => (JsonNode?)JsonValue.Create(p))]),
    }.ToJsonString();

    /// <summary>Publishes the catalog now (the host calls it once before it starts serving).</summary>
    public Task PublishAsync(CancellationToken ct) => registry.PublishPluginsAsync(identity.Id, Entries(catalog.All), ct);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        catalog.Changed += OnChanged;
        try
        {
            while (!stoppingToken.IsCancellationRequested)
            {
                try
                {
                    await changed.WaitAsync(Every, stoppingToken);
                    await PublishAsync(stoppingToken);
                }
                catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
                {
                    return;
                }
                catch (Exception e)
                {
                    // Gateways keep the last publication for FreshWithin; the next heartbeat tries again.
                    logger.LogWarning("Worker {Worker} could not publish its plugins to the job store: {Message}", identity.Id, e.Message);
                }
            }
        }
        finally
        {
            catalog.Changed -= OnChanged;
        }
    }

    private void OnChanged()
    {
        try
        {
            changed.Release();
        }
        catch (SemaphoreFullException)
        {
            // A publication is already due.
        }
    }

    public override void Dispose()
    {
        changed.Dispose();
        base.Dispose();
    }
}
