using System.Reflection;
using InterpMesh.Contracts.V1;
using InterpMesh.AnalysisWorker.Configuration;
using InterpMesh.AnalysisWorker.Telemetry;
using InterpMesh.Plugins;
using McMaster.NETCore.Plugins;
using Microsoft.Extensions.Options;

namespace InterpMesh.AnalysisWorker.Plugins;

/// <summary>One plugin folder: loaded (with its plugin) or not (with the reason).</summary>
public sealed record PluginEntry(string Id, string Folder, IAnalysisPlugin? Plugin, PluginManifest? Manifest, string? Error)
{
    public bool Loaded => Plugin is not null;
}

/// <summary>The host's view of plugins; what loads them is behind it.</summary>
public interface IPluginCatalog
{
    IReadOnlyList<PluginEntry> All { get; }

    PluginEntry? Find(string id);

    /// <summary>Raised after a hot reload replaced a plugin (the catalog is published again).</summary>
    event Action? Changed;
}

/// <summary>
/// Loads every <c>plugins/&lt;id&gt;/</c> folder at start with McMaster.NETCore.Plugins, each in
/// its own load context that shares the SDK, the contracts, Protobuf, TorchSharp and logging with
/// the host (one libtorch per process; a private copy would break type identity). A folder that
/// fails — bad <c>plugin.json</c>, broken DLL, no plugin class, incompatible SDK, a constructor or
/// manifest that throws — is logged, listed with its error, and skipped. Only direct sub-folders of
/// the configured root are considered, and never through a link that leaves it.
/// </summary>
public sealed class PluginCatalog : IPluginCatalog, IDisposable
{
    private static readonly Type[] Shared =
    [
        typeof(IAnalysisPlugin), typeof(RunRequest), typeof(Google.Protobuf.IMessage), typeof(Grpc.Core.RpcException),
        typeof(TorchSharp.torch), typeof(Microsoft.Extensions.Logging.ILogger), typeof(System.Text.Json.Nodes.JsonNode),
    ];

    private readonly ILogger<PluginCatalog> logger;
    private readonly bool hotReload;
    private readonly List<PluginLoader> loaders = [];
    private volatile List<PluginEntry> entries = [];
    private readonly Lock gate = new();

    public PluginCatalog(IOptions<WorkerOptions> options, ILogger<PluginCatalog> logger, WorkerMetrics metrics)
    {
        this.logger = logger;
        hotReload = options.Value.HotReload;
        Root = Path.GetFullPath(options.Value.PluginsPath);
        Load();
        metrics.ObservePlugins(() => entries.Count(e => e.Loaded), () => entries.Count(e => !e.Loaded));
    }

    public string Root { get; }

    public IReadOnlyList<PluginEntry> All => entries;

    public PluginEntry? Find(string id) => entries.FirstOrDefault(e => e.Id == id);

    public event Action? Changed;

    private void Load()
    {
        var found = new List<PluginEntry>();
        if (!Directory.Exists(Root))
        {
            logger.LogWarning("The plugins folder {Root} does not exist; no plugins are loaded", Root);
        }
        else
        {
            foreach (var folder in Directory.EnumerateDirectories(Root).Order(StringComparer.Ordinal))
            {
                if (Path.GetFileName(folder).StartsWith('.'))
                    continue;
                var entry = LoadFolder(folder);
                if (entry.Error is not null)
                {
                    logger.LogError("Plugin folder {Folder} was not loaded: {Error}", folder, entry.Error);
                }
                else if (logger.IsEnabled(LogLevel.Information))
                {
                    logger.LogInformation("Loaded plugin {Id} {Version} from {Folder}", entry.Id, entry.Manifest!.Version, folder);
                }
                found.Add(entry);
            }
        }
        entries = found;
    }

    private PluginEntry LoadFolder(string folder)
    {
        string name = Path.GetFileName(folder);
        string relative = Path.GetRelativePath(Root, folder);
        try
        {
            // A link may point anywhere; only real folders under the root are plugin folders.
            var info = new DirectoryInfo(folder);
            if (info.LinkTarget is not null)
            {
                var target = info.ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? "";
                if (!Path.GetFullPath(target).StartsWith(Root + Path.DirectorySeparatorChar, StringComparison.Ordinal))
                    return new PluginEntry(name, relative, null, null, $"the folder is a link to {target}, outside the plugins root {Root}; refused");
            }
            var spec = PluginFolder.Read(folder);
            var assemblyPath = Path.Combine(folder, spec.Assembly);
            if (!File.Exists(assemblyPath))
                return new PluginEntry(spec.Id, relative, null, null, $"{spec.Assembly} named by plugin.json is not in the folder");
            // The DLL itself may be a link too: code is loaded only from under the root.
            if (new FileInfo(assemblyPath).LinkTarget is not null)
            {
                var target = new FileInfo(assemblyPath).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? "";
                if (!Path.GetFullPath(target).StartsWith(Root + Path.DirectorySeparatorChar, StringComparison.Ordinal))
                    return new PluginEntry(spec.Id, relative, null, null, $"{spec.Assembly} is a link to {target}, outside the plugins root {Root}; refused");
            }
            var loader = PluginLoader.CreateFromAssemblyFile(assemblyPath, Shared, config =>
            {
                config.PreferSharedTypes = true;
                config.IsUnloadable = hotReload;
                config.EnableHotReload = hotReload;
            });
            lock (gate)
                loaders.Add(loader);
            if (hotReload)
                loader.Reloaded += (_, e) => Replace(relative, spec, e.Loader);
            var plugin = Instantiate(loader.LoadDefaultAssembly(), spec);
            var manifest = plugin.Manifest;
            CheckManifest(manifest, spec.Id);
            return new PluginEntry(spec.Id, relative, plugin, manifest, null);
        }
        catch (Exception e)
        {
            var inner = e is TargetInvocationException { InnerException: { } i } ? i : e;
            return new PluginEntry(name, relative, null, null, $"{inner.GetType().Name}: {inner.Message}");
        }
    }

    private static IAnalysisPlugin Instantiate(Assembly assembly, PluginFolder spec)
    {
        // Before any of the plugin's code runs: one built against another major version of the
        // SDK would fail deep inside with MissingMethodException (2.0 replaced the 1.x records'
        // constructors), so say which SDK it was built against and what to do.
        CheckSdkReference(assembly.GetReferencedAssemblies(), spec.Assembly);
        Type[] types;
        try
        {
            types = assembly.GetExportedTypes();
        }
        catch (ReflectionTypeLoadException e)
        {
            throw new InvalidOperationException($"{spec.Assembly} has types that cannot load: {string.Join("; ", e.LoaderExceptions.Select(x => x?.Message).Distinct())}");
        }
        var candidates = types.Where(t => typeof(IAnalysisPlugin).IsAssignableFrom(t) && t is { IsAbstract: false, IsInterface: false })
            .Where(t => spec.Type is null || t.FullName == spec.Type).ToList();
        if (candidates.Count == 0)
        {
            bool foreignSdk = types.Any(t => t.GetInterfaces().Any(i => i.FullName == typeof(IAnalysisPlugin).FullName));
            throw new InvalidOperationException(foreignSdk
                ? $"{spec.Assembly} implements IAnalysisPlugin from another copy of the SDK; reference InterpMesh.Plugins.Abstractions without copying it (ExcludeAssets=runtime / Private=false)"
                : $"{spec.Assembly} has no public class implementing IAnalysisPlugin{(spec.Type is null ? "" : $" named {spec.Type}")}");
        }
        if (candidates.Count > 1)
            throw new InvalidOperationException($"{spec.Assembly} has several plugin classes ({string.Join(", ", candidates.Select(c => c.FullName))}); name one with \"type\" in plugin.json");
        return (IAnalysisPlugin)Activator.CreateInstance(candidates[0])!;
    }

    /// <summary>The SDK's assembly name, as a plugin's assembly references it.</summary>
    internal static readonly string SdkAssemblyName = typeof(IAnalysisPlugin).Assembly.GetName().Name!;

    /// <summary>
    /// Refuses a plugin whose assembly references another major version of the SDK assembly (its
    /// assembly version is Major.0.0.0 whatever the package version). A plugin that does not
    /// reference the SDK is left to the checks that follow (it has no plugin class).
    /// </summary>
    internal static void CheckSdkReference(IEnumerable<AssemblyName> references, string assemblyFile)
    {
        var sdk = references.FirstOrDefault(r => string.Equals(r.Name, SdkAssemblyName, StringComparison.Ordinal));
        if (sdk?.Version is not { } built || built.Major == SdkVersion.Major)
            return;
        string builtAgainst = $"{built.Major}.{built.Minor}";
        throw new InvalidOperationException(built.Major < SdkVersion.Major
            ? $"{assemblyFile} was built against {SdkAssemblyName} {builtAgainst}; rebuild it against {SdkVersion.Current} — see docs/writing-plugins.md, Migrating to {SdkVersion.Major}.0"
            : $"{assemblyFile} was built against {SdkAssemblyName} {builtAgainst}, newer than this worker's {SdkVersion.Current}; update the worker or build the plugin against {SdkAssemblyName} {SdkVersion.Major}.x");
    }

    private static void CheckManifest(PluginManifest manifest, string id)
    {
        if (manifest.Id != id)
            throw new InvalidOperationException($"the plugin says its id is '{manifest.Id}' but plugin.json and the folder say '{id}'");
        var parts = manifest.SdkVersion.Split('.');
        if (parts.Length < 2 || !int.TryParse(parts[0], out int major) || !int.TryParse(parts[1], out int minor))
            throw new InvalidOperationException($"the plugin's SdkVersion '{manifest.SdkVersion}' is not 'major.minor'");
        if (major != SdkVersion.Major || minor > SdkVersion.Minor)
            throw new InvalidOperationException($"the plugin targets SDK {manifest.SdkVersion}, but this worker hosts SDK {SdkVersion.Current} (same major and a minor no newer required); rebuild it against SDK {SdkVersion.Major}.x");
        if (manifest.ParameterSchema is null)
            throw new InvalidOperationException("the plugin's ParameterSchema is missing");
    }

    private void Replace(string relative, PluginFolder spec, PluginLoader loader)
    {
        PluginEntry entry;
        try
        {
            var plugin = Instantiate(loader.LoadDefaultAssembly(), spec);
            CheckManifest(plugin.Manifest, spec.Id);
            entry = new PluginEntry(spec.Id, relative, plugin, plugin.Manifest, null);
        }
        catch (Exception e)
        {
            entry = new PluginEntry(spec.Id, relative, null, null, $"{e.GetType().Name}: {e.Message}");
        }
        lock (gate)
            entries = [.. entries.Select(e => e.Folder == entry.Folder ? entry : e)];
        if (logger.IsEnabled(LogLevel.Information))
            logger.LogInformation("Reloaded plugin folder {Folder}: {State}", relative, entry.Error ?? "loaded");
        Changed?.Invoke();
    }

    public void Dispose()
    {
        lock (gate)
        {
            foreach (var l in loaders)
                l.Dispose();
            loaders.Clear();
        }
    }
}
