using Grpc.Core;
using Grpc.Net.Client;
using InterpMesh.Hosting;
using Microsoft.AspNetCore.Builder;
using Xunit;

namespace InterpMesh.Tests;

/// <summary>Real Kestrel hosts on loopback: model services and gateways, started and stopped by tests.</summary>
public static class Mesh
{
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

    /// <summary>A gateway with three keys (admin, alice: analyze, reader: read) unless <paramref name="settings"/> says otherwise.</summary>
    /// <param name="configure">Last say over the builder (e.g. a logging provider the test reads).</param>
    public static async Task<(WebApplication App, string Address)> StartGatewayAsync(IEnumerable<string> modelEndpoints, string pluginsPath, string dataPath, Dictionary<string, string?>? settings = null, int? metricsPort = null, Action<WebApplicationBuilder>? configure = null)
    {
        var config = new Dictionary<string, string?>
        {
            ["Gateway:PluginsPath"] = pluginsPath,
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
        int i = 0;
        foreach (var e in modelEndpoints)
            config[$"Gateway:Models:tiny:Endpoints:{i++}"] = e;
        if (metricsPort is int port)
        {
            config["Kestrel:Endpoints:Metrics:Url"] = $"http://127.0.0.1:{port}";
            config["Kestrel:Endpoints:Metrics:Protocols"] = "Http1";
        }
        var app = await LocalHosts.StartGatewayAsync(config.Concat(settings ?? []), configure);
        return (app, LocalHosts.GrpcAddress(app, metricsPort));
    }

    public static CallOptions As(string key, CancellationToken ct = default) =>
        new(new Metadata { { "authorization", $"Bearer {key}" } }, cancellationToken: ct);

    /// <summary>A channel as the mesh's clients open it: <see cref="InterpMesh.Client.ChannelRetry.Default"/> unless <paramref name="retry"/> says otherwise
    /// (<see cref="InterpMesh.Client.ChannelRetry.None"/> for a test that asserts a refusal the policy would retry).</summary>
    public static GrpcChannel Channel(string address, InterpMesh.Client.ChannelRetry? retry = null) => InterpMesh.Client.Channels.ForAddress(address, retry);

    /// <summary>Stops and disposes hosts in the order given (a gateway before the services behind it); nulls are skipped.</summary>
    public static Task StopAsync(params WebApplication?[] apps) => LocalHosts.StopAsync(apps);
}
