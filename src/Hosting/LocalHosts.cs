using System.Security.Cryptography;
using System.Text;
using InterpMesh.Gateway.Hosting;
using InterpMesh.ModelService.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace InterpMesh.Hosting;

/// <summary>
/// Model services and gateways in this process, configured only by the settings given (the
/// appsettings files of the apps do not apply): gRPC over HTTP/2 on a free loopback port unless
/// the settings say otherwise, warnings and errors logged.
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
    public static async Task<WebApplication> StartGatewayAsync(IEnumerable<KeyValuePair<string, string?>> settings, Action<WebApplicationBuilder>? configure = null)
    {
        var all = Merge(settings);
        var app = GatewayApp.Build([], b =>
        {
            b.Configuration.Sources.Clear();
            b.Configuration.AddInMemoryCollection(all);
            configure?.Invoke(b);
        });
        await app.StartAsync().ConfigureAwait(false);
        return app;
    }

    /// <summary>
    /// The settings of a gateway in front of <paramref name="models"/> (name → model-service address;
    /// the first is the default) with the plugins in <paramref name="pluginsPath"/>, its jobs and
    /// artifacts under <paramref name="dataDir"/>, no rate limit, and auth only when
    /// <paramref name="key"/> is given (that key gets the admin role). Callers add or override the rest.
    /// </summary>
    public static Dictionary<string, string?> GatewaySettings(IReadOnlyDictionary<string, string> models, string pluginsPath, string dataDir, string? key = null)
    {
        ArgumentNullException.ThrowIfNull(models);
        var settings = new Dictionary<string, string?>
        {
            ["Gateway:PluginsPath"] = pluginsPath,
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

    /// <summary>Stops and disposes hosts in the order given (a gateway before the services behind it); nulls are skipped.</summary>
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

    private static Dictionary<string, string?> Merge(IEnumerable<KeyValuePair<string, string?>> settings)
    {
        var all = new Dictionary<string, string?>(Defaults);
        foreach (var (key, value) in settings)
            all[key] = value;
        return all;
    }
}
