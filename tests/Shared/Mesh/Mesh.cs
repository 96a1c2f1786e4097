using System.Runtime.CompilerServices;
using Grpc.Core;
using Grpc.Net.Client;
using InterpMesh.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Xunit;

namespace InterpMesh.Tests;

/// <summary>Real Kestrel hosts on loopback: model services, gateways and analysis workers, started and stopped by tests.</summary>
public static class Mesh
{
    private static readonly ConditionalWeakTable<WebApplication, WebApplication> Workers = new();

    public const string AdminKey = "admin-key-0123456789";
    public const string AliceKey = "alice-key-0123456789";
    public const string ReaderKey = "reader-key-0123456789";

    public static string Hash(string key) => LocalHosts.KeyHash(key);

    public static async Task<(WebApplication App, string Address)> StartModelServiceAsync(string modelPath, Dictionary<string, string?>? settings = null)
    {
        var app = await LocalHosts.StartModelServiceAsync(new Dictionary<string, string?>
        {
            ["ModelService:ModelPath"] = modelPath,
            ["ModelService:MaxChunkBytes"] = "65536",
        }.Concat(settings ?? []));
        return (app, LocalHosts.GrpcAddress(app));
    }

    /// <summary>
    /// A gateway with three keys (admin, alice: analyze, reader: read) unless <paramref name="settings"/> says otherwise,
    /// and, unless <paramref name="startWorker"/> is false, an analysis worker beside it (as <c>interpmesh up</c> runs
    /// them): the plugins in <paramref name="pluginsPath"/>, the same model endpoints, the job store and artifacts under
    /// <paramref name="dataPath"/> (or the gateway's <c>Gateway:Jobs:ConnectionString</c>). Settings under <c>Worker:</c>
    /// go to the worker only. The worker stops when the gateway stops (<see cref="WorkerOf"/> finds it), as a gateway's
    /// own worker did before workers were their own host.
    /// </summary>
    /// <param name="configure">Last say over the gateway's builder (e.g. a logging provider the test reads).</param>
    public static async Task<(WebApplication App, string Address)> StartGatewayAsync(IEnumerable<string> modelEndpoints, string pluginsPath, string dataPath, Dictionary<string, string?>? settings = null, int? metricsPort = null, Action<WebApplicationBuilder>? configure = null, bool startWorker = true)
    {
        var endpoints = modelEndpoints.ToList();
        var config = new Dictionary<string, string?>
        {
            ["Gateway:ArtifactsPath"] = Path.Combine(dataPath, "artifacts"),
            ["Gateway:JobsPath"] = Path.Combine(dataPath, "jobs"),
            ["Gateway:Auth:Enabled"] = "true",
            ["Gateway:Auth:Keys:0:Name"] = "admin",
            ["Gateway:Auth:Keys:0:Sha256"] = Hash(AdminKey),
            ["Gateway:Auth:Keys:0:Roles:0"] = "admin",
            ["Gateway:Auth:Keys:1:Name"] = "alice",
            ["Gateway:Auth:Keys:1:Sha256"] = Hash(AliceKey),
            ["Gateway:Auth:Keys:1:Roles:0"] = "analyze",
            ["Gateway:Auth:Keys:2:Name"] = "reader",
            ["Gateway:Auth:Keys:2:Sha256"] = Hash(ReaderKey),
            ["Gateway:Auth:Keys:2:Roles:0"] = "read",
            ["Gateway:RateLimit:RequestsPerSecond"] = "1000",
            ["Gateway:RateLimit:Burst"] = "1000",
        };
        var worker = WorkerSettings(endpoints, pluginsPath, dataPath);
        int i = 0;
        foreach (var e in endpoints)
            config[$"Gateway:Models:tiny:Endpoints:{i++}"] = e;
        if (metricsPort is int port)
        {
            config["Kestrel:Endpoints:Metrics:Url"] = $"http://127.0.0.1:{port}";
            config["Kestrel:Endpoints:Metrics:Protocols"] = "Http1";
        }
        foreach (var (key, value) in settings ?? [])
        {
            if (key.StartsWith("Worker:", StringComparison.Ordinal))
            {
                worker[key] = value;
                continue;
            }
            config[key] = value;
            // One store for both.
            if (key is "Gateway:Jobs:ConnectionString" or "Gateway:Jobs:PollMilliseconds")
                worker.TryAdd("Worker:" + key["Gateway:".Length..], value);
        }
        var app = await LocalHosts.StartGatewayAsync(config, configure);
        if (startWorker)
        {
            try
            {
                var started = await LocalHosts.StartWorkerAsync(worker);
                Workers.Add(app, started);
                app.Lifetime.ApplicationStopped.Register(() => LocalHosts.StopAsync(started).GetAwaiter().GetResult());
            }
            catch
            {
                await LocalHosts.StopAsync(app);
                throw;
            }
        }
        return (app, LocalHosts.GrpcAddress(app, metricsPort));
    }

    /// <summary>The settings of a test's analysis worker: the plugins, the model endpoints as model <c>tiny</c>, the data folder; no process recycling.</summary>
    public static Dictionary<string, string?> WorkerSettings(IEnumerable<string> modelEndpoints, string pluginsPath, string dataPath)
    {
        var worker = LocalHosts.WorkerSettings(new Dictionary<string, string>(), pluginsPath, dataPath);
        int i = 0;
        foreach (var e in modelEndpoints)
            worker[$"Worker:Models:tiny:Endpoints:{i++}"] = e;
        worker["Logging:LogLevel:Default"] = "Error";
        return worker;
    }

    /// <summary>The analysis worker <see cref="StartGatewayAsync"/> started beside <paramref name="gateway"/>.</summary>
    public static WebApplication WorkerOf(WebApplication gateway) =>
        Workers.TryGetValue(gateway, out var worker) ? worker : throw new InvalidOperationException("this gateway was started without a worker (startWorker: false)");

    public static CallOptions As(string key, CancellationToken ct = default) =>
        new(new Metadata { { "authorization", $"Bearer {key}" } }, cancellationToken: ct);

    /// <summary>A channel as the mesh's clients open it: <see cref="InterpMesh.Client.ChannelRetry.Default"/> unless <paramref name="retry"/> says otherwise
    /// (<see cref="InterpMesh.Client.ChannelRetry.None"/> for a test that asserts a refusal the policy would retry).</summary>
    public static GrpcChannel Channel(string address, InterpMesh.Client.ChannelRetry? retry = null) => InterpMesh.Client.Channels.ForAddress(address, retry);

    /// <summary>Stops and disposes hosts in the order given (a gateway before the services behind it); nulls are skipped.</summary>
    public static Task StopAsync(params WebApplication?[] apps) => LocalHosts.StopAsync(apps);
}
