using System.Text.Json;
using System.Text.Json.Nodes;
using InterpMesh.Gateway.Configuration;
using InterpMesh.Gateway.Telemetry;
using InterpMesh.Jobs;
using Microsoft.Extensions.Options;

namespace InterpMesh.Gateway.Plugins;

/// <summary>
/// One plugin folder as an analysis worker published it: loaded (with its manifest) or not (with
/// the reason), and which worker said so.
/// </summary>
public sealed record PluginEntry(string Id, string Folder, bool Loaded, string? Error, PublishedManifest? Manifest, string WorkerId);

/// <summary>What a worker published of a loaded plugin's manifest: enough to describe it and validate parameters.</summary>
public sealed record PublishedManifest(string Version, string Description, string SdkVersion, JsonObject ParameterSchema, IReadOnlyList<string> Produces)
{
    /// <summary>Reads the manifest JSON a worker stores (<c>{"version", "description", "sdkVersion", "parameterSchema", "produces"}</c>).</summary>
    public static PublishedManifest Parse(string json)
    {
        var o = JsonNode.Parse(json) as JsonObject ?? throw new JsonException("a published manifest must be a JSON object");
        string Text(string name) => o[name]?.GetValue<string>() ?? throw new JsonException($"a published manifest has no \"{name}\"");
        var schema = o["parameterSchema"] as JsonObject ?? throw new JsonException("a published manifest has no \"parameterSchema\" object");
        var produces = o["produces"] is JsonArray a ? [.. a.Select(p => p?.GetValue<string>() ?? "")] : Array.Empty<string>();
        return new PublishedManifest(Text("version"), Text("description"), Text("sdkVersion"), (JsonObject)schema.DeepClone(), produces);
    }
}

/// <summary>The plugins this gateway offers: those analysis workers published in the job store.</summary>
public interface IPluginCatalog
{
    /// <summary>Every plugin folder a worker seen recently published, by id.</summary>
    Task<IReadOnlyList<PluginEntry>> AllAsync(CancellationToken cancellationToken = default);

    /// <summary>The plugin <paramref name="id"/>, or null when no worker seen recently has it.</summary>
    Task<PluginEntry?> FindAsync(string id, CancellationToken cancellationToken = default);
}

/// <summary>
/// The plugin catalog read from the job store (<see cref="IPluginRegistry"/>), where analysis
/// workers publish theirs at start, after a hot reload and every minute; workers not seen for three
/// minutes drop out. A read is reused for <c>Gateway:Jobs:PluginCacheMilliseconds</c>; a plugin not
/// found (or not loaded), or a catalog with nothing runnable, is looked up again in a read that
/// starts after the request did (concurrent misses share one), so a worker that just published is
/// seen by the next call.
/// </summary>
public sealed class StorePluginCatalog : IPluginCatalog
{
    /// <summary>How recently a worker must have published for its plugins to be offered (three of its one-minute heartbeats).</summary>
    public static readonly TimeSpan FreshWithin = TimeSpan.FromMinutes(3);

    private readonly IPluginRegistry registry;
    private readonly ILogger<StorePluginCatalog> logger;
    private readonly TimeSpan cacheFor;
    private readonly SemaphoreSlim reading = new(1, 1);
    private volatile Snapshot? last;

    /// <summary>A read of the catalog and when it started (<see cref="Environment.TickCount64"/>).</summary>
    private sealed record Snapshot(IReadOnlyList<PluginEntry> Entries, long ReadAt);

    public StorePluginCatalog(IPluginRegistry registry, IOptions<GatewayOptions> options, GatewayMetrics metrics, ILogger<StorePluginCatalog> logger)
    {
        this.registry = registry;
        this.logger = logger;
        cacheFor = TimeSpan.FromMilliseconds(options.Value.Jobs.PluginCacheMilliseconds);
        // As the workers published them: what the last read saw.
        metrics.ObservePlugins(() => last?.Entries.Count(e => e.Loaded) ?? 0, () => last?.Entries.Count(e => !e.Loaded) ?? 0);
    }

    public async Task<IReadOnlyList<PluginEntry>> AllAsync(CancellationToken cancellationToken = default)
    {
        long asked = Environment.TickCount64;
        var all = (await ReadAsync(asked - (long)cacheFor.TotalMilliseconds, cancellationToken)).Entries;
        // Nothing runnable is a miss too (a gateway that started before its workers): look again.
        return all.Any(e => e.Loaded) ? all : (await ReadAsync(asked, cancellationToken)).Entries;
    }

    public async Task<PluginEntry?> FindAsync(string id, CancellationToken cancellationToken = default)
    {
        long asked = Environment.TickCount64;
        var found = (await ReadAsync(asked - (long)cacheFor.TotalMilliseconds, cancellationToken)).Entries.FirstOrDefault(e => e.Id == id);
        if (found is null || !found.Loaded)
            found = (await ReadAsync(asked, cancellationToken)).Entries.FirstOrDefault(e => e.Id == id) ?? found;
        return found;
    }

    /// <summary>The last read if it started after <paramref name="since"/> (ticks, so a read begun in the same millisecond does not count), else a new one.</summary>
    private async Task<Snapshot> ReadAsync(long since, CancellationToken ct)
    {
        if (last is { } cached && cached.ReadAt > since)
            return cached;
        await reading.WaitAsync(ct);
        try
        {
            // Another caller may have read meanwhile.
            if (last is { } again && again.ReadAt > since)
                return again;
            long started = Environment.TickCount64;
            var records = await registry.ListPluginsAsync(FreshWithin, ct);
            var snapshot = new Snapshot([.. records.Select(ToEntry)], started);
            last = snapshot;
            return snapshot;
        }
        finally
        {
            reading.Release();
        }
    }

    private PluginEntry ToEntry(PluginRecord r)
    {
        if (!r.Loaded || r.ManifestJson is null)
            return new PluginEntry(r.Id, r.Folder, false, r.Error ?? "not loaded", null, r.WorkerId);
        try
        {
            return new PluginEntry(r.Id, r.Folder, true, null, PublishedManifest.Parse(r.ManifestJson), r.WorkerId);
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
        {
            logger.LogWarning("Worker {Worker} published an unreadable manifest for plugin {Plugin}: {Message}", r.WorkerId, r.Id, e.Message);
            return new PluginEntry(r.Id, r.Folder, false, $"worker {r.WorkerId} published an unreadable manifest: {e.Message}", null, r.WorkerId);
        }
    }
}
