using System.CommandLine;
using System.Globalization;
using InterpMesh.Cli.CommandLine;
using InterpMesh.ModelService.Hosting;
using InterpMesh.Runtime.Execution;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace InterpMesh.Cli.Serve;

/// <summary><c>interpmesh serve --model PATH</c>: runs the ModelService in this process until Ctrl-C.</summary>
internal static class ServeCommand
{
    public static Command Create(CliConsole console)
    {
        var model = CliOptions.Text("--model", "a Hugging Face folder or a llama2.c .bin", "PATH");
        model.Required = true;
        var tokenizer = CliOptions.Text("--tokenizer", "tokenizer file (default: the one beside the model)", "PATH");
        var port = CliOptions.Int("--grpc-port", "gRPC port (0: any free port)", defaultValue: 50051, min: 0, helpName: "P");
        var metricsPort = CliOptions.Int("--metrics-port", "Prometheus /metrics port (HTTP/1.1; off when absent)", min: 0, helpName: "Q");
        var bind = CliOptions.Text("--bind", "address to listen on", "ADDRESS");
        bind.DefaultValueFactory = _ => "127.0.0.1";
        var device = CliOptions.Text("--device", "cpu, cuda or cuda:N (CUDA build only)", "cpu|cuda[:N]");
        device.DefaultValueFactory = _ => "cpu";
        var dtype = CliOptions.DType("weight dtype (default: float32)");
        var threads = CliOptions.Int("--threads", "libtorch intra-op threads (default: all cores)", min: 1);
        var command = new Command("serve", "Serves one model over gRPC (a model service).") { model, tokenizer, port, metricsPort, bind, device, dtype, threads };
        command.SetAction(r =>
        {
            var settings = new Dictionary<string, string?>
            {
                ["ModelService:ModelPath"] = Path.GetFullPath(r.GetRequiredValue(model)),
                ["ModelService:TokenizerPath"] = r.GetValue(tokenizer) is { } t ? Path.GetFullPath(t) : null,
                ["ModelService:Device"] = r.GetValue(device),
                ["ModelService:DType"] = DTypeNames.Name(r.GetValue(dtype) ?? TorchSharp.torch.ScalarType.Float32),
                ["ModelService:Threads"] = (r.GetValue(threads) ?? 0).ToString(CultureInfo.InvariantCulture),
                ["Kestrel:Endpoints:Grpc:Url"] = $"http://{r.GetValue(bind)}:{r.GetValue(port)}",
                ["Kestrel:Endpoints:Grpc:Protocols"] = "Http2",
                ["Logging:LogLevel:Default"] = "Warning",
                ["Logging:LogLevel:InterpMesh"] = "Information",
            };
            if (r.GetValue(metricsPort) is int mp)
            {
                settings["Kestrel:Endpoints:Metrics:Url"] = $"http://{r.GetValue(bind)}:{mp}";
                settings["Kestrel:Endpoints:Metrics:Protocols"] = "Http1";
            }
            return Run(settings, metrics: r.Given(metricsPort), console.Out);
        });
        return command;
    }

    private static int Run(Dictionary<string, string?> settings, bool metrics, TextWriter stdout)
    {
        var app = ModelServiceApp.Build([], b => b.Configuration.AddInMemoryCollection(settings));
        try
        {
            app.StartAsync().GetAwaiter().GetResult();
        }
        catch (Microsoft.Extensions.Options.OptionsValidationException e)
        {
            throw new ArgumentException(string.Join("; ", e.Failures));
        }
        var host = app.Services.GetRequiredService<ModelHost>();
        try
        {
            host.WhenLoaded.GetAwaiter().GetResult();
        }
        catch (Exception e)
        {
            app.StopAsync().GetAwaiter().GetResult();
            throw new InvalidOperationException($"the model failed to load: {e.Message}");
        }
        stdout.WriteLine($"serving {host.Model!.Source} on {string.Join(", ", app.Urls)} (gRPC: interpmesh.v1.ModelService, health, reflection" +
            (metrics ? "; Prometheus /metrics on the HTTP/1.1 port" : "") + "); Ctrl-C stops");
        stdout.WriteLine($"  try: interpmesh info --server {app.Urls.First()} --json");
        stdout.Flush();
        app.WaitForShutdownAsync().GetAwaiter().GetResult();
        return 0;
    }
}
