using InterpMesh.Cli.Bench;
using InterpMesh.Cli.CommandLine;
using InterpMesh.Gateway.Hosting;
using InterpMesh.ModelService.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace InterpMesh.Cli.Serve;

/// <summary>
/// <c>interpmesh up</c>: the local mesh in one process — a model service (a bundled toy model by
/// default) and a gateway with the built-in plugins, on loopback — until Ctrl-C.
/// </summary>
internal static class UpCommand
{
    public static int Run(CliArgs args, TextWriter stdout)
    {
        string bind = args.Text("bind") ?? "127.0.0.1";
        int gatewayPort = args.Int("grpc-port", min: 0) ?? 50050;
        int modelPort = args.Int("model-port", min: 0) ?? 50051;
        string? modelArg = args.Text("model");
        string? pluginsArg = args.Text("plugins");
        string data = Path.GetFullPath(args.Text("data") ?? "interpmesh-data");
        string? key = args.Text("key");
        int threads = args.Int("threads", min: 1) ?? 0;
        args.RejectUnknown("up");
        string? repo = null;
        try
        {
            repo = BenchMesh.Repository();
        }
        catch (UsageException)
        {
            // Outside a checkout: --model and --plugins are required.
        }
        string model = Path.GetFullPath(modelArg ?? (repo is null ? throw new UsageException("--model PATH is required outside a checkout") : Path.Combine(repo, "models", "concepts")));
        string plugins = Path.GetFullPath(pluginsArg ?? (repo is null ? throw new UsageException("--plugins DIR is required outside a checkout") : Path.Combine(repo, "plugins")));

        var service = ModelServiceApp.Build([], b =>
        {
            b.Configuration.Sources.Clear();
            b.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
            {
                ["ModelService:ModelPath"] = model,
                ["ModelService:Threads"] = threads.ToString(System.Globalization.CultureInfo.InvariantCulture),
                ["Kestrel:Endpoints:Grpc:Url"] = $"http://{bind}:{modelPort}",
                ["Kestrel:Endpoints:Grpc:Protocols"] = "Http2",
                ["Logging:LogLevel:Default"] = "Warning",
            });
        });
        service.StartAsync().GetAwaiter().GetResult();
        var host = service.Services.GetRequiredService<ModelHost>();
        try
        {
            host.WhenLoaded.GetAwaiter().GetResult();
        }
        catch (Exception e)
        {
            service.StopAsync().GetAwaiter().GetResult();
            throw new InvalidOperationException($"the model failed to load: {e.Message}");
        }
        var settings = new Dictionary<string, string?>
        {
            ["Gateway:Models:local:Endpoints:0"] = service.Urls.First(),
            ["Gateway:PluginsPath"] = plugins,
            ["Gateway:ArtifactsPath"] = Path.Combine(data, "artifacts"),
            ["Gateway:JobsPath"] = Path.Combine(data, "jobs"),
            // Local use: auth off unless a key is given (the gateway logs a warning when it is off).
            ["Gateway:Auth:Enabled"] = key is null ? "false" : "true",
            ["Kestrel:Endpoints:Grpc:Url"] = $"http://{bind}:{gatewayPort}",
            ["Kestrel:Endpoints:Grpc:Protocols"] = "Http2",
            ["Logging:LogLevel:Default"] = "Warning",
        };
        if (key is not null)
        {
            settings["Gateway:Auth:Keys:0:Name"] = "local";
            settings["Gateway:Auth:Keys:0:Sha256"] = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(key)));
            settings["Gateway:Auth:Keys:0:Roles:0"] = "admin";
        }
        var gateway = GatewayApp.Build([], b =>
        {
            b.Configuration.Sources.Clear();
            b.Configuration.AddInMemoryCollection(settings);
        });
        gateway.StartAsync().GetAwaiter().GetResult();
        string g = gateway.Urls.First(), hostPort = g["http://".Length..];
        string keyOption = key is null ? "" : " --key $KEY";
        stdout.WriteLine($"up: gateway {g} (model '{host.Model!.Source}' served at {service.Urls.First()}; plugins from {plugins}; data in {data}); Ctrl-C stops");
        stdout.WriteLine($"  CLI:     interpmesh plugins --server {g}{keyOption}");
        stdout.WriteLine($"           interpmesh run probing --server {g}{keyOption} --params probe.json");
        stdout.WriteLine($"  grpcurl: grpcurl -plaintext {hostPort} list");
        stdout.WriteLine($"           grpcurl -plaintext -d '{{}}' {hostPort} interpmesh.v1.AnalysisService/ListPlugins");
        stdout.WriteLine($"  Python:  grpc.insecure_channel(\"{hostPort}\") with stubs from protos/interpmesh/v1 (docs/modelservice.md)");
        stdout.Flush();
        gateway.WaitForShutdownAsync().GetAwaiter().GetResult();
        service.StopAsync().GetAwaiter().GetResult();
        gateway.DisposeAsync().AsTask().GetAwaiter().GetResult();
        service.DisposeAsync().AsTask().GetAwaiter().GetResult();
        stdout.WriteLine("stopped");
        return 0;
    }
}
