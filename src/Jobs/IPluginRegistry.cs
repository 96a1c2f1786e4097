namespace InterpMesh.Jobs;

/// <summary>
/// The plugin catalog in the job store: analysis workers publish the plugin folders they loaded
/// (or failed to load) so that gateways, which load no plugin code, can list plugins and validate
/// submissions. A worker publishes at start, after a hot reload and every minute as a heartbeat;
/// readers only see workers seen recently, so a worker that died drops out by itself.
/// </summary>
public interface IPluginRegistry
{
    /// <summary>
    /// Replaces everything <paramref name="workerId"/> published before with <paramref name="plugins"/>
    /// (an empty list withdraws the worker, as it does when it stops), stamped now.
    /// </summary>
    Task PublishPluginsAsync(string workerId, IReadOnlyList<PublishedPlugin> plugins, CancellationToken cancellationToken = default);

    /// <summary>
    /// One entry per plugin id among the workers that published within <paramref name="freshWithin"/>:
    /// a loaded entry before a failed one, then the newest; ordered by id.
    /// </summary>
    Task<IReadOnlyList<PluginRecord>> ListPluginsAsync(TimeSpan freshWithin, CancellationToken cancellationToken = default);
}

/// <summary>
/// One plugin folder as a worker saw it: its id, its folder (relative to the worker's plugins
/// root), whether it loaded, the reason when not, and its manifest as JSON
/// (<c>{"version", "description", "sdkVersion", "parameterSchema", "produces"}</c>) when it did.
/// </summary>
public sealed record PublishedPlugin(string Id, string Folder, bool Loaded, string? Error, string? ManifestJson);

/// <summary>A published plugin with the worker that published it and when.</summary>
public sealed record PluginRecord(string Id, string Folder, bool Loaded, string? Error, string? ManifestJson, string WorkerId, DateTimeOffset Updated);
