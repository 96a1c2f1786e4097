using InterpMesh.Cli.CommandLine;
using InterpMesh.ModelService.Hosting;
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
        string? repo = LocalMesh.RepositoryOrNull();
        string model = Path.GetFullPath(modelArg ?? (repo is null ? throw new UsageException("--model PATH is required outside a checkout") : Path.Combine(repo, "models", "concepts")));
        string plugins = Path.GetFullPath(pluginsArg ?? (repo is null ? throw new UsageException("--plugins DIR is required outside a checkout") : Path.Combine(repo, "plugins")));

        var service = LocalMesh.StartModelService(model, threads, $"http://{bind}:{modelPort}");
        var host = service.Services.GetRequiredService<ModelHost>();
        // Local use: auth off unless a key is given (the gateway logs a warning when it is off).
        var gateway = LocalMesh.StartGateway(new Dictionary<string, string> { ["local"] = service.Urls.First() }, plugins, data,
            $"http://{bind}:{gatewayPort}", key, logLevel: "Warning");
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
        LocalMesh.Stop(gateway, service);
        stdout.WriteLine("stopped");
        return 0;
    }
}
