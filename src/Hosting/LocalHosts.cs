using System.Security.Cryptography;
using System.Text;
using InterpMesh.AnalysisWorker.Hosting;
using InterpMesh.Gateway.Hosting;
using InterpMesh.ModelService.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace InterpMesh.Hosting;

/// <summary>
/// Model services, gateways and analysis workers in this process, configured only by the settings
/// given (the appsettings files of the apps do not apply): gRPC over HTTP/2 on a free loopback port
/// unless the settings say otherwise, warnings and errors logged. <c>interpmesh up</c> and the demo
/// start one gateway and one worker that share the data folder's embedded job store
/// (<c>jobs/jobs.db</c>) and artifact folder, as a deployment's gateways and workers share one
/// database and one volume.
/// </summary>
public static class LocalHosts
{
    /// <summary>What every host started here gets before the caller's settings.</summary>
    public static IReadOnlyDictionary<string, string?> Defaults { get; } = new Dictionary<string, string?>
    {
        ["Kestrel:Endpoints:Grpc:Url"] = "http://127.0.0.1:0",
        ["Kestrel:Endpoints:Grpc:Protocols"] = "Http2",
        ["Logging:LogLevel:Default"] = "Warning",
    };

    /// <summary>
    /// Starts a model service with <paramref name="settings"/> (<c>ModelService:ModelPath</c> at least)
    /// and waits until its model is loaded; a load failure stops it and says why.
    /// </summary>
    public static async Task<WebApplication> StartModelServiceAsync(IEnumerable<KeyValuePair<string, string?>> settings)
    {
        var all = Merge(settings);
        var app = ModelServiceApp.Build([], b =>
        {
            b.Configuration.Sources.Clear();
            b.Configuration.AddInMemoryCollection(all);
            LocalShutdown(b);
        });
        await app.StartAsync().ConfigureAwait(false);
        try
        {
            await app.Services.GetRequiredService<ModelHost>().WhenLoaded.ConfigureAwait(false);
        }
        catch (Exception e)
        {
            await StopAsync(app).ConfigureAwait(false);
            throw new InvalidOperationException($"the model {all.GetValueOrDefault("ModelService:ModelPath")} failed to load: {e.Message}", e);
        }
        return app;
    }

    /// <summary>Starts a gateway with <paramref name="settings"/>; <paramref name="configure"/> has the last say over the builder.</summary>
    public static Task<WebApplication> StartGatewayAsync(IEnumerable<KeyValuePair<string, string?>> settings, Action<WebApplicationBuilder>? configure = null)
        => StartAsync(GatewayApp.Build, settings, configure);

    /// <summary>
    /// Starts an analysis worker with <paramref name="settings"/> (see <see cref="WorkerSettings"/>);
    /// its plugins are loaded and published to the job store when this returns.
    /// <paramref name="configure"/> has the last say over the builder.
    /// </summary>
    public static Task<WebApplication> StartWorkerAsync(IEnumerable<KeyValuePair<string, string?>> settings, Action<WebApplicationBuilder>? configure = null)
        => StartAsync(AnalysisWorkerApp.Build, settings, configure);

    /// <summary>Builds a host with only <paramref name="settings"/> (over <see cref="Defaults"/>) and the local shutdown, then starts it.</summary>
    private static async Task<WebApplication> StartAsync(Func<string[], Action<WebApplicationBuilder>?, WebApplication> build, IEnumerable<KeyValuePair<string, string?>> settings, Action<WebApplicationBuilder>? configure)
    {
        var all = Merge(settings);
        var app = build([], b =>
        {
            b.Configuration.Sources.Clear();
            b.Configuration.AddInMemoryCollection(all);
            LocalShutdown(b);
            configure?.Invoke(b);
        });
        await app.StartAsync().ConfigureAwait(false);
        return app;
    }

    /// <summary>
    /// The settings of an analysis worker beside a gateway from <see cref="GatewaySettings"/>: the
    /// same <paramref name="models"/> (name → model-service address; the first is the default), the
    /// plugins in <paramref name="pluginsPath"/>, the job store and artifacts under the same
    /// <paramref name="dataDir"/>. In-process workers do not recycle their process
    /// (<c>Worker:RecycleStuckPlugins=false</c>): stopping it would stop everything else in it.
    /// </summary>
    public static Dictionary<string, string?> WorkerSettings(IReadOnlyDictionary<string, string> models, string pluginsPath, string dataDir)
    {
        ArgumentNullException.ThrowIfNull(models);
        var settings = new Dictionary<string, string?>
        {
            ["Worker:PluginsPath"] = pluginsPath,
            ["Worker:ArtifactsPath"] = Path.Combine(dataDir, "artifacts"),
            ["Worker:JobsPath"] = Path.Combine(dataDir, "jobs"),
            ["Worker:RecycleStuckPlugins"] = "false",
        };
        foreach (var (name, address) in models)
            settings[$"Worker:Models:{name}:Endpoints:0"] = address;
        if (models.Count > 0)
            settings["Worker:DefaultModel"] = models.Keys.First();
        return settings;
    }

    /// <summary>
    /// The settings of a gateway in front of <paramref name="models"/> (name → model-service address;
    /// the first is the default), its jobs and artifacts under <paramref name="dataDir"/>, no rate
    /// limit, and auth only when <paramref name="key"/> is given (that key gets the admin role).
    /// Callers add or override the rest. Plugins are the worker's (<see cref="WorkerSettings"/>).
    /// </summary>
    public static Dictionary<string, string?> GatewaySettings(IReadOnlyDictionary<string, string> models, string dataDir, string? key = null)
    {
        ArgumentNullException.ThrowIfNull(models);
        var settings = new Dictionary<string, string?>
        {
            ["Gateway:ArtifactsPath"] = Path.Combine(dataDir, "artifacts"),
            ["Gateway:JobsPath"] = Path.Combine(dataDir, "jobs"),
            ["Gateway:Auth:Enabled"] = key is null ? "false" : "true",
            ["Gateway:RateLimit:RequestsPerSecond"] = "0",
        };
        foreach (var (name, address) in models)
            settings[$"Gateway:Models:{name}:Endpoints:0"] = address;
        if (models.Count > 0)
            settings["Gateway:DefaultModel"] = models.Keys.First();
        if (key is not null)
        {
            settings["Gateway:Auth:Keys:0:Name"] = "local";
            settings["Gateway:Auth:Keys:0:Sha256"] = KeyHash(key);
            settings["Gateway:Auth:Keys:0:Roles:0"] = "admin";
        }
        return settings;
    }

    /// <summary>The gRPC address a started host listens on (not its metrics endpoint on <paramref name="metricsPort"/>).</summary>
    public static string GrpcAddress(WebApplication app, int? metricsPort = null) =>
        app.Urls.First(u => metricsPort is null || !u.EndsWith($":{metricsPort}", StringComparison.Ordinal));

    /// <summary>The SHA-256 a gateway's key list holds for <paramref name="key"/>.</summary>
    public static string KeyHash(string key) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(key)));

    /// <summary>Stops and disposes hosts in the order given (a gateway before the workers and services behind it); nulls are skipped.</summary>
    public static async Task StopAsync(params WebApplication?[] apps)
    {
        ArgumentNullException.ThrowIfNull(apps);
        foreach (var app in apps)
        {
            if (app is null)
                continue;
            await app.StopAsync().ConfigureAwait(false);
            await app.DisposeAsync().ConfigureAwait(false);
        }
    }

    /// <summary>
    /// In-process hosts (up, demo, benchmarks, tests) stop within 10 s each: a graceful drain that
    /// waits on a peer longer than that is cut short (a deployment's hosts keep the 30 s default).
    /// </summary>
    private static void LocalShutdown(WebApplicationBuilder builder) =>
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(10));

    private static Dictionary<string, string?> Merge(IEnumerable<KeyValuePair<string, string?>> settings)
    {
        var all = new Dictionary<string, string?>(Defaults);
        foreach (var (key, value) in settings)
            all[key] = value;
        return all;
    }
}
